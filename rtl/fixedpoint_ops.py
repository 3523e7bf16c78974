"""Combinational fixed-point helpers matching :mod:`golden.fixedpoint` bit for bit.

* :func:`round_shift` builds ``(x + round_term(s)) >> s`` (arithmetic shift, round half up) for
  a constant or run-time shift ``s``;
* :func:`saturate` clips a value to a signed or unsigned width;
* :func:`div_const` / :func:`mod_const` divide by a constant (a shift / the low bits when it is
  a power of two);
* :func:`restoring_divide_step` is one cycle of a two-bits-per-cycle restoring divider (the
  LayerNorm reducer's reciprocal, the softmax dividers).

Amaranth widens ``+`` by one bit, so the rounding term can never wrap.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Signal, Value
from amaranth.utils import exact_log2

__all__ = ["div_const", "mod_const", "restoring_divide_step", "round_shift", "saturate"]


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


def restoring_divide_step(m, rem, quo, div, count, bits: int):
    """One cycle of a restoring divider that produces two quotient bits per cycle (one in the
    cycle that completes ``bits`` when ``bits`` is odd): adds to ``m`` the comparisons and
    subtractions of two steps (``rem >= div``, then ``rem' >= div >> 1``) and the register
    updates of ``rem``, ``quo`` (quotient bits shifted in at the bottom), ``div`` (shifted right
    once per bit) and ``count`` (quotient bits done). Call it in the cycles where
    ``count < bits``."""
    rem1, quo1, rem2, quo2 = (Signal.like(v) for v in (rem, quo, rem, quo))
    div1 = Signal.like(div)
    m.d.comb += div1.eq(div >> 1)
    for (ri, qi, di), (ro, qo) in (((rem, quo, div), (rem1, quo1)),
                                   ((rem1, quo1, div1), (rem2, quo2))):
        with m.If(ri >= di):
            m.d.comb += [ro.eq(ri - di), qo.eq(Cat(Const(1, 1), qi))]
        with m.Else():
            m.d.comb += [ro.eq(ri), qo.eq(Cat(Const(0, 1), qi))]
    with m.If(count == bits - 1):
        m.d.sync += [rem.eq(rem1), quo.eq(quo1), div.eq(div1), count.eq(count + 1)]
    with m.Else():
        m.d.sync += [rem.eq(rem2), quo.eq(quo2), div.eq(div >> 2), count.eq(count + 2)]
