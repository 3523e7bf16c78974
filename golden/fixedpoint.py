"""Fixed-point helpers: the project's one numerical specification (see ``docs/numerics.md``).

Conventions used by every golden model and every RTL unit:

* Integers are signed two's complement unless stated; ``bits`` is the total width.
* **Saturation** clips to ``[-2**(bits-1), 2**(bits-1) - 1]``.
* **Requantization** of an integer ``x`` by an unsigned multiplier ``M`` and a shift ``S``::

      y = sat((x * M + round_term(S)) >> S),   round_term(S) = 1 << (S - 1) if S > 0 else 0

  where ``>>`` is an arithmetic (flooring) shift. This rounds to nearest with ties toward
  +infinity ("round half up"), the rule of TFLite/gemmlowp without the sign special-case, and
  it is the only integer rounding rule in the project.
* **Quantization** of real numbers (done offline, never in hardware) rounds half to even:
  ``q = sat(round(x / scale))``.

All functions work on NumPy ``int64`` arrays; inputs are checked to lie in their declared ranges
so that no intermediate value can overflow 64 bits.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "int_range", "saturate", "check_int_array", "quantize", "dequantize", "round_shift",
    "requantize", "quantize_multiplier",
]


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Inclusive range of a ``bits``-wide integer."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def saturate(x, bits: int, signed: bool = True) -> np.ndarray:
    """Clip ``x`` to the range of a ``bits``-wide integer."""
    lo, hi = int_range(bits, signed)
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def check_int_array(name: str, x, bits: int, signed: bool = True, shape=None) -> np.ndarray:
    """Return ``x`` as an int64 array, raising ``ValueError`` if any element is out of range."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array, not dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, not {arr.shape}")
    lo, hi = int_range(bits, signed)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name} values must be in the range [{lo}, {hi}], "
                         f"found [{arr.min()}, {arr.max()}]")
    return arr


def quantize(x, scale: float, bits: int = 8) -> np.ndarray:
    """Symmetric quantization of real values: ``sat(round_half_even(x / scale))``."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, not {scale!r}")
    return saturate(np.rint(np.asarray(x, dtype=np.float64) / scale), bits)


def dequantize(q, scale: float) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) * scale


def round_shift(x, shift) -> np.ndarray:
    """``(x + round_term(shift)) >> shift``: arithmetic shift rounding half up."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    term = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(x + term, shift)


def requantize(x, mult, shift, out_bits: int = 8) -> np.ndarray:
    """``sat(round_shift(x * mult, shift), out_bits)``; ``mult``/``shift`` broadcast over ``x``.

    The caller guarantees ``|x| * mult < 2**62`` (the config's widths ensure it).
    """
    x = np.asarray(x, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.int64)
    if np.any(mult < 0):
        raise ValueError("mult must be non-negative")
    if np.any(np.asarray(shift) < 0) or np.any(np.asarray(shift) > 62):
        raise ValueError("shift must be in the range [0, 62]")
    return saturate(round_shift(x * mult, shift), out_bits)


def quantize_multiplier(real: float, mult_width: int = 16, max_shift: int = 48) -> tuple[int, int]:
    """Represent a positive real ratio as ``M / 2**S`` with ``M < 2**mult_width``.

    ``M`` is normalised to ``[2**(mult_width-1), 2**mult_width)`` when the shift range allows,
    which keeps ``mult_width - 1`` significant bits. Ratios too small for ``max_shift`` lose
    precision (``M`` shrinks, possibly to 0); ratios too large raise ``ValueError``.
    """
    if not (isinstance(real, (int, float, np.floating)) and math.isfinite(real) and real > 0):
        raise ValueError(f"requantization ratio must be a positive finite number, not {real!r}")
    _, exp = math.frexp(real)             # real = frac * 2**exp, frac in [0.5, 1)
    shift = mult_width - exp
    if shift < 0:
        raise ValueError(f"requantization ratio {real!r} is too large for a {mult_width}-bit "
                         f"multiplier (at most {2 ** mult_width - 1})")
    shift = min(shift, max_shift)
    mult = int(round(real * (1 << shift)))
    if mult >= 1 << mult_width:           # rounding carried into the next power of two
        mult >>= 1
        shift -= 1
        if shift < 0:
            raise ValueError(f"requantization ratio {real!r} is too large for a {mult_width}-bit "
                             f"multiplier")
    return mult, shift
