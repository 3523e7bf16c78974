"""Golden model of the learned token selector (HeatViT): keep probabilities, keep/prune decision.

HeatViT scores every token with a small learned *multi-head selector* placed before a
transformer block and prunes the tokens whose keep probability is below 0.5, fusing them into
one package token. This module holds three things:

* :class:`SelectorHead`, the float PyTorch reference of the selector head;
* its integer version (:func:`quantize_selector` builds :class:`SelectorParams` from a float
  head and calibration tokens; :func:`selector_int` computes the 8-bit keep probabilities with
  the project's integer units);
* the decision (:func:`select_learned`: threshold, min/max keep bounds, package token with
  re-merge of an earlier package token) and the whole stage (:func:`prune_tokens_learned`).

Structure of the head (float)
-----------------------------
The input is the token matrix ``x`` (``N x D``, token 0 is CLS). Only the ``n = N - 1``
non-CLS tokens are scored. The embedding is split into ``H`` head groups of ``dh = D / H``
channels; for head ``h`` with slice ``x_h = x[1:, h*dh:(h+1)*dh]``::

    local_h  = GELU(x_h @ W1_h + b1_h)                      n x f   (f = ``hidden``)
    global_h = mean over the n tokens of local_h             1 x f
    logits_h = [local_h, global_h] @ W2_h + b2_h             n x 2   (keep, prune)
    keep_h   = softmax(logits_h)[:, 0]                       n
    imp      = softmax(x[1:] @ Wi + bi)                      n x H   (head importance)
    p        = sum_h imp[:, h] * keep_h                      n       (keep probability)

Simplifications relative to HeatViT and the DynamicViT-style predictor it builds on: the local
feature and the score are one Linear layer each (DynamicViT uses a LayerNorm, then a
Linear + GELU, and a three-layer MLP down to the two logits); the global feature is the plain
mean over the scored tokens (DynamicViT averages with the current keep mask, which at inference
is all ones for the surviving tokens, so it is the same); the head-importance branch is one
Linear on the token followed by a softmax over heads; GELU is applied without HeatViT's
``delta`` regularization of the erf polynomial (``golden.gelu`` supports it). Training
(Gumbel-Softmax, the keep-ratio losses) is out of scope: the head is given.

Integer version
---------------
Every Linear is a :func:`golden.gemm.gemm` call: int8 weights with per-output-column scales,
an ``acc_width`` (int32) bias and a per-column requantization (``quantize_multiplier``) to
the next format.
Activations are signed ``act_width`` (8-bit) tensors with per-tensor scales chosen from
calibration data. Per head::

    a_h     = gemm(x_h, W1_h)                      int8, scale s_a (the GELU input scale)
    l_h     = gelu_int(a_h)                        int8, scale s_l          (golden.gelu)
    g_h     = merge_package(l_h, ones)             int8, scale s_l  (mean: the package
                                                   token's reciprocal arithmetic, unit weights)
    d_h     = gemm([l_h, g_h], W2d_h)              int8, scale 2**-frac_d   (one column)
    keep_h  = sigmoid_int(d_h, frac_d)             uint8, scale 2**-8       (golden.sigmoid)

The two-way softmax of the keep/prune logits is a sigmoid of their difference,
``softmax([a, b])[0] = e**a / (e**a + e**b) = 1 / (1 + e**-(a - b)) = sigmoid(a - b)``, and the
difference is linear in the layer's input, so the quantizer folds it into the weights:
``W2d = W2[:, 0] - W2[:, 1]``, ``b2d = b2[0] - b2[1]``. The GEMM then produces one column, the
logit difference, directly in the sigmoid unit's input format (a power-of-two scale
``2**-frac_d``). ``frac_d = floor(log2(127 / 5)) = 4`` (:func:`logit_frac`) is fixed, not
calibrated: it is the finest power-of-two scale whose int8 range (+-7.94) covers PLAN's whole
non-saturated domain ``|x| < 5``, so saturating the GEMM output never changes the sigmoid, and
a range fitted to calibration data would clip the rarer large differences of unseen tokens
(where the keep probability matters as a package weight). Its rounding costs at most
``2**-5 / 4`` = 2 output LSBs (the sigmoid's slope is at most 1/4).

Head importance::

    u   = gemm(x[1:], Wi)                          int8, scale 2**-frac_i (frac_i <= 8)
    u16 = requantize(u, 2**(8 - frac_i))           int16, scale 2**-8: the softmax input format
    imp = softmax_int(u16)                         uint8 per (token, head), scale 2**-8

The importance logits also use a power-of-two scale, so the conversion to the softmax unit's
fixed input format is an exact left shift (``requantize`` with the multiplier
``quantize_multiplier(2**(8 - frac_i))``), not a general multiply.

Weighted sum over heads (exact products, one rounding)::

    p = min(round_shift(sum_h imp[:, h] * keep_h, 8), 255)      uint8, scale 2**-8

The keep probability ``p`` is an unsigned 8-bit integer with the scale ``2**-8``: 128 is 0.5
(HeatViT's threshold) and a probability of 1.0 saturates to 255, as in the softmax and sigmoid
units.

Decision and package token
--------------------------
:func:`select_learned`: CLS is always kept and never scored. ``c`` tokens have ``p >=
threshold``; the kept count is ``k = clamp(c, min_keep, max_keep)`` (bounds above ``n`` are
limited to ``n``) and the kept set is the exact top-``k`` of ``p`` with the lower-index
tie-break (:func:`golden.topk.topk_select`). When ``k = c`` this is exactly the tokens at or
above the threshold (every one of them has a larger ``p`` than every token below it); when the
bounds move ``k``, the extra tokens are the most probable of those below the threshold
(``min_keep``) or the least probable above it are dropped (``max_keep``). The selector hardware
therefore is the top-k unit with ``k`` from a counter. Original order is preserved.

The pruned rows are fused by :func:`golden.token_prune.merge_package` with their keep
probabilities ``p`` as weights (HeatViT's "keep-score weighted average"; ``1 - p`` would give
the tokens most confidently judged uninformative the largest weight, and ``p`` also matches the
attention path, where pruned tokens are weighted by their importance score). A previous package
token (``prev_package``, total weight ``prev_weight``) joins the average, so package tokens of
earlier stages are re-merged rather than kept as extra rows; when nothing is pruned it is passed
through unchanged. The output is ``[CLS, kept tokens in ascending order, package token]``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import AccelConfig
from .fixedpoint import (
    check_int_array,
    quantize,
    quantize_multiplier,
    requantize,
    round_shift,
    saturate,
)
from .gelu import B as GELU_B
from .gelu import GeluParams, gelu_int, gelu_params
from .gemm import EpilogueParams, gemm
from .sigmoid import sigmoid_int
from .softmax import IN_BITS as SOFTMAX_IN_BITS
from .softmax import IN_FRAC as SOFTMAX_IN_FRAC
from .softmax import softmax_int
from .token_prune import PROB_BITS, TokenPruneResult, merge_package
from .topk import topk_select

__all__ = [
    "DEFAULT_THRESHOLD",
    "combine_heads",
    "HeadParams",
    "SelectorHead",
    "SelectorParams",
    "keep_bounds",
    "logit_frac",
    "prune_tokens_learned",
    "quantize_selector",
    "select_learned",
    "selector_int",
]

#: HeatViT's keep threshold 0.5 in units of ``2**-PROB_BITS``.
DEFAULT_THRESHOLD = 1 << (PROB_BITS - 1)
#: PLAN sigmoid saturates for ``|x| >= 5``: the logit-difference range never needs more.
SIGMOID_SAT = 5.0


# -- float reference ------------------------------------------------------------------------


class SelectorHead(nn.Module):
    """Float HeatViT-style multi-head selector head (see the module docstring).

    Parameters
    ----------
    dim : int
        Embedding dimension ``D``.
    heads : int
        Head groups ``H`` (``D`` must be a multiple of ``H``).
    hidden : int
        Width ``f`` of the per-head local feature.

    Members
    -------
    local : ModuleList of ``H`` ``Linear(D / H, f)``
    score : ModuleList of ``H`` ``Linear(2 f, 2)``, outputs (keep, prune) logits
    importance : ``Linear(D, H)``
    """

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads ({heads}), not {dim}")
        self.dim, self.heads, self.hidden = dim, heads, hidden
        self.head_dim = dim // heads
        self.local = nn.ModuleList(nn.Linear(self.head_dim, hidden) for _ in range(heads))
        self.score = nn.ModuleList(nn.Linear(2 * hidden, 2) for _ in range(heads))
        self.importance = nn.Linear(dim, heads)

    def forward(self, x: torch.Tensor, intermediates: bool = False):
        """Keep probabilities of the non-CLS tokens of ``x`` (``[..., N, D]`` -> ``[..., N-1]``).

        With ``intermediates=True`` also returns a dict of the per-head pre-GELU activations
        ``a``, local features ``l``, logit differences ``d`` (lists over heads), keep
        probabilities ``keep`` (``[..., N-1, H]``), importance logits ``u`` and weights ``imp``.
        """
        t = x[..., 1:, :]
        a, loc, d, keep = [], [], [], []
        for h in range(self.heads):
            a_h = self.local[h](t[..., h * self.head_dim:(h + 1) * self.head_dim])
            l_h = nn.functional.gelu(a_h)
            g_h = l_h.mean(dim=-2, keepdim=True).expand_as(l_h)
            logits = self.score[h](torch.cat([l_h, g_h], dim=-1))
            a.append(a_h)
            loc.append(l_h)
            d.append(logits[..., 0] - logits[..., 1])
            keep.append(torch.softmax(logits, dim=-1)[..., 0])
        keep = torch.stack(keep, dim=-1)
        u = self.importance(t)
        imp = torch.softmax(u, dim=-1)
        p = (imp * keep).sum(dim=-1)
        if intermediates:
            return p, {"a": a, "l": loc, "d": d, "keep": keep, "u": u, "imp": imp}
        return p


# -- integer parameters ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeadParams:
    """Integer parameters of one selector head ``h``."""
    w1: np.ndarray            #: ``dh x f`` int8 local-feature weights
    ep1: EpilogueParams       #: bias and requantization to the GELU input scale ``s_a``
    gelu: GeluParams          #: GELU from ``s_a`` to the local-feature scale ``s_l``
    w2: np.ndarray            #: ``2f x 1`` int8 weights of the keep - prune logit difference
    ep2: EpilogueParams       #: bias and requantization to ``2**-frac_d``
    frac_d: int               #: fractional bits of the logit difference (sigmoid input)
    s_a: float                #: real scale of the GELU input (documentation, calibration)
    s_l: float                #: real scale of the local and global features


@dataclass(frozen=True)
class SelectorParams:
    """Integer parameters of a :class:`SelectorHead` (built by :func:`quantize_selector`)."""
    dim: int
    heads: int
    hidden: int
    x_scale: float            #: real scale of the int8 input tokens
    head: tuple               #: one :class:`HeadParams` per head
    wi: np.ndarray            #: ``D x H`` int8 head-importance weights
    epi: EpilogueParams       #: bias and requantization to ``2**-frac_i``
    frac_i: int               #: fractional bits of the importance logits (0..8)
    softmax_shift: tuple      #: ``(mult, shift)`` from ``2**-frac_i`` to the softmax input

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def gemm_shapes(self, n_tokens: int) -> list[tuple[str, int, int, int]]:
        """``(layer, M, K, N)`` of every GEMM the head runs on ``n_tokens`` (incl. CLS)."""
        m = n_tokens - 1
        shapes = []
        for h in range(self.heads):
            shapes.append((f"local[{h}]", m, self.head_dim, self.hidden))
            shapes.append((f"score[{h}]", m, 2 * self.hidden, 1))
        shapes.append(("importance", m, self.dim, self.heads))
        return shapes


def _amax(t) -> float:
    return float(torch.as_tensor(t).detach().abs().max())


def _weight_scales(w: np.ndarray, bits: int) -> np.ndarray:
    """Per-output-column symmetric scales of a ``K x N`` float weight matrix."""
    amax = np.abs(w).max(axis=0)
    return np.where(amax > 0, amax, 1.0) / ((1 << (bits - 1)) - 1)


def _linear_int(cfg: AccelConfig, w: np.ndarray, b: np.ndarray, s_in: float, s_out: float):
    """Quantize a float layer ``y = x @ w + b`` (``w``: K x N) for an int8 GEMM."""
    s_w = _weight_scales(w, cfg.weight_width)
    wq = quantize(w / s_w[None, :], 1.0, cfg.weight_width)
    s_acc = s_in * s_w
    acc_lo, acc_hi = -(1 << (cfg.acc_width - 1)), (1 << (cfg.acc_width - 1)) - 1
    bias = np.clip(np.rint(b / s_acc), acc_lo, acc_hi).astype(np.int64)
    mult, shift = zip(*(quantize_multiplier(float(s / s_out), cfg.mult_width, cfg.max_shift)
                        for s in s_acc))
    return wq, EpilogueParams(cfg, w.shape[1], bias, list(mult), list(shift))


def logit_frac(act_width: int) -> int:
    """Fractional bits of the logit difference: the finest power-of-two scale whose
    ``act_width`` range still covers PLAN's saturation point ``|x| = 5`` (4 for int8)."""
    return max(0, math.floor(math.log2(((1 << (act_width - 1)) - 1) / SIGMOID_SAT)))


