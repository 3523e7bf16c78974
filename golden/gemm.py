"""Golden int8 GEMM with the bias + requantize epilogue of the GEMM engine.

``C = sat8(round_shift((A @ B + bias) * M, S))`` per output column ``j`` with ``bias[j]``,
``M[j]``, ``S[j]`` (per-output-channel requantization). Products are accumulated exactly in
int64; the configuration guarantees that the sum fits ``acc_width`` bits, so the hardware's
accumulator never wraps. ``acc + bias`` is formed one bit wider than the accumulator.
"""

from __future__ import annotations

import numpy as np

from .config import AccelConfig
from .fixedpoint import check_int_array, requantize

__all__ = ["OUT16_BITS", "gemm_acc", "gemm", "check_gemm_operands", "EpilogueParams"]

#: Output width of a GEMM with the 16-bit output option (``out_bits=OUT16_BITS``: attention and
#: classifier logits; the ISA's ``OUT16`` flag, the engine's ``out16`` command field). It is
#: also the width of the engine's output lanes, which carry int8 results sign-extended.
OUT16_BITS = 16


class EpilogueParams:
    """Per-output-column epilogue parameters: ``bias`` (acc_width), ``mult`` (unsigned
    mult_width) and ``shift`` (0..max_shift), each of length ``n``."""

    def __init__(self, cfg: AccelConfig, n: int, bias=None, mult=None, shift=None):
        self.bias = check_int_array("bias", np.zeros(n, np.int64) if bias is None else bias,
                                    cfg.acc_width, shape=(n,))
        self.mult = check_int_array("mult", np.ones(n, np.int64) if mult is None else mult,
                                    cfg.mult_width, signed=False, shape=(n,))
        shift = np.zeros(n, np.int64) if shift is None else np.asarray(shift)
        self.shift = check_int_array("shift", shift, cfg.shift_width, signed=False, shape=(n,))
        if self.shift.size and self.shift.max() > cfg.max_shift:
            raise ValueError(f"shift values must be in the range [0, {cfg.max_shift}], "
                             f"found {self.shift.max()}")

    @classmethod
    def random(cls, cfg: AccelConfig, n: int, rng: np.random.Generator, k: int = 64):
        """Parameters that map a typical K-term accumulator onto the int8 range (for tests)."""
        bias = rng.integers(-(1 << 12), 1 << 12, size=n)
        mult = rng.integers(1 << (cfg.mult_width - 1), 1 << cfg.mult_width, size=n)
        base = cfg.mult_width + max(int(np.log2(max(k, 1)) // 2) + 6, 0)
        shift = np.clip(rng.integers(base - 2, base + 3, size=n), 0, cfg.max_shift)
        return cls(cfg, n, bias, mult, shift)


def check_gemm_operands(cfg: AccelConfig, a, b, *, a_unsigned: bool = False,
                        weight_buffer: bool = True):
    """Validate shapes and ranges of ``a`` (M x K) and ``b`` (K x N) for ``cfg``; with
    ``weight_buffer``, also that ``b`` fits the engine's weight buffer."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a and b must be 2-D, not {a.ndim}-D and {b.ndim}-D")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"inner dimensions differ: a is {a.shape}, b is {b.shape}")
    for name, value, hi in (("m", m, cfg.max_tokens), ("k", k, cfg.max_gemm_dim),
                            ("n", n, cfg.max_gemm_dim)):
        if not 1 <= value <= hi:
            raise ValueError(f"{name} must be in the range [1, {hi}], not {value}")
    if weight_buffer and cfg.weight_words(k, n) > cfg.weight_buffer_depth:
        raise ValueError(f"weights of {k} x {n} need {cfg.weight_words(k, n)} words of the weight "
                         f"buffer; weight_buffer_depth is {cfg.weight_buffer_depth}")
    a = check_int_array("a", a, cfg.act_width, signed=not a_unsigned)
    b = check_int_array("b", b, cfg.weight_width)
    return a, b


def gemm_acc(a, b) -> np.ndarray:
    """Exact integer product ``a @ b`` in int64."""
    return np.asarray(a, np.int64) @ np.asarray(b, np.int64)


def gemm(cfg: AccelConfig, a, b, ep: EpilogueParams | None = None, *, a_unsigned: bool = False,
         out_bits: int | None = None, weight_buffer: bool = True) -> np.ndarray:
    """The GEMM engine's result: ``requantize(a @ b + bias, mult, shift)`` as int8 (int64 array).

    ``a_unsigned`` takes ``a`` as unsigned ``act_width``-bit (softmax probabilities);
    ``out_bits`` saturates to another width (:data:`OUT16_BITS` for attention and classifier
    logits);
    ``weight_buffer=False`` skips the weight-buffer capacity check (``b`` read from elsewhere).
    """
    a, b = check_gemm_operands(cfg, a, b, a_unsigned=a_unsigned, weight_buffer=weight_buffer)
    n = b.shape[1]
    ep = EpilogueParams(cfg, n) if ep is None else ep
    if ep.bias.shape != (n,):
        raise ValueError(f"epilogue parameters must have length n = {n}, not {ep.bias.shape[0]}")
    acc = gemm_acc(a, b) + ep.bias[None, :]
    return requantize(acc, ep.mult[None, :], ep.shift[None, :],
                      cfg.act_width if out_bits is None else out_bits)
