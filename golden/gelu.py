"""Golden integer GELU (I-BERT erf polynomial), the spec of ``rtl.gelu``.

``GELU(x) = x/2 * (1 + erf(x / sqrt(2)))`` with I-BERT's
``erf(u) ~ sgn(u) * [a * (min(|u|, -b) + b)^2 + 1]``, ``a = -0.2888``, ``b = -1.769``.

Integer form
------------
The input ``q`` (signed ``in_bits``) has the scale ``S``; ``u = x / sqrt(2)`` is the same integer
with the scale ``S' = S / sqrt(2)``. The constants are pre-quantized offline from ``S``
(:func:`gelu_params`) and reach the hardware as run-time parameters:

* ``b_int = floor(b / S')`` (negative), ``c_int = floor(1 / (a S'^2))`` (negative),
* ``one_int = floor(1 / (delta * a * S'^2))``: the "1" of ``1 + delta * erf`` in the erf scale
  (``one_int == c_int`` for ``delta = 1``),
* ``mult``, ``shift``: the requantization of the product scale ``S * delta * |a| * S'^2 / 2`` to
  the output scale (:func:`golden.fixedpoint.quantize_multiplier`).

Per element::

    t   = min(|q|, -b_int) + b_int              in [b_int, 0]
    L   = t * t + c_int                         (< 0: the polynomial in the scale a*S'^2)
    erf = L if q >= 0 else -L
    g   = q * -(erf + one_int)                  (>= 0 factor; scale S*delta*|a|*S'^2/2)
    y   = requantize(g, mult, shift, out_bits)  (saturating, round half up)

``delta`` is HeatViT's regularization factor on the erf polynomial (``1 + delta * erf``); the
default 1.0 is plain I-BERT GELU. Other values change the function and only suit networks
trained with them.

Ranges: ``in_bits`` in [2, 14]; ``-b_int`` in [1, 2**in_bits]; ``-c_int`` in
[1, 2**(2*in_bits+1)] (``L < 0`` unless the input scale is very coarse); ``-one_int`` in
[-c_int, 2**(2*in_bits+3)]. These keep ``g * mult`` inside 62 bits.
"""

from __future__ import annotations

import math

import numpy as np

from .config import check_int
from .fixedpoint import check_int_array, quantize_multiplier, requantize

__all__ = [
    "MAX_IN_BITS",
    "A",
    "B",
    "GeluParams",
    "check_in_bits",
    "gelu_int",
    "gelu_params",
    "gelu_poly_float",
]

A = -0.2888
B = -1.769
MAX_IN_BITS = 14


def check_in_bits(in_bits):
    if isinstance(in_bits, bool) or not isinstance(in_bits, int):
        raise TypeError(f"in_bits must be an integer, not {in_bits!r}")
    if not 2 <= in_bits <= MAX_IN_BITS:
        raise ValueError(f"in_bits must be in the range [2, {MAX_IN_BITS}], not {in_bits}")


class GeluParams:
    """Run-time GELU parameters (integers), validated for ``in_bits`` and ``mult_width``."""

    def __init__(self, b_int, c_int, one_int, mult, shift, *, in_bits=8, mult_width=16,
                 max_shift=62):
        check_in_bits(in_bits)
        b_int, c_int, one_int, mult, shift = (
            int(v) if isinstance(v, np.integer) else v
            for v in (b_int, c_int, one_int, mult, shift))        # numpy scalars are integers too
        check_int("b_int", b_int, -(1 << in_bits), -1)
        check_int("c_int", c_int, -(1 << (2 * in_bits + 1)), -1)
        check_int("one_int", one_int, -(1 << (2 * in_bits + 3)), c_int)
        check_int("mult", mult, 0, (1 << mult_width) - 1)
        check_int("shift", shift, 0, max_shift)
        self.b_int, self.c_int, self.one_int = int(b_int), int(c_int), int(one_int)
        self.mult, self.shift = int(mult), int(shift)
        self.in_bits = in_bits

    def as_dict(self):
        return {"b_int": self.b_int, "c_int": self.c_int, "one_int": self.one_int,
                "mult": self.mult,
                    "shift": self.shift}

    def __repr__(self):
        return f"GeluParams({self.as_dict()})"


def gelu_params(scale_in: float, scale_out: float, *, in_bits: int = 8, mult_width: int = 16,
                max_shift: int = 62, delta: float = 1.0) -> GeluParams:
    """Pre-quantize the I-BERT constants for an input scale ``scale_in`` and output scale."""
    check_in_bits(in_bits)
    if not (isinstance(delta, (int, float)) and 0.25 <= delta <= 1.0):
        raise ValueError(f"delta must be in the range [0.25, 1.0], not {delta!r}")
    for name, s in (("scale_in", scale_in), ("scale_out", scale_out)):
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise ValueError(f"{name} must be a positive finite number, not {s!r}")
    s2 = scale_in / math.sqrt(2)
    b_int = math.floor(B / s2)
    c_int = math.floor(1 / (A * s2 * s2))
    one_int = math.floor(1 / (delta * A * s2 * s2))
    g_scale = scale_in * delta * abs(A) * s2 * s2 / 2
    mult, shift = quantize_multiplier(g_scale / scale_out, mult_width, max_shift)
    return GeluParams(b_int, c_int, one_int, mult, shift, in_bits=in_bits,
                      mult_width=mult_width, max_shift=max_shift)


def gelu_int(q, params: GeluParams, out_bits: int = 8) -> np.ndarray:
    """Integer GELU of ``q`` (signed ``params.in_bits``); returns signed ``out_bits`` ints."""
    q = check_int_array("q", q, params.in_bits)
    t = np.minimum(np.abs(q), -params.b_int) + params.b_int
    poly = t * t + params.c_int
    erf = np.where(q >= 0, poly, -poly)
    g = q * -(erf + params.one_int)
    return requantize(g, params.mult, params.shift, out_bits)


def gelu_poly_float(x, delta: float = 1.0) -> np.ndarray:
    """I-BERT's polynomial GELU in floating point (its approximation error alone)."""
    x = np.asarray(x, dtype=np.float64)
    u = np.abs(x) / math.sqrt(2)
    erf = np.sign(x) * (A * (np.minimum(u, -B) + B) ** 2 + 1)
    return x / 2 * (1 + delta * erf)