def _pow2_frac(amax: float, qmax: int, lo: int, hi: int) -> int:
    """Largest ``frac`` in ``[lo, hi]`` with ``amax * 2**frac <= qmax`` (``hi`` if ``amax = 0``)."""
    if amax <= 0:
        return hi
    return int(min(hi, max(lo, math.floor(math.log2(qmax / amax)))))


def quantize_selector(module: SelectorHead, calib_tokens, cfg: AccelConfig | None = None, *,
                      x_scale: float | None = None) -> SelectorParams:
    """Integer parameters of ``module`` with activation scales from calibration tokens.

    Parameters
    ----------
    module : SelectorHead
        The float head.
    calib_tokens : array or tensor, ``[N, D]`` or ``[B, N, D]``
        Real-valued calibration tokens (token 0 of each set is CLS), ``N >= 2``.
    cfg : AccelConfig
        Widths (``act_width``, ``weight_width``, ``acc_width``, ``mult_width``).
    x_scale : float, optional
        Scale of the int8 input tokens (the producer's output scale). Default: the
        calibration tokens' largest magnitude over ``2**(act_width-1) - 1``.

    Scales: weights per output column (largest magnitude maps to ``2**(weight_width-1)-1``);
    the GELU input and the local feature per head and per tensor from the calibration range
    (the GELU input scale is at least ``1.769 * sqrt(2) / 2**act_width``, the coarsest scale
    that ``golden.gelu`` represents); the logit difference and the importance logits with
    power-of-two scales (see the module docstring).
    """
    cfg = cfg if cfg is not None else AccelConfig()
    if not isinstance(module, SelectorHead):
        raise TypeError(f"module must be a SelectorHead, not {type(module).__name__}")
    t = torch.as_tensor(np.asarray(calib_tokens, dtype=np.float64))
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[-1] != module.dim or t.shape[-2] < 2:
        raise ValueError(f"calib_tokens must have shape (N >= 2, {module.dim}) or "
                         f"(B, N >= 2, {module.dim}), not {tuple(t.shape)}")
    qmax = (1 << (cfg.act_width - 1)) - 1
    if x_scale is None:
        x_scale = max(_amax(t), 1e-12) / qmax
    if not (isinstance(x_scale, (int, float)) and math.isfinite(x_scale) and x_scale > 0):
        raise ValueError(f"x_scale must be a positive finite number, not {x_scale!r}")
    # Calibrate on the tokens as the integer head sees them (quantized to x_scale).
    tq = torch.as_tensor(quantize(t.numpy(), x_scale, cfg.act_width) * x_scale)
    mod = copy.deepcopy(module).double()
    with torch.no_grad():
        _, mid = mod(tq, intermediates=True)
    s_a_min = -GELU_B * math.sqrt(2) / (1 << cfg.act_width) * (1 + 1e-9)
    frac_d = logit_frac(cfg.act_width)
    heads = []
    with torch.no_grad():
        for h in range(module.heads):
            s_a = max(_amax(mid["a"][h]) / qmax, s_a_min)
            s_l = max(_amax(mid["l"][h]), 1e-12) / qmax
            loc, sc = mod.local[h], mod.score[h]
            w1, ep1 = _linear_int(cfg, loc.weight.numpy().T, loc.bias.numpy(), x_scale, s_a)
            wd = (sc.weight[0] - sc.weight[1]).numpy()[:, None]
            bd = (sc.bias[0] - sc.bias[1]).numpy()[None]
            w2, ep2 = _linear_int(cfg, wd, bd, s_l, 2.0 ** -frac_d)
            gp = gelu_params(s_a, s_l, in_bits=cfg.act_width, mult_width=cfg.mult_width)
            heads.append(HeadParams(w1, ep1, gp, w2, ep2, frac_d, s_a, s_l))
        frac_i = _pow2_frac(_amax(mid["u"]), qmax, 0, SOFTMAX_IN_FRAC)
        imp = mod.importance
        wi, epi = _linear_int(cfg, imp.weight.numpy().T, imp.bias.numpy(), x_scale,
                              2.0 ** -frac_i)
    sm = quantize_multiplier(2.0 ** (SOFTMAX_IN_FRAC - frac_i), cfg.mult_width, cfg.max_shift)
    return SelectorParams(module.dim, module.heads, module.hidden, float(x_scale),
                          tuple(heads), wi, epi, frac_i, sm)


