"""Combinational fixed-point helpers matching :mod:`golden.fixedpoint` bit for bit.

* :func:`round_shift` builds ``(x + round_term(s)) >> s`` (arithmetic shift, round half up) for
  a constant or run-time shift ``s``;
* :func:`saturate` clips a value to a signed or unsigned width;
* :func:`div_const` / :func:`mod_const` divide by a constant (a shift / the low bits when it is
  a power of two).

Amaranth widens ``+`` by one bit, so the rounding term can never wrap.
"""

from __future__ import annotations

from amaranth.hdl import Const, Mux, Value
from amaranth.utils import exact_log2

__all__ = ["div_const", "mod_const", "round_shift", "saturate"]


def div_const(x, c: int):
    """``x // c`` for a constant ``c`` (a shift when ``c`` is a power of two)."""
    return x >> exact_log2(c) if c & (c - 1) == 0 else x // c


def mod_const(x, c: int):
    """``x % c`` for a constant ``c`` (the low bits when ``c`` is a power of two)."""
    return x[:exact_log2(c)] if c & (c - 1) == 0 else x % c


def round_shift(x, shift):
    """``(x + (1 << (shift - 1) if shift > 0 else 0)) >> shift`` as an Amaranth expression.

    ``shift`` is a Python int or an unsigned Value; ``>>`` is arithmetic for signed ``x``.
    """
    x = Value.cast(x)
    if isinstance(shift, int):
        if shift == 0:
            return x
        return (x + (1 << (shift - 1))) >> shift
    return (x + ((Value.cast(1) << shift) >> 1)) >> shift


def saturate(x, bits, signed_out=True):
    """Clip ``x`` to the ``bits``-wide signed (or unsigned) range; returns that many bits.

    Built from the bits above the result, not from magnitude comparisons: ``x`` fits a signed
    result when those bits and the result's sign bit are all equal (an unsigned result: all
    zero, ``x`` not negative), so synthesis makes a LUT tree instead of two carry chains."""
    x = Value.cast(x)
    width, is_signed = len(x), x.shape().signed
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed_out else (0, (1 << bits) - 1)
    neg = x[-1] if is_signed else Const(0)
    if signed_out:
        top = x[bits - 1:]
        if not top.shape().width or (not is_signed and width < bits):
            clipped = x[:bits] if width >= bits else x
        else:
            fits = top == 0
            if is_signed:
                fits = fits | (top == (1 << len(top)) - 1)
            clipped = Mux(fits, x[:bits], Mux(neg, lo, hi))
    else:
        top = x[bits:]
        over = (top != 0) if len(top) else Const(0)
        clipped = Mux(neg, lo, Mux(over, hi, x[:bits]))
    clipped = Value.cast(clipped)[:bits] if len(Value.cast(clipped)) >= bits else clipped
    return clipped.as_signed() if signed_out else clipped
