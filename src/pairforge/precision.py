"""Which floating-point precision to run the denoisers in: bf16 only where the hardware has it.

bf16 autocast is the main speed lever on CPUs with AMX or AVX512-BF16 (~6x the fp32 matmul rate
on the Xeon machines pairforge was first measured on) and on recent GPUs. On a CPU without
native bf16 (AVX2 only, e.g. AMD EPYC Zen 3) oneDNN emulates it: a 1024^2 bf16 matmul measured
0.66 GFLOP/s against 53 GFLOP/s in fp32 on one such core, and demo-image training
ran at 1.6 img/s against 17-23 in fp32 (both beside one other busy process). So the
presets say `precision: auto` and explicit bf16 on such a CPU warns.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")
# /proc/cpuinfo flags of CPUs whose bf16 matmul is native (AMX tiles or AVX512-BF16 dot products).
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpuinfo_has_native_bf16(cpuinfo: str) -> bool:
    """True if a /proc/cpuinfo text lists AMX-BF16 or AVX512-BF16 among its flags."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """This machine's CPU has native bf16 (Linux /proc/cpuinfo; False where it cannot be read)."""
    try:
        return cpuinfo_has_native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def native_bf16(device_type: str) -> bool:
    """True if bf16 autocast is fast on this kind of device ("cpu", "cuda", ...)."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device_type: str) -> str:
    """ "auto" -> "bf16" where native_bf16(device_type), else "fp32"; "fp32" / "bf16" as given
    (bf16 on a device without native bf16 warns: it runs, emulated and many times slower)."""
    from pairforge.errors import PairforgeError

    if precision not in PRECISIONS:
        raise PairforgeError(
            f"precision={precision!r} is unknown; use one of {', '.join(PRECISIONS)}."
        )
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    if precision == "bf16" and not native_bf16(device_type):
        warnings.warn(
            f"bf16 on this {device_type} has no native support (no AMX / AVX512-BF16): it is "
            "emulated and runs many times slower than fp32; use precision auto or fp32.",
            stacklevel=2,
        )
    return precision
