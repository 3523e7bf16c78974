"""Golden model of dynamic token pruning: token scores, top-k selection, package token.

Attention-score selection (EViT; the FCCM'24 static+dynamic pruning work)
-------------------------------------------------------------------------
The input is the activation matrix ``x`` (``N`` tokens x ``D`` channels, int8, token 0 is CLS)
and the CLS row of the attention probabilities of every head, ``cls_probs`` (``H x N``,
unsigned ``prob_bits`` = 8-bit, scale ``2**-8``: the softmax unit's output format).

1. **Score** (:func:`cls_scores`). The published score is the head-mean of the CLS row over the
   non-CLS tokens. In hardware it is the head *sum* (the mean times ``H``, which ranks the same),
   saturated to the selector's ``score_width`` bits (``AccelConfig.score_width``)::

       raw_i   = sum_h cls_probs[h, i + 1]                      (i = 0 .. N - 2)
       shift   = max(0, prob_bits - score_width)
       score_i = min(round_shift(raw_i, shift), 2**score_width - 1)

   Saturating rather than shifting the sum keeps the full resolution of the *small* scores,
   where the keep/prune boundary lies (197 tokens share a probability mass of 1 per head, so
   most 8-bit probabilities are a few LSBs); only tokens whose head-sum reaches about one full
   probability saturate, and those are kept unless ``k`` is smaller than their number (at most
   ``H`` of them can exceed ``1/H`` in every head). Saturation and rounding turn nearly equal
   scores into ties, which the deterministic tie-break resolves (lower index wins).
2. **Selection** (:func:`keep_count`, :func:`golden.topk.topk_select`): keep
   ``k = ceil(keep_rate * (N - 1))`` tokens, CLS always kept, original order preserved.
3. **Fusion** (:func:`merge_package`): the pruned tokens are fused into one *package token*,
   their score-weighted average (weights = their scores), appended as the last row. When no
   token is pruned (``k = N - 1``) no package token is appended.

The output is ``[CLS, kept tokens in ascending order, package token]``.

Package token arithmetic
------------------------
For rows ``x_j`` with unsigned integer weights ``w_j`` (and optionally a previous package token
``p`` with weight ``w_p``, so that a later stage can re-merge it)::

    acc[c] = sum_j w_j * x_j[c] (+ w_p * p[c])      (exact integers)
    W      = sum_j w_j (+ w_p)
    L      = bit_length(W);  S = L - 1 + mult_width - 1;  M = floor(2**S / W)
    pkg[c] = sat(round_shift(acc[c] * M, S), act_width)      (golden.fixedpoint.requantize)

``M / 2**S`` is the reciprocal ``1 / W`` with ``mult_width - 1`` significant bits
(``2**(mult_width-2) <= M <= 2**(mult_width-1)``), computed in hardware by a restoring
divider of ``mult_width`` steps; its truncation can make the result differ from the exactly
rounded quotient by one LSB in rare cases (``tests/test_token_prune.py`` bounds it against a
float reference). ``W = 0`` (every pruned weight zero) gives ``M = 0`` and a zero row. The
function takes arbitrary per-row weights, so a learned selector's keep-score-weighted average
(HeatViT) uses the same arithmetic with its own weights.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from golden.config import AccelConfig
from golden.fixedpoint import check_int_array, requantize, round_shift
from golden.topk import topk_select

__all__ = [
    "PROB_BITS",
    "TokenPruneResult",
    "cls_scores",
    "compact_tokens",
    "keep_count",
    "merge_package",
    "package_reciprocal",
    "prune_tokens_attention",
    "score_shift",
]

#: Width of one softmax probability (unsigned, scale ``2**-PROB_BITS``).
PROB_BITS = 8


def score_shift(heads: int, score_width: int, prob_bits: int = PROB_BITS) -> int:
    """Right shift applied to the head sum before saturation to ``score_width`` bits.

    Non-zero only when a score is narrower than one probability; ``heads`` is accepted for
    symmetry with the hardware parameter and does not change the shift.
    """
    if heads < 1:
        raise ValueError(f"heads must be at least 1, not {heads}")
    return max(0, prob_bits - score_width)


def cls_scores(cls_probs, score_width: int = 8, prob_bits: int = PROB_BITS) -> np.ndarray:
    """Token scores (``N - 1`` of them) from the CLS-row probabilities ``cls_probs`` (H x N)."""
    p = check_int_array("cls_probs", cls_probs, prob_bits, signed=False)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"cls_probs must have shape (heads >= 1, N >= 2), not {p.shape}")
    raw = p[:, 1:].sum(axis=0)
    shift = score_shift(p.shape[0], score_width, prob_bits)
    return np.minimum(round_shift(raw, shift), (1 << score_width) - 1)


def keep_count(n_tokens: int, keep_rate: float) -> int:
    """``k = ceil(keep_rate * (n_tokens - 1))`` non-CLS tokens to keep.

    The product is rounded to 9 decimal places before the ceiling so that binary
    floating-point error (``0.7 * 10 = 7.000000000000001``) does not add a token.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)):
        raise TypeError(f"n_tokens must be an integer, not {n_tokens!r}")
    if n_tokens < 2:
        raise ValueError(f"n_tokens must be at least 2 (CLS and one token), not {n_tokens}")
    if not (isinstance(keep_rate, (int, float)) and 0 < keep_rate <= 1):
        raise ValueError(f"keep_rate must be in the range (0, 1], not {keep_rate!r}")
    return max(1, math.ceil(round(keep_rate * (n_tokens - 1), 9)))


