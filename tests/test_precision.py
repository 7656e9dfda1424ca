"""precision auto: bf16 only where the CPU (AMX / AVX512-BF16) or GPU has it natively."""

import warnings

import pytest

from pairforge import precision
from pairforge.errors import PairforgeError

AMX_CPU = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
ZEN3_CPU = "processor\t: 0\nflags\t\t: fpu sse sse2 fma avx avx2 vaes sha_ni\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert precision.cpuinfo_has_native_bf16(AMX_CPU)
    assert not precision.cpuinfo_has_native_bf16(ZEN3_CPU)
    assert not precision.cpuinfo_has_native_bf16("")


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_hardware(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("fp32", "cpu") == "fp32"


def test_explicit_bf16_without_native_support_warns_and_is_kept(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        assert precision.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_precision("bf16", "cpu") == "bf16"


def test_unknown_precision_names_the_choices():
    with pytest.raises(PairforgeError, match="'fp16'.*auto, fp32, bf16"):
        precision.resolve_precision("fp16", "cpu")


def test_presets_choose_auto_or_fp32():
    from pairforge.config import load_config

    for name in ("demo-image", "demo-joint", "demo-mask", "demo-sdm", "demo-sr", "grains-64"):
        assert load_config(name).precision == "auto", name
    assert load_config("tiny").precision == "fp32"
