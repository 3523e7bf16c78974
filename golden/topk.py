"""Golden model of exact top-k selection with a deterministic tie-break.

Given ``n`` unsigned integer scores and a count ``k``, :func:`topk_select` keeps the ``k``
largest scores. Among equal scores the **lower index wins**, so the selection is unique and
independent of any sorting algorithm's stability. The kept indices are returned in ascending
(original) order together with a boolean keep mask.

The selection is specified through a threshold, which is also how the hardware computes it
(``rtl/topk.py``): let ``T`` be the largest value such that at least ``k`` scores are ``>= T``,
and ``above`` the number of scores ``> T``. Every score ``> T`` is kept, and of the scores equal
to ``T`` the first ``k - above`` in index order are kept. This is the same set as a stable sort
by descending score truncated to ``k`` (checked in ``tests/test_topk.py``).

Valid run-time inputs are ``1 <= k <= n``; ``k = 0``, ``k > n`` and ``n = 0`` raise
``ValueError`` (the RTL unit raises its ``error`` output for the same inputs).
"""

from __future__ import annotations

import numpy as np

from golden.fixedpoint import check_int_array

__all__ = ["check_topk_args", "topk_select", "topk_threshold"]


def check_topk_args(n: int, k: int, max_tokens: int | None = None) -> None:
    """Raise ``ValueError`` unless ``1 <= n <= max_tokens`` and ``1 <= k <= n``."""
    hi = max_tokens if max_tokens is not None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer, not {n!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, not {k!r}")
    if max_tokens is not None and not 1 <= n <= max_tokens:
        raise ValueError(f"n must be in the range [1, {max_tokens}], not {n}")
    if n < 1:
        raise ValueError(f"n must be in the range [1, {max(hi, 1)}], not {n}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in the range [1, {n}] (1 <= k <= n), not {k}")


def topk_threshold(scores, k: int, score_width: int = 8) -> tuple[int, int]:
    """Return ``(T, ties)``: the threshold score and how many scores equal to it are kept.

    ``T`` is the largest value with ``count(scores >= T) >= k``; ``ties = k - count(scores > T)``
    (``1 <= ties <= count(scores == T)``).
    """
    s = check_int_array("scores", scores, score_width, signed=False)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, not shape {s.shape}")
    check_topk_args(len(s), k)
    hist = np.bincount(s, minlength=1 << score_width)
    above = 0
    for t in range((1 << score_width) - 1, -1, -1):
        if above + hist[t] >= k:
            return t, k - above
        above += int(hist[t])
    raise AssertionError("unreachable: k <= n")


def topk_select(scores, k: int, score_width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of unsigned ``score_width``-bit ``scores``; ties go to the lower index.

    Returns
    -------
    indices : ndarray of int64, shape (k,)
        Kept indices in ascending order.
    mask : ndarray of bool, shape (n,)
        ``mask[i]`` is true if score ``i`` is kept.
    """
    s = check_int_array("scores", scores, score_width, signed=False)
    t, ties = topk_threshold(s, k, score_width)
    tie_pos = np.flatnonzero(s == t)[:ties]
    mask = s > t
    mask[tie_pos] = True
    return np.flatnonzero(mask).astype(np.int64), mask