def package_reciprocal(total_weight: int, mult_width: int = 16) -> tuple[int, int]:
    """``(M, S)`` with ``M / 2**S ~= 1 / total_weight`` (``M = 0`` for a zero weight)."""
    if isinstance(total_weight, bool) or not isinstance(total_weight, (int, np.integer)):
        raise TypeError(f"total_weight must be an integer, not {total_weight!r}")
    if total_weight < 0:
        raise ValueError(f"total_weight must be non-negative, not {total_weight}")
    if mult_width < 2:
        raise ValueError(f"mult_width must be at least 2, not {mult_width}")
    total_weight = int(total_weight)
    if total_weight == 0:
        return 0, 0
    shift = total_weight.bit_length() - 1 + mult_width - 1
    return (1 << shift) // total_weight, shift


def merge_package(rows, weights, *, prev=None, prev_weight: int = 0, act_width: int = 8,
                  mult_width: int = 16, weight_bits: int = 16) -> tuple[np.ndarray, int]:
    """Fuse ``rows`` (``m x D``) into one row, their ``weights``-weighted average.

    ``prev`` (a previous package token) joins the average with weight ``prev_weight``.
    Returns ``(row, total_weight)``; ``total_weight`` is the weight to re-merge the row with.
    """
    x = check_int_array("rows", rows, act_width)
    if x.ndim != 2:
        raise ValueError(f"rows must be two-dimensional (m x D), not shape {x.shape}")
    w = check_int_array("weights", weights, weight_bits, signed=False, shape=(x.shape[0],))
    acc = (w[:, None] * x).sum(axis=0)
    total = int(w.sum())
    if prev is not None:
        p = check_int_array("prev", prev, act_width, shape=(x.shape[1],))
        if isinstance(prev_weight, bool) or not isinstance(prev_weight, (int, np.integer)) \
                or prev_weight < 0:
            raise ValueError(f"prev_weight must be a non-negative integer, not {prev_weight!r}")
        acc = acc + int(prev_weight) * p
        total += int(prev_weight)
    mult, shift = package_reciprocal(total, mult_width)
    return requantize(acc, mult, shift, act_width), total


class TokenPruneResult(NamedTuple):
    """Output of :func:`prune_tokens_attention`."""
    out: np.ndarray           #: rows: CLS, kept tokens (ascending), package token if any
    scores: np.ndarray        #: the N - 1 token scores the selector ranked
    k: int                    #: number of non-CLS tokens kept
    kept: np.ndarray          #: indices into ``x`` of the kept rows (0 = CLS first)
    mask: np.ndarray          #: keep mask over the N - 1 non-CLS tokens
    package_weight: int       #: total weight of the package token (0 if none)


def prune_tokens_attention(x, cls_probs, keep_rate: float | None = None, cfg: AccelConfig = None,
                           *, k: int | None = None) -> TokenPruneResult:
    """Attention-score token pruning of ``x`` (N x D int8) given CLS-row probabilities.

    Give either ``keep_rate`` (``k = keep_count(N, keep_rate)``) or ``k`` directly.
    """
    cfg = cfg if cfg is not None else AccelConfig()
    x = check_int_array("x", x, cfg.act_width)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must have shape (N >= 2, D), not {x.shape}")
    n_tokens = x.shape[0]
    if n_tokens > cfg.max_tokens:
        raise ValueError(f"N must be in the range [2, {cfg.max_tokens}], not {n_tokens}")
    probs = check_int_array("cls_probs", cls_probs, PROB_BITS, signed=False)
    if probs.ndim != 2 or probs.shape[1] != n_tokens:
        raise ValueError(f"cls_probs must have shape (heads, {n_tokens}), not {probs.shape}")
    if (keep_rate is None) == (k is None):
        raise ValueError("give exactly one of keep_rate and k")
    if k is None:
        k = keep_count(n_tokens, keep_rate)
    scores = cls_scores(probs, cfg.score_width)
    idx, mask = topk_select(scores, k, cfg.score_width)
    out, weight = compact_tokens(x, mask, scores, cfg)
    kept = np.concatenate([[0], idx + 1]).astype(np.int64)
    return TokenPruneResult(out, scores, k, kept, mask, weight)


def compact_tokens(x, mask, weights, cfg: AccelConfig = None) -> tuple[np.ndarray, int]:
    """Gather CLS and the kept rows of ``x``; fuse the pruned rows into a package token.

    ``mask`` and ``weights`` cover the ``N - 1`` non-CLS rows. Returns ``(rows, weight)``:
    ``rows`` is CLS, the kept rows in order and, if any row is pruned, the package token
    (:func:`merge_package` with the pruned rows' weights); ``weight`` is its total weight.
    """
    cfg = cfg if cfg is not None else AccelConfig()
    x = check_int_array("x", x, cfg.act_width)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must have shape (N >= 2, D), not {x.shape}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (x.shape[0] - 1,):
        raise ValueError(f"mask must have shape ({x.shape[0] - 1},), not {mask.shape}")
    w = check_int_array("weights", weights, cfg.score_width, signed=False,
                        shape=(x.shape[0] - 1,))
    rows = [x[:1], x[1:][mask]]
    weight = 0
    if not mask.all():
        pkg, weight = merge_package(x[1:][~mask], w[~mask], act_width=cfg.act_width,
                                    mult_width=cfg.mult_width, weight_bits=cfg.score_width)
        rows.append(pkg[None, :])
    return np.concatenate(rows), weight
