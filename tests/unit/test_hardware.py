"""The engine fits the hardware: dtype by what the device does well, a bounded CPU step."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.config import CPU_STEP_TEXT_TOKENS, EngineConfig
from serve_app.core.modes import ModelFamily, get_mode, max_image_tokens
from serve_app.engine import hardware
from serve_app.engine.hardware import Hardware, choose_dtype

AVX2 = Hardware("cpu", "CPU (AVX2)", native_bf16=False)
AVX512_BF16 = Hardware("cpu", "CPU (AVX512)", native_bf16=True)
H100 = Hardware("cuda", "NVIDIA H100 80GB HBM3", native_bf16=True)
T4 = Hardware("cuda", "Tesla T4", native_bf16=False)


@pytest.mark.parametrize(
    ("device", "expected"),
    [(AVX2, "float32"), (AVX512_BF16, "bfloat16"), (H100, "bfloat16"), (T4, "float16")],
)
def test_auto_follows_the_hardware(device: Hardware, expected: str) -> None:
    choice = choose_dtype("auto", device)
    assert choice.dtype == expected
    assert choice.reason.startswith(f"auto: {device.name} has ")
    assert ("no native bfloat16" in choice.reason) is not device.native_bf16


@pytest.mark.parametrize("device", [AVX2, AVX512_BF16, H100, T4])
@pytest.mark.parametrize("explicit", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_wins(device: Hardware, explicit: Any) -> None:
    choice = choose_dtype(explicit, device)
    assert choice.dtype == explicit
    assert choice.reason.startswith("set explicitly")


class _FakeTorchCpu:
    def __init__(self, capability: str, avx512_bf16: bool, amx: bool) -> None:
        self.capability = capability
        self._is_avx512_bf16_supported = lambda: avx512_bf16
        self._is_amx_tile_supported = lambda: amx


@pytest.mark.parametrize(
    ("capability", "avx512_bf16", "amx", "native"),
    [
        ("AVX2", False, False, False),  # the AMD EPYC of the CPU issue
        ("AVX512", False, False, False),  # AVX-512 without BF16 (e.g. Skylake): emulated
        ("AVX512", True, False, True),  # Zen 4, Cooper Lake
        ("AVX512", False, True, True),  # Sapphire Rapids (AMX)
        ("AVX2", True, True, False),  # ATEN_CPU_CAPABILITY=avx2 caps what torch runs
    ],
)
def test_probe_reads_native_bf16_from_torch(
    monkeypatch: pytest.MonkeyPatch, capability: str, avx512_bf16: bool, amx: bool, native: bool
) -> None:
    import torch

    fake = _FakeTorchCpu(capability, avx512_bf16, amx)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: fake.capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", fake._is_avx512_bf16_supported)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", fake._is_amx_tile_supported)
    probed = hardware.probe_hardware("cpu")
    assert probed == Hardware("cpu", f"CPU ({capability})", native_bf16=native)
    assert choose_dtype("auto", probed).dtype == ("bfloat16" if native else "float32")


def test_probe_of_this_machine_agrees_with_torch() -> None:
    import torch

    probed = hardware.probe_hardware("cpu")
    assert probed.name == f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        assert not probed.native_bf16


@pytest.mark.parametrize(
    ("device", "installed", "expected"),
    [(AVX512_BF16, True, "openvino"), (AVX512_BF16, False, "onnxruntime"),
     (AVX2, True, "onnxruntime")],
)  # fmt: skip
def test_the_ocr_backend_is_openvino_only_where_it_runs_bf16(
    device: Hardware, installed: bool, expected: str
) -> None:
    assert hardware.choose_ocr_backend("auto", device, installed).backend == expected
    assert hardware.choose_ocr_backend("onnxruntime", device, installed).backend == "onnxruntime"


@pytest.mark.parametrize(
    ("flags", "native", "isa"),
    [("fpu avx2 avx512f avx512_bf16", True, "AVX512"), ("fpu avx2 avx512f", False, "AVX512"),
     ("fpu avx2 amx_bf16 amx_tile", True, "AVX2"), ("fpu avx2", False, "AVX2")],
)  # fmt: skip
def test_cpu_flags_say_whether_bf16_is_native(
    monkeypatch: pytest.MonkeyPatch, flags: str, native: bool, isa: str
) -> None:
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: set(flags.split()))
    assert hardware.probe_cpu_flags() == Hardware("cpu", f"CPU ({isa})", native_bf16=native)


def test_largest_page_of_each_family() -> None:
    # Gundam with max_crops 9 as a 1x9 column of tiles: 273 + (10*9)*(10*1+1).
    assert max_image_tokens(ModelFamily.OCR1) == get_mode("gundam").num_image_tokens((1, 9))
    assert max_image_tokens(ModelFamily.OCR1) == 1263
    # DeepSeek-OCR-2: at most 6 tiles of 144 queries beside the 257 global ones.
    assert max_image_tokens(ModelFamily.OCR2) == 257 + 6 * 144


def test_cpu_step_holds_one_largest_page_but_not_two_a4_pages() -> None:
    budget = EngineConfig(profile="cpu").resolved_max_num_batched_tokens
    assert budget == 1263 + CPU_STEP_TEXT_TOKENS
    a4 = get_mode("gundam").num_image_tokens((2, 3))
    assert 1263 < budget < 2 * a4
    ocr2 = EngineConfig(profile="cpu", family=ModelFamily.OCR2)
    assert ocr2.resolved_max_num_batched_tokens == 1121 + CPU_STEP_TEXT_TOKENS
    # On GPUs vLLM's own default (None) stands unless set.
    assert EngineConfig(profile="gpu").resolved_max_num_batched_tokens is None
    assert (
        EngineConfig(profile="gpu", max_num_batched_tokens=4096).resolved_max_num_batched_tokens
        == 4096
    )


def test_a_step_budget_below_the_largest_page_is_refused() -> None:
    # vLLM would never schedule such a page: the request would hang, not fail.
    with pytest.raises(ValidationError, match="below the 1263 image tokens"):
        EngineConfig(max_num_batched_tokens=1024)
    EngineConfig(max_num_batched_tokens=1263)


def test_cpu_kv_cache_is_sized_in_bytes_not_as_a_share_of_ram() -> None:
    # A share of RAM counts the weights too, and float32 weights left none for the cache.
    assert EngineConfig(profile="cpu").resolved_kv_cache_bytes == 2**30
    assert EngineConfig(profile="cpu", kv_cache_gb=0.5).resolved_kv_cache_bytes == 2**29
    assert EngineConfig(profile="gpu").resolved_kv_cache_bytes is None


@pytest.mark.parametrize(
    ("setting", "cores", "expected"),
    [(None, 1, 0), (None, 2, 0), (None, 4, 0), (None, 8, None), (1, 2, 1), (0, 64, 0)],
)
def test_small_machines_reserve_no_core_for_the_scheduler(
    setting: int | None, cores: int, expected: int | None
) -> None:
    assert hardware.reserved_cpu_cores(setting, cores) == expected


def test_step_timeout_defaults() -> None:
    assert EngineConfig(profile="cpu").resolved_step_timeout_s == 1800
    assert EngineConfig(profile="gpu").resolved_step_timeout_s == 300  # vLLM's default
    assert EngineConfig(profile="cpu", step_timeout_s=90).resolved_step_timeout_s == 90


@pytest.mark.vllm
def test_prepare_engine_applies_and_logs_the_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from serve_app.engine import vllm_engine

    monkeypatch.setattr(vllm_engine, "probe_hardware", lambda device: AVX2)
    monkeypatch.setattr(vllm_engine, "resolve_model", lambda model, family: f"/models/{model}")
    for name in (vllm_engine.STEP_TIMEOUT_ENV, vllm_engine.RESERVED_CORES_ENV):
        monkeypatch.setenv(name, "unset")  # so that undo removes what prepare_engine sets
        monkeypatch.delenv(name)
    monkeypatch.setattr(vllm_engine.os, "sched_getaffinity", lambda pid: {0, 1})
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        args, dtype = vllm_engine.prepare_engine(EngineConfig(model="tiny"))
    assert (args.dtype, dtype.dtype) == ("float32", "float32")
    assert args.max_num_batched_tokens == 1263 + CPU_STEP_TEXT_TOKENS
    assert os.environ[vllm_engine.STEP_TIMEOUT_ENV] == "1800"
    (line,) = [r.getMessage() for r in caplog.records if "Starting vLLM engine" in r.getMessage()]
    assert "dtype=float32 (auto: CPU (AVX2) has no native bfloat16)" in line
    assert "max_num_batched_tokens=1519 step_timeout_s=1800 kv_cache=1 GiB" in line
    assert os.environ[vllm_engine.RESERVED_CORES_ENV] == "0"
    assert line.endswith("cpu_reserved_cores=0 otlp_traces_endpoint=-")

    args, dtype = vllm_engine.prepare_engine(
        EngineConfig(model="tiny", dtype="bfloat16", step_timeout_s=600)
    )
    assert args.dtype == "bfloat16" and dtype.reason.startswith("set explicitly")
    assert os.environ[vllm_engine.STEP_TIMEOUT_ENV] == "600"
    vllm_engine.prepare_engine(EngineConfig(model="tiny", cpu_reserved_cores=1))
    assert os.environ[vllm_engine.RESERVED_CORES_ENV] == "1"


class FakeNvml:
    """NVML as its Python bindings answer, for a machine with the given GPUs."""

    def __init__(self, gpus: dict[str, tuple[str, int]], driver: bool = True) -> None:
        self.gpus = gpus  # uuid -> (name, compute capability major)
        self.driver = driver
        self.calls: list[str] = []

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's own names
        if not self.driver:
            raise OSError("NVML Shared Library Not Found")
        self.calls.append("init")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        return list(self.gpus)[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        return uuid

    def nvmlDeviceGetName(self, handle: str) -> bytes:  # noqa: N802
        return self.gpus[handle][0].encode()

    def nvmlDeviceGetCudaComputeCapability(self, handle: str) -> tuple[int, int]:  # noqa: N802
        return self.gpus[handle][1], 0


GPUS = {"GPU-aaa": ("Tesla T4", 7), "GPU-bbb": ("NVIDIA H200", 9)}


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, Hardware("cuda", "Tesla T4", native_bf16=False)),  # unset: the first GPU
        ("1", Hardware("cuda", "NVIDIA H200", native_bf16=True)),  # what Ray gives a replica
        ("GPU-bbb,GPU-aaa", Hardware("cuda", "NVIDIA H200", native_bf16=True)),
    ],
)
def test_a_gpu_is_probed_through_nvml(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, expected: Hardware
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml = FakeNvml(GPUS)
    assert hardware.probe_hardware("cuda", nvml) == expected
    assert nvml.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("nvml", "visible", "message"),
    [
        (FakeNvml(GPUS, driver=False), "0", "NVML found no NVIDIA driver here"),
        (FakeNvml({}), None, "none is visible to this process"),
        (FakeNvml(GPUS), "", "none is visible to this process (CUDA_VISIBLE_DEVICES='')"),
    ],
)
def test_no_visible_gpu_fails_at_once_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, nvml: FakeNvml, visible: str | None, message: str
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(hardware.NoGPUError, match=re.escape(message)):
        hardware.probe_hardware("cuda", nvml)


PROBE_LEAVES_CUDA_ALONE = """
import json, torch
from serve_app.engine.hardware import NoGPUError, probe_hardware
probe_hardware("cpu")
try:
    probe_hardware("cuda")  # vLLM's NVML bindings; this machine has no NVIDIA driver
    error = None
except NoGPUError as exc:
    error = str(exc)
print(json.dumps({"error": error, "cuda_initialized": torch.cuda.is_initialized()}))
"""


@pytest.mark.vllm
def test_probing_initialises_no_cuda() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE_LEAVES_CUDA_ALONE], capture_output=True,
                         text=True, check=True, timeout=120)  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cuda_initialized"] is False
    assert result["error"] is None or "NVML found no NVIDIA driver" in result["error"]
