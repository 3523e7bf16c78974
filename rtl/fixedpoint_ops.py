"""Combinational fixed-point helpers matching :mod:`golden.fixedpoint` bit for bit.

* :func:`round_shift` builds ``(x + round_term(s)) >> s`` (arithmetic shift, round half up) for
  a constant or run-time shift ``s``;
* :func:`saturate` clips a value to a signed or unsigned width.

Amaranth widens ``+`` by one bit, so the rounding term can never wrap.
"""

from __future__ import annotations

from amaranth.hdl import Mux, Value

__all__ = ["round_shift", "saturate"]


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
    """Clip ``x`` to the ``bits``-wide signed (or unsigned) range; returns that many bits."""
    x = Value.cast(x)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed_out else (0, (1 << bits) - 1)
    clipped = Mux(x > hi, hi, Mux(x < lo, lo, x))[:bits]
    return clipped.as_signed() if signed_out else clipped
