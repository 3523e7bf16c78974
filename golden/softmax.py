"""Golden integer softmax (I-BERT second-order exp polynomial), the spec of ``rtl.softmax``.

Formats
-------
* **Input**: signed ``IN_BITS`` (16) integers with the fixed scale ``2**-IN_FRAC`` (``2**-8``):
  range [-128, 128) with 1/256 resolution. The producer (the Q.K^T GEMM epilogue) requantizes its
  int32 accumulators, with ``1/sqrt(d_head)`` and the model's scales folded into its multiplier,
  straight into this format. A fixed power-of-two input scale turns I-BERT's range reduction
  ``z = floor(-x / ln2)`` into a division by the constant ``LN2_Q`` (a multiply by a
  reciprocal), so no per-layer constant reaches the unit and 16 bits keep the exp argument 8
  fractional bits where an int8 input would keep 2 to 4.
* **Output**: unsigned 8-bit probabilities with the scale ``2**-8`` (``OUT_FRAC``): 128 means
  0.5; a probability of 1.0 saturates to 255.

Algorithm (all integer, per row of ``n`` values)
------------------------------------------------
1. ``m = max(x)``; ``nd = min(m - x, ND_MAX)`` (>= 0). ``ND_MAX = 31 * LN2_Q`` clamps the
   exponent at 31 (I-BERT clamps at 30), where the 18-bit exp has already shifted out to 0.
2. Range reduction: ``z = (nd * RECIP) >> RECIP_SHIFT`` equals ``nd // LN2_Q`` exactly on
   ``[0, ND_MAX]`` (checked by the tests); ``p = z * LN2_Q - nd`` in ``(-LN2_Q, 0]``.
3. ``exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344``: ``q = (p + EXP_B)^2 + EXP_C`` with scale
   ``0.3585 * 2**-16`` (``EXP_B = floor(1.353 * 2**8)``, ``EXP_C = floor(0.344 / 0.3585 *
   2**16)``); ``e = q >> z``, at most ``E_MAX = EXP_B**2 + EXP_C`` (18 bits).
4. ``s = sum(e)``; the reciprocal ``f = floor(2**RECIP_BITS / s)`` (``RECIP_BITS = 32``; the
   row maximum contributes ``E_MAX``, so ``f < 2**15``).
5. ``out = min(255, round_shift(e * f, RECIP_BITS - OUT_FRAC))`` with the project's rounding.
"""

from __future__ import annotations

import math

import numpy as np

from .fixedpoint import check_int_array, round_shift

__all__ = [
    "EXP_B",
    "EXP_C",
    "E_BITS",
    "E_MAX",
    "FACTOR_BITS",
    "IN_BITS",
    "IN_FRAC",
    "LN2_Q",
    "ND_MAX",
    "OUT_BITS",
    "OUT_FRAC",
    "RECIP",
    "RECIP_BITS",
    "RECIP_SHIFT",
    "check_row_length",
    "exp_int",
    "softmax_int",
    "softmax_row",
    "sum_bits",
]

IN_BITS = 16
IN_FRAC = 8
OUT_BITS = 8
OUT_FRAC = 8
LN2_Q = round(math.log(2) * (1 << IN_FRAC))                    # 177
EXP_B = math.floor(1.353 * (1 << IN_FRAC))                     # 346
EXP_C = math.floor(0.344 / 0.3585 * (1 << (2 * IN_FRAC)))      # 62885
E_MAX = EXP_B * EXP_B + EXP_C                                  # 182601
E_BITS = E_MAX.bit_length()                                    # 18
Z_CLAMP = 31
ND_MAX = Z_CLAMP * LN2_Q                                       # 5487
RECIP_SHIFT = 20
RECIP = -(-(1 << RECIP_SHIFT) // LN2_Q)                        # ceil(2**20 / 177) = 5925
RECIP_BITS = 32
FACTOR_BITS = ((1 << RECIP_BITS) // E_MAX).bit_length()        # 15
EXP_SCALE = 0.3585 * 2.0 ** (-2 * IN_FRAC)                     # real value of one exp LSB


def sum_bits(max_tokens: int) -> int:
    """Width of the row sum of ``max_tokens`` exps."""
    return (E_MAX * max_tokens).bit_length()


def check_row_length(n: int, max_tokens: int):
    if not 1 <= n <= max_tokens:
        raise ValueError(f"row length must be in the range [1, {max_tokens}], not {n}")


def exp_int(nd) -> np.ndarray:
    """Integer ``exp(-nd * 2**-8)`` in units of ``EXP_SCALE`` for ``nd >= 0`` (any size)."""
    nd = np.minimum(np.asarray(nd, dtype=np.int64), ND_MAX)
    if np.any(nd < 0):
        raise ValueError("nd must be non-negative")
    z = (nd * RECIP) >> RECIP_SHIFT
    p = z * LN2_Q - nd
    q = (p + EXP_B) ** 2 + EXP_C
    return q >> z


def softmax_row(x) -> np.ndarray:
    """Softmax of one row (1-D int array, ``IN_BITS`` signed, scale ``2**-IN_FRAC``).

    Returns uint8 values (as int64) with the scale ``2**-OUT_FRAC``.
    """
    x = check_int_array("x", x, IN_BITS)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x must be a non-empty 1-D row, not shape {x.shape}")
    e = exp_int(x.max() - x)
    s = int(e.sum())
    f = (1 << RECIP_BITS) // s
    return np.minimum(round_shift(e * f, RECIP_BITS - OUT_FRAC), (1 << OUT_BITS) - 1)


def softmax_int(x, max_tokens: int | None = None) -> np.ndarray:
    """Row-wise softmax of a 1-D row or a 2-D array of rows (see :func:`softmax_row`)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
        squeeze = True
    elif x.ndim == 2:
        squeeze = False
    else:
        raise ValueError(f"x must be 1-D or 2-D, not {x.ndim}-D")
    if max_tokens is not None:
        check_row_length(x.shape[1], max_tokens)
    out = np.stack([softmax_row(row) for row in x])
    return out[0] if squeeze else out
