"""Whether this machine's CPU multiplies bfloat16 matrices natively.

On a CPU with AMX or AVX-512 BF16 instructions (Intel Sapphire Rapids and later, AMD Zen 4 and
later), oneDNN runs bfloat16 matmuls several times faster than float32 ones (a GRPO step of
the 34M benchmark model takes half the time: docs/performance.md); elsewhere bfloat16 is
emulated and slower than float32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in ``/proc/cpuinfo``'s text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@cache
def native_bf16_cpu(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has AMX-BF16 or AVX512-BF16 (False where ``/proc/cpuinfo`` is absent)."""
    try:
        text = cpuinfo_path.read_text()
    except OSError:
        return False
    return bool(cpu_flags(text) & NATIVE_BF16_FLAGS)


def auto_dtype(on_cpu: bool) -> Literal["float32", "bfloat16"]:
    """What ``model.dtype: auto`` computes in: bfloat16 on CUDA and on a CPU that multiplies
    bfloat16 natively (:func:`native_bf16_cpu`), float32 on other CPUs. The learner trains
    with float32 master weights either way; the rollout engines run in the same dtype, so
    their behaviour log-probs match the learner's recomputation."""
    return "bfloat16" if not on_cpu or native_bf16_cpu() else "float32"
