"""Golden integer sigmoid (PLAN piecewise-linear), the spec of ``rtl.sigmoid``.

Used by the learned token-selector heads: a keep probability ``>= 0.5`` is output ``>= 128``.

Formats
-------
* **Input**: signed ``in_bits``-wide integers ``q`` with the power-of-two scale ``2**-frac``;
  ``frac`` (0..``MAX_FRAC``) is a run-time parameter, so the producer's requantization chooses
  the range (e.g. ``frac = 8``: [-128, 128) with 1/256 resolution for 16-bit inputs).
* **Output**: unsigned 8-bit with the scale ``2**-8`` (``OUT_FRAC``); 1.0 saturates to 255.

PLAN segments on ``A = |q|`` (``x = q * 2**-frac``), outputs in units of ``2**-8``::

    |x| >= 5            y = 256
    2.375 <= |x| < 5    y = round_shift(A *  8, frac) + 216      (|x|/32 + 27/32)
    1 <= |x| < 2.375    y = round_shift(A * 32, frac) + 160      (|x|/8  + 5/8)
    |x| < 1             y = round_shift(A * 64, frac) + 128      (|x|/4  + 1/2)

and ``y = 256 - y`` for ``x < 0``; finally ``y = min(y, 255)``. The breakpoints are exact
integer comparisons: ``A >= 5 << frac``, ``8 * A >= 19 << frac``, ``A >= 1 << frac``.
The PLAN approximation error is at most 0.019 (4.9 output LSBs) near the breakpoints.
"""

from __future__ import annotations

import numpy as np

from .fixedpoint import check_int_array, round_shift

__all__ = [
    "MAX_FRAC",
    "OUT_BITS",
    "OUT_FRAC",
    "SEGMENTS",
    "check_frac",
    "check_in_bits",
    "plan_float",
    "sigmoid_int",
]

OUT_BITS = 8
OUT_FRAC = 8
MAX_FRAC = 31
#: (threshold test as (mult, shift_const): 8*A >= 19 << frac ...), slope * 256, offset * 256
SEGMENTS = (
    # (lhs multiplier of A, rhs constant shifted by frac, slope, offset)
    (1, 5, 0, 256),
    (8, 19, 8, 216),
    (1, 1, 32, 160),
    (0, 0, 64, 128),       # always true: the last segment
)


def check_in_bits(in_bits):
    if isinstance(in_bits, bool) or not isinstance(in_bits, int):
        raise TypeError(f"in_bits must be an integer, not {in_bits!r}")
    if not 2 <= in_bits <= 32:
        raise ValueError(f"in_bits must be in the range [2, 32], not {in_bits}")


def check_frac(frac):
    if isinstance(frac, bool) or not isinstance(frac, (int, np.integer)):
        raise TypeError(f"frac must be an integer, not {frac!r}")
    if not 0 <= frac <= MAX_FRAC:
        raise ValueError(f"frac must be in the range [0, {MAX_FRAC}], not {frac}")


def sigmoid_int(x, frac: int, in_bits: int = 16) -> np.ndarray:
    """PLAN sigmoid of ``x * 2**-frac``; returns uint8 values (int64) with scale ``2**-8``.

    Parameters
    ----------
    x : int array
        Signed ``in_bits``-wide inputs.
    frac : int
        Fractional bits of the input (0..31).
    in_bits : int
        Input width (2..32).
    """
    check_in_bits(in_bits)
    check_frac(frac)
    x = check_int_array("x", x, in_bits)
    a = np.abs(x)
    y = np.full(x.shape, 128, dtype=np.int64) + round_shift(a * 64, frac)
    for lhs, rhs, slope, offset in reversed(SEGMENTS[:-1]):
        seg = round_shift(a * slope, frac) + offset if slope else np.full(x.shape, offset)
        y = np.where(a * lhs >= (rhs << frac), seg, y)
    y = np.where(x < 0, 256 - y, y)
    return np.minimum(y, (1 << OUT_BITS) - 1)


def plan_float(x) -> np.ndarray:
    """The PLAN approximation in floating point (no quantization)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    y = np.where(a >= 5, 1.0, np.where(a >= 2.375, a / 32 + 27 / 32,
                 np.where(a >= 1, a / 8 + 5 / 8, a / 4 + 0.5)))
    return np.where(x < 0, 1 - y, y)
