"""Golden integer LayerNorm, the spec of ``rtl.layernorm``.

``y = gamma * (x - mean) / sqrt(var + eps) + beta`` over a row of ``n`` channels.

Everything before the per-channel affine is exact integer arithmetic on the row sums, so the
result does not depend on the input scale (LayerNorm is scale invariant) except through ``eps``:

1. ``S1 = sum(x)``, ``S2 = sum(x*x)`` (one pass while the row is stored).
2. ``V = n*S2 - S1**2 + eps_int`` (``= n**2 * (var + eps) / s_in**2``; ``eps_int`` is a
   run-time parameter, ``round(eps * n**2 / s_in**2)``, see :func:`ln_params`).
3. ``r = isqrt(V << 2*SQRT_FRAC)`` (``= floor(sqrt(V) * 2**SQRT_FRAC)``, ``SQRT_FRAC = 8``
   fractional bits so that rows of small variance keep a precise root; the RTL runs the bitwise
   digit-by-digit method, one result bit per cycle) and ``L = r.bit_length()``.
4. Reciprocal with a normalized mantissa: ``inv = floor(2**(INV_FRAC + L) / r)`` in
   ``(2**15, 2**16]`` (``inv = 0`` when ``r = 0``, which only happens for a zero-variance row
   with ``eps_int = 0``).
5. Per channel: ``c = n*x - S1`` (``= n * (x - mean)``, exact) and the normalized value
   ``z = round_shift(c * inv, INV_FRAC + L - NORM_FRAC - SQRT_FRAC)`` (``z = 0`` when ``r = 0``)
   with ``NORM_FRAC = 10`` fractional bits (``|z| <= 2 * sqrt(n) * 2**10``). ``r > 0`` implies
   ``L > SQRT_FRAC``, so the shift is never negative.
6. Affine and requantization: ``y = requantize(z * gamma + beta, mult, shift, out_bits)`` with
   per-channel ``gamma`` (signed ``GAMMA_BITS``) and ``beta`` (signed ``BETA_BITS``, in the scale
   of ``z * gamma``), and per-layer ``mult``/``shift`` (the rounding rule of
   :mod:`golden.fixedpoint`).
"""

from __future__ import annotations

import math

import numpy as np

from .config import check_int
from .fixedpoint import check_int_array, quantize_multiplier, requantize, round_shift

__all__ = [
    "BETA_BITS",
    "EPS_BITS",
    "GAMMA_BITS",
    "INV_FRAC",
    "NORM_FRAC",
    "SHIFT_MAX",
    "SQRT_FRAC",
    "LnParams",
    "isqrt",
    "layernorm_int",
    "layernorm_row",
    "ln_params",
    "var_bits",
]

NORM_FRAC = 10
SQRT_FRAC = 8
INV_FRAC = 15
GAMMA_BITS = 16
BETA_BITS = 32
EPS_BITS = 32
SHIFT_MAX = 62


def var_bits(in_bits: int, max_dim: int) -> int:
    """Width of ``V = n*S2 - S1**2 + eps_int`` (unsigned) for rows of up to ``max_dim``."""
    n = max_dim
    vmax = n * n * (1 << (2 * in_bits - 2)) + (1 << EPS_BITS) - 1
    return vmax.bit_length() + 2 * SQRT_FRAC


def isqrt(v) -> np.ndarray:
    """Floor square root of non-negative integers (exact, elementwise)."""
    v = np.asarray(v, dtype=np.int64)
    return np.vectorize(lambda a: math.isqrt(int(a)), otypes=[np.int64])(v)


class LnParams:
    """LayerNorm parameters: per-channel ``gamma``/``beta`` and per-layer ``mult``, ``shift``,
    ``eps_int`` (integers), validated against ``mult_width``."""

    def __init__(self, gamma, beta, mult, shift, eps_int=0, *, mult_width=16):
        self.gamma = check_int_array("gamma", gamma, GAMMA_BITS)
        self.beta = check_int_array("beta", beta, BETA_BITS)
        if self.gamma.ndim != 1 or self.gamma.shape != self.beta.shape:
            raise ValueError(f"gamma and beta must be 1-D of equal length, not "
                             f"{self.gamma.shape} and {self.beta.shape}")
        mult, shift, eps_int = (int(v) if isinstance(v, np.integer) else v
                                for v in (mult, shift, eps_int))    # numpy scalars too
        check_int("mult", mult, 0, (1 << mult_width) - 1)
        check_int("shift", shift, 0, SHIFT_MAX)
        check_int("eps_int", eps_int, 0, (1 << EPS_BITS) - 1)
        self.mult, self.shift, self.eps_int = int(mult), int(shift), int(eps_int)


def ln_params(gamma, beta, *, n, scale_in, scale_out, eps=1e-6, mult_width=16) -> LnParams:
    """Quantize float ``gamma``/``beta`` (length ``n``) for the given input/output scales."""
    for name, value in (("scale_in", scale_in), ("scale_out", scale_out)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, not {value!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a non-negative finite number, not {eps!r}")
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    gmax = float(np.abs(gamma).max()) if gamma.size else 0.0
    s_g = (gmax if gmax > 0 else 1.0) / ((1 << (GAMMA_BITS - 1)) - 1)
    g_int = np.rint(gamma / s_g).astype(np.int64)
    s_zg = s_g * 2.0 ** -NORM_FRAC               # scale of z * gamma (and of beta)
    b_int = np.clip(np.rint(beta / s_zg), -(1 << (BETA_BITS - 1)), (1 << (BETA_BITS - 1)) - 1)
    mult, shift = quantize_multiplier(s_zg / scale_out, mult_width, SHIFT_MAX)
    eps_int = min(round(eps * n * n / (scale_in * scale_in)), (1 << EPS_BITS) - 1)
    return LnParams(g_int, b_int.astype(np.int64), mult, shift, eps_int,
                    mult_width=mult_width)


def layernorm_row(x, params: LnParams, in_bits: int = 8, out_bits: int = 8) -> np.ndarray:
    """LayerNorm of one row ``x`` (signed ``in_bits``); returns signed ``out_bits`` ints.

    ``params.gamma``/``beta`` may be longer than the row; channel ``i`` uses entry ``i``.
    """
    x = check_int_array("x", x, in_bits)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x must be a non-empty 1-D row, not shape {x.shape}")
    n = x.size
    if n > params.gamma.size:
        raise ValueError(f"row length {n} exceeds the {params.gamma.size} gamma/beta entries")
    s1 = int(x.sum())
    s2 = int((x * x).sum())
    v = n * s2 - s1 * s1 + params.eps_int
    r = math.isqrt(v << (2 * SQRT_FRAC))
    length = r.bit_length()
    c = n * x - s1
    if r:
        inv = (1 << (INV_FRAC + length)) // r
        z = round_shift(c * inv, INV_FRAC + length - NORM_FRAC - SQRT_FRAC)
    else:
        z = np.zeros_like(c)
    acc = z * params.gamma[:n] + params.beta[:n]
    return requantize(acc, params.mult, params.shift, out_bits)


def layernorm_int(x, params: LnParams, in_bits: int = 8, out_bits: int = 8) -> np.ndarray:
    """Row-wise :func:`layernorm_row` of a 1-D row or 2-D array of rows."""
    x = np.asarray(x)
    if x.ndim == 1:
        return layernorm_row(x, params, in_bits, out_bits)
    if x.ndim != 2:
        raise ValueError(f"x must be 1-D or 2-D, not {x.ndim}-D")
    return np.stack([layernorm_row(row, params, in_bits, out_bits) for row in x])