# -- integer head ---------------------------------------------------------------------------


def combine_heads(imp, keep) -> np.ndarray:
    """``min(round_shift(sum_h imp[:, h] * keep[:, h], 8), 255)``: the keep probability.

    ``imp`` and ``keep`` are ``n x H`` unsigned 8-bit (scale ``2**-8``); the products are exact
    (16 bits, scale ``2**-16``), their sum is rounded once to the scale ``2**-8``. With one
    head the importance saturates to 255 (1.0), so ``p`` is ``keep * 255 / 256`` rounded, at
    most one LSB below ``keep``.
    """
    imp = check_int_array("imp", imp, PROB_BITS, signed=False)
    keep = check_int_array("keep", keep, PROB_BITS, signed=False, shape=imp.shape)
    if imp.ndim != 2:
        raise ValueError(f"imp must have shape (n, heads), not {imp.shape}")
    acc = (imp * keep).sum(axis=1)
    return saturate(round_shift(acc, PROB_BITS), PROB_BITS, signed=False)


def selector_int(x, params: SelectorParams, cfg: AccelConfig | None = None, *,
                 intermediates: bool = False):
    """Keep probabilities (uint8, scale ``2**-8``) of the ``N - 1`` non-CLS tokens of ``x``.

    ``x`` is ``N x D`` signed ``act_width`` integers with the scale ``params.x_scale``. With
    ``intermediates=True`` also returns a dict with the per-head ``a``, ``l``, ``g``, ``d`` (lists)
    and the arrays ``keep`` (``n x H``), ``u`` (int8), ``u16`` and ``imp`` (``n x H``).
    """
    cfg = cfg if cfg is not None else AccelConfig()
    x = check_int_array("x", x, cfg.act_width)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != params.dim:
        raise ValueError(f"x must have shape (N >= 1, {params.dim}), not {x.shape}")
    if x.shape[0] > cfg.max_tokens:
        raise ValueError(f"N must be in the range [1, {cfg.max_tokens}], not {x.shape[0]}")
    n = x.shape[0] - 1
    if n == 0:
        empty = np.zeros(0, np.int64)
        return (empty, {}) if intermediates else empty
    t = x[1:]
    dh = params.head_dim
    mid = {"a": [], "l": [], "g": [], "d": []}
    keep = np.zeros((n, params.heads), np.int64)
    for h, hp in enumerate(params.head):
        a = gemm(cfg, t[:, h * dh:(h + 1) * dh], hp.w1, hp.ep1)
        loc = gelu_int(a, hp.gelu, cfg.act_width)
        g, _ = merge_package(loc, np.ones(n, np.int64), act_width=cfg.act_width,
                             mult_width=cfg.mult_width)
        z = np.concatenate([loc, np.broadcast_to(g, loc.shape)], axis=1)
        d = gemm(cfg, z, hp.w2, hp.ep2)[:, 0]
        keep[:, h] = sigmoid_int(d, hp.frac_d, in_bits=cfg.act_width)
        for key, val in (("a", a), ("l", loc), ("g", g), ("d", d)):
            mid[key].append(val)
    u = gemm(cfg, t, params.wi, params.epi)
    mult, shift = params.softmax_shift
    u16 = requantize(u, mult, shift, SOFTMAX_IN_BITS)
    imp = softmax_int(u16)
    p = combine_heads(imp, keep)
    if intermediates:
        mid.update(keep=keep, u=u, u16=u16, imp=imp)
        return p, mid
    return p


