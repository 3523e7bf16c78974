"""Golden requantizing residual add, the spec of ``rtl.add``.

A residual connection adds two int8 tensors that carry different scales (``s_a``, ``s_b``) and
produces a third scale ``s_out``. With the ratios folded into two unsigned multipliers on one
common shift, each element is::

    y = sat(round_shift(a * ma + b * mb, shift), out_bits)

``round_shift`` is the project's one rounding rule (add ``1 << (shift - 1)``, arithmetic shift:
round half up, :func:`golden.fixedpoint.round_shift`) and ``sat`` clips to the signed
``out_bits`` range. ``ma``, ``mb`` are unsigned ``mult_width``-bit integers and ``shift`` lies in
``[0, 62]``; :func:`add_params` chooses them from the three scales.

Ranges: with ``in_bits``-bit operands the sum needs ``in_bits + mult_width + 1`` signed bits
(``|a * ma| < 2**(in_bits - 1 + mult_width)``), so it always fits the int64 arithmetic here
(``in_bits <= 16``, ``mult_width <= 32``).

Trade-off: one shared shift rather than one per operand keeps the datapath at two multipliers
and one adder before a single rounding point, so the result is exact up to the one final
rounding; the cost is that the smaller of the two ratios is represented with fewer significant
bits (its multiplier is scaled by the larger ratio's shift).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import check_int
from .fixedpoint import check_int_array, quantize_multiplier, round_shift, saturate

__all__ = ["MAX_SHIFT", "AddParams", "add_int", "add_params"]

#: Largest ``shift`` of the residual add (the project's requantization bound).
MAX_SHIFT = 62


class _AddFields(NamedTuple):
    ma: int
    mb: int
    shift: int


class AddParams(_AddFields):
    """Run-time parameters of the residual add ``sat(round_shift(a * ma + b * mb, shift))``.

    A named tuple ``(ma, mb, shift)`` whose fields are checked on construction: ``ma`` and
    ``mb`` in ``[0, 2**mult_width - 1]``, ``shift`` in ``[0, 62]`` (``TypeError`` for a
    non-integer, ``ValueError`` naming the field and its range otherwise). ``mult_width`` (1..32,
    default 16, the width of the instruction record's fields) is not stored.
    """

    __slots__ = ()

    def __new__(cls, ma, mb, shift, *, mult_width: int = 16):
        check_int("mult_width", mult_width, 1, 32)
        ma, mb, shift = (int(v) if isinstance(v, np.integer) else v for v in (ma, mb, shift))
        check_int("ma", ma, 0, (1 << mult_width) - 1)
        check_int("mb", mb, 0, (1 << mult_width) - 1)
        check_int("shift", shift, 0, MAX_SHIFT)
        return super().__new__(cls, ma, mb, shift)


def add_params(s_a: float, s_b: float, s_out: float, *, mult_width: int = 16,
               max_shift: int = MAX_SHIFT) -> AddParams:
    """Multipliers and shift that map ``a * s_a + b * s_b`` onto the scale ``s_out``.

    The larger ratio ``max(s_a, s_b) / s_out`` is represented by
    :func:`golden.fixedpoint.quantize_multiplier` (``mult_width`` significant bits); the other
    multiplier is the smaller ratio rounded on the same shift.
    """
    check_int("mult_width", mult_width, 1, 32)
    check_int("max_shift", max_shift, 0, MAX_SHIFT)
    for name, s in (("s_a", s_a), ("s_b", s_b), ("s_out", s_out)):
        if not (isinstance(s, (int, float, np.floating)) and np.isfinite(s) and s > 0):
            raise ValueError(f"{name} must be a positive finite number, not {s!r}")
    ra, rb = s_a / s_out, s_b / s_out
    _, shift = quantize_multiplier(max(ra, rb), mult_width, max_shift)
    ma, mb = round(ra * (1 << shift)), round(rb * (1 << shift))
    return AddParams(ma, mb, shift, mult_width=mult_width)


def add_int(a, b, p: AddParams, out_bits: int = 8, *, in_bits: int | None = None) -> np.ndarray:
    """Residual add of two integer tensors at different scales onto a third scale:
    ``sat(round_shift(a * ma + b * mb, shift), out_bits)``.

    ``a`` and ``b`` have the same shape and hold signed ``in_bits``-bit values (default
    ``out_bits``); ``out_bits`` and ``in_bits`` lie in ``[2, 16]``.
    """
    if not isinstance(p, AddParams):
        raise TypeError(f"p must be an AddParams, not {type(p).__name__}")
    check_int("out_bits", out_bits, 2, 16)
    in_bits = out_bits if in_bits is None else in_bits
    check_int("in_bits", in_bits, 2, 16)
    a = check_int_array("a", a, in_bits)
    b = check_int_array("b", b, in_bits)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, not {a.shape} and {b.shape}")
    return saturate(round_shift(a * p.ma + b * p.mb, p.shift), out_bits)
