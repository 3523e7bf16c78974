import numpy as np
import pytest

from golden.fixedpoint import (
    dequantize,
    quantize,
    quantize_multiplier,
    requantize,
    round_shift,
    saturate,
)


def test_round_shift_rounds_half_up():
    # hand-computed: x / 2 for x = -3..3 -> -1.5, -1, -0.5, 0, 0.5, 1, 1.5
    assert round_shift(np.arange(-3, 4), 1).tolist() == [-1, -1, 0, 0, 1, 1, 2]
    # x / 4: -6/4 = -1.5 -> -1, -5/4 -> -1, 6/4 = 1.5 -> 2, 5/4 -> 1
    assert round_shift([-6, -5, 5, 6], 2).tolist() == [-1, -1, 1, 2]
    assert round_shift([7, -7], 0).tolist() == [7, -7]


def test_round_shift_matches_float_rounding(rng):
    x = rng.integers(-(1 << 40), 1 << 40, size=10000)
    s = rng.integers(0, 30, size=10000)
    expected = np.floor(x / 2.0 ** s + 0.5).astype(np.int64)
    assert np.array_equal(round_shift(x, s), expected)


def test_saturate():
    assert saturate([-1000, -129, -128, 0, 127, 128, 1000], 8).tolist() == \
        [-128, -128, -128, 0, 127, 127, 127]
    assert saturate([-1, 256], 8, signed=False).tolist() == [0, 255]


def test_requantize_saturates_and_rounds():
    assert requantize([1000, -1000], 1, 0).tolist() == [127, -128]
    assert requantize([3, -3], 1, 1).tolist() == [2, -1]          # 1.5 -> 2, -1.5 -> -1
    assert requantize([100], 3, 2).tolist() == [75]
    with pytest.raises(ValueError, match="mult must be non-negative"):
        requantize([1], -1, 0)
    with pytest.raises(ValueError, match=r"shift must be in the range \[0, 62\]"):
        requantize([1], 1, 63)


@pytest.mark.parametrize("real", [1.0, 0.5, 0.123456, 3.7e-5, 1e-9, 1000.5])
def test_quantize_multiplier_accuracy(real):
    mult, shift = quantize_multiplier(real, 16, 48)
    assert 0 <= mult < 1 << 16
    assert 0 <= shift <= 48
    if shift < 48:
        assert mult >= 1 << 15                                   # normalised
        assert abs(mult / 2 ** shift - real) <= real * 2 ** -15
    x = np.arange(-5000, 5000)
    err = requantize(x, mult, shift, 32) - np.floor(x * real + 0.5)
    assert np.abs(err).max() <= 1


def test_quantize_multiplier_errors():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive finite"):
            quantize_multiplier(bad)
    with pytest.raises(ValueError, match="too large for a 16-bit multiplier"):
        quantize_multiplier(70000.0, 16)


def test_quantize_round_trip(rng):
    x = rng.normal(size=1000)
    scale = np.abs(x).max() / 127
    q = quantize(x, scale)
    assert q.min() >= -128 and q.max() <= 127
    assert np.abs(dequantize(q, scale) - x).max() <= scale / 2 + 1e-12
    assert quantize([0.5, 1.5, 2.5], 1.0).tolist() == [0, 2, 2]      # half to even
    with pytest.raises(ValueError, match="scale must be positive"):
        quantize([1.0], 0.0)