# -- decision -------------------------------------------------------------------------------


def _check_count(name, value, hi):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not 0 <= value <= hi:
        raise ValueError(f"{name} must be in the range [0, {hi}], not {value}")


def keep_bounds(n: int, min_keep: int, max_keep: int | None, max_tokens: int) -> tuple[int, int]:
    """Validate the keep bounds and limit them to the ``n`` scored tokens.

    ``0 <= min_keep <= max_keep <= max_tokens - 1``; ``max_keep=None`` means no upper bound.
    Returns ``(min(min_keep, n), min(max_keep, n))``.
    """
    hi = max(max_tokens - 1, 0)
    _check_count("min_keep", min_keep, hi)
    if max_keep is None:
        max_keep = hi
    _check_count("max_keep", max_keep, hi)
    if min_keep > max_keep:
        raise ValueError(f"min_keep must be in the range [0, max_keep = {max_keep}] "
                         f"(min_keep <= max_keep), not {min_keep}")
    return min(int(min_keep), n), min(int(max_keep), n)


def select_learned(x, probs, *, threshold: int = DEFAULT_THRESHOLD, min_keep: int = 1,
                   max_keep: int | None = None, cfg: AccelConfig | None = None,
                   prev_package=None, prev_weight: int = 0) -> TokenPruneResult:
    """Keep the tokens of ``x`` whose keep probability reaches ``threshold``, within bounds.

    Parameters
    ----------
    x : int array, ``N x D``
        Tokens (signed ``act_width``), row 0 is CLS. A previous package token is *not* part of
        ``x``: pass it as ``prev_package``.
    probs : int array, ``N - 1``
        Keep probabilities of the non-CLS tokens (unsigned 8-bit, scale ``2**-8``).
    threshold : int
        Keep if ``p >= threshold``; in ``[0, 256]`` (units of ``2**-8``; 128 is 0.5, 0 keeps
        every token, 256 none before the bounds apply).
    min_keep, max_keep : int
        Bounds on the number of kept non-CLS tokens, ``0 <= min_keep <= max_keep <=
        max_tokens - 1``; limited to ``N - 1``. ``max_keep=None``: no upper bound.
    prev_package : int array, ``D``, optional
        A package token of an earlier stage, re-merged with weight ``prev_weight``.

    Returns
    -------
    TokenPruneResult
        ``out`` = [CLS, kept rows ascending, package token if any row is pruned or
        ``prev_package`` is given]; ``scores`` = ``probs``; ``k``; ``kept`` (row indices of
        ``x``, 0 first); ``mask`` over the non-CLS tokens; ``package_weight`` (total weight of
        the package token, for the next re-merge; 0 if none).
    """
    cfg = cfg if cfg is not None else AccelConfig()
    x = check_int_array("x", x, cfg.act_width)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (N >= 1, D), not {x.shape}")
    if x.shape[0] > cfg.max_tokens:
        raise ValueError(f"N must be in the range [1, {cfg.max_tokens}], not {x.shape[0]}")
    n = x.shape[0] - 1
    p = check_int_array("probs", probs, PROB_BITS, signed=False, shape=(n,))
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)):
        raise TypeError(f"threshold must be an integer, not {threshold!r}")
    if not 0 <= threshold <= 1 << PROB_BITS:
        raise ValueError(f"threshold must be in the range [0, {1 << PROB_BITS}], not {threshold}")
    lo, hi = keep_bounds(n, min_keep, max_keep, cfg.max_tokens)
    if prev_package is not None:
        prev_package = check_int_array("prev_package", prev_package, cfg.act_width,
                                       shape=(x.shape[1],))
    if isinstance(prev_weight, bool) or not isinstance(prev_weight, (int, np.integer)) \
            or prev_weight < 0:
        raise ValueError(f"prev_weight must be a non-negative integer, not {prev_weight!r}")
    if prev_package is None and prev_weight:
        raise ValueError(f"prev_weight must be 0 without prev_package, not {prev_weight}")

    count = int((p >= threshold).sum())
    k = min(max(count, lo), hi)
    if k == 0:
        mask = np.zeros(n, dtype=bool)
    else:
        _, mask = topk_select(p, k, PROB_BITS)
    rows = [x[:1], x[1:][mask]]
    weight = 0
    if not mask.all():
        pkg, weight = merge_package(x[1:][~mask], p[~mask], prev=prev_package,
                                    prev_weight=int(prev_weight), act_width=cfg.act_width,
                                    mult_width=cfg.mult_width, weight_bits=PROB_BITS)
        rows.append(pkg[None, :])
    elif prev_package is not None:
        rows.append(prev_package[None, :])
        weight = int(prev_weight)
    kept = np.concatenate([[0], np.flatnonzero(mask) + 1]).astype(np.int64)
    return TokenPruneResult(np.concatenate(rows), p, k, kept, mask, weight)


def prune_tokens_learned(x, selector_params: SelectorParams, *,
                         threshold: int = DEFAULT_THRESHOLD, min_keep: int = 1,
                         max_keep: int | None = None, cfg: AccelConfig | None = None,
                         prev_package=None, prev_weight: int = 0) -> TokenPruneResult:
    """Learned token pruning of ``x`` (``N x D`` int8): :func:`selector_int` then
    :func:`select_learned` (the counterpart of ``prune_tokens_attention``)."""
    cfg = cfg if cfg is not None else AccelConfig()
    probs = selector_int(x, selector_params, cfg)
    return select_learned(x, probs, threshold=threshold, min_keep=min_keep, max_keep=max_keep,
                          cfg=cfg, prev_package=prev_package, prev_weight=prev_weight)
