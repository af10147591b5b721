"""model.dtype auto: bfloat16 where the CPU multiplies it natively, float32 elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from memrl.model import precision

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx512_bf16\n"


def test_cpu_flags_are_the_first_processor_s():
    assert precision.cpu_flags(SAPPHIRE_RAPIDS) >= {"avx512_bf16", "amx_bf16"}
    assert "avx512_bf16" not in precision.cpu_flags(ZEN3)
    assert precision.cpu_flags("no flags here") == frozenset()


@pytest.mark.parametrize(("text", "native"), [(SAPPHIRE_RAPIDS, True), (ZEN3, False)])
def test_native_bf16_reads_the_cpuinfo_file(tmp_path: Path, text: str, native: bool):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert precision.native_bf16_cpu(cpuinfo) is native
    assert precision.native_bf16_cpu(tmp_path / "absent") is False


def test_auto_dtype_is_bf16_on_cuda_and_on_native_cpus(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: False)
    assert (precision.auto_dtype(on_cpu=True), precision.auto_dtype(on_cpu=False)) == ("float32", "bfloat16")
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    assert precision.auto_dtype(on_cpu=True) == "bfloat16"
