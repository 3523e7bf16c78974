"""Static weight sparsity: block pruning, hierarchical pruning and whole-neuron pruning.

All functions take a PyTorch-style weight matrix ``W[out, in]`` (a NumPy array or a CPU tensor,
integer or float) and return NumPy arrays. On the GEMM engine the weight is ``B = W^T``: ``K = in``
(one ``k`` per cycle) and ``N = out`` (``cols`` output channels per output tile).

**Blocks.** ``W`` is cut into ``b_r x b_c`` blocks: ``b_r`` output channels (a *block-row* is a
group of ``b_r`` rows of ``W``) by ``b_c`` input channels (a *block-column*, i.e. ``b_c``
consecutive ``k`` steps). When ``out`` or ``in`` is not a multiple of the block, the last
block-row / block-column is a partial block, treated as if padded with zeros. The default block
is tied to the array (:func:`default_block`): ``b_r = cols`` so that a block-row is one output
tile, and ``b_c = rows``.

**Importance** is the L2 norm (compared as the exact sum of squares: int64 for integer weights,
float64 otherwise). Selection is deterministic: equal scores are broken by position, lower
block-row first, then lower block-column (then lower ``k`` for columns, lower index for neurons).

**Block pruning** (:func:`block_prune`) keeps the blocks of largest norm. *Balanced* mode keeps
the same number of blocks in every block-row, ``max(1, round(density * n_block_cols))`` (round
half up), so every output tile iterates the same number of ``k`` steps: this is what balances
the load. *Unbalanced* mode keeps the ``max(1, round(density * n_blocks))`` largest blocks of the
whole matrix; block-rows then differ (possibly keeping none). ``density`` counts blocks.

**Hierarchical pruning** (:func:`hierarchical_prune`) is the project's two-level scheme: block
pruning at ``block_density`` (default ``sqrt(density)``), then inside every kept block only a
subset of its ``b_c`` input columns (``k`` indices) is kept, ranked by the L2 norm of the
column's ``b_r`` weights, at ``column_density = density / achieved block density`` (so that
the column level makes up for the rounding of the block count). A removed column is a skipped cycle
of the output-stationary array, so
the finer level saves time as well as storage. (An N:M pattern along ``k`` would save storage
but no cycles on this array, because every ``k`` step still feeds all the tile's output
channels; N:M along the output channels cannot be skipped either. Column masks are therefore
the pattern.) Balanced mode keeps ``max(1, round(column_density * b_c))`` columns in every kept
block (a partial last block-column keeps at most its real columns); unbalanced mode keeps the
globally best columns of all kept blocks, and a block left without columns is dropped.

**Neuron pruning** (:func:`neuron_prune`) removes whole hidden neurons of an MLP: rows of FC1
(and its bias) and the matching columns of FC2, giving physically smaller dense matrices.

The outcome of block/hierarchical pruning is a :class:`BlockPattern`, which
:mod:`golden.sparse_format` encodes, decodes and schedules onto the array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import AccelConfig

__all__ = [
    "MAX_BLOCK",
    "BlockPattern",
    "NeuronPruning",
    "block_prune",
    "block_scores",
    "check_block",
    "check_density",
    "default_block",
    "hierarchical_prune",
    "neuron_prune",
]

#: Largest block side accepted (the compressed format stores block sides as u16).
MAX_BLOCK = 1024


def default_block(cfg: AccelConfig) -> tuple[int, int]:
    """Block shape ``(b_r, b_c)`` of ``cfg``: ``(cols, rows)`` when ``cfg.sparse_block`` is 0,
    else the square ``(sparse_block, sparse_block)``."""
    if cfg.sparse_block:
        return cfg.sparse_block, cfg.sparse_block
    return cfg.cols, cfg.rows


def check_block(block) -> tuple[int, int]:
    """Normalise ``block`` (an int for square blocks, or ``(b_r, b_c)``) and validate it."""
    if isinstance(block, (tuple, list)):
        if len(block) != 2:
            raise ValueError(f"block must be an int or a pair (block_rows, block_cols), "
                             f"not {block!r}")
        pair = tuple(block)
    else:
        pair = (block, block)
    for name, value in zip(("block_rows", "block_cols"), pair):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, not {value!r}")
        if not 1 <= value <= MAX_BLOCK:
            raise ValueError(f"{name} must be in the range [1, {MAX_BLOCK}], not {value}")
    return int(pair[0]), int(pair[1])


def check_density(density, name: str = "density") -> float:
    """Validate a density in ``(0, 1]``."""
    if isinstance(density, bool) or not isinstance(density, (int, float, np.floating,
                                                               np.integer)):
        raise TypeError(f"{name} must be a number, not {density!r}")
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"{name} must be in the range (0, 1], not {density}")
    return density


def _round_count(x: float) -> int:
    """Round half up, absorbing float noise such as ``0.35 * 20 = 7.000000000000001``."""
    return math.floor(round(x, 9) + 0.5)


def _as_matrix(w, name: str = "w") -> np.ndarray:
    arr = np.asarray(w.detach().cpu().numpy() if hasattr(w, "detach") else w)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix [out, in], not {arr.ndim}-D")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must not be empty, shape is {arr.shape}")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must hold integers or floats, not dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or infinity)")
    return arr.astype(np.float64)


def _pad(w: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    (n, k), (br, bc) = w.shape, block
    return np.pad(w, ((0, -n % br), (0, -k % bc)))


def _squares(w: np.ndarray) -> np.ndarray:
    return w * w


def block_scores(w, block) -> np.ndarray:
    """Squared L2 norm of every (zero-padded) block: an array ``[n_block_rows, n_block_cols]``
    (int64 for integer weights, float64 for float weights)."""
    w = _as_matrix(w)
    br, bc = check_block(block)
    p = _squares(_pad(w, (br, bc)))
    return p.reshape(p.shape[0] // br, br, p.shape[1] // bc, bc).sum(axis=(1, 3))


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices (into the flattened array) of the ``count`` largest scores, ties to lower index."""
    order = np.argsort(-scores.ravel(), kind="stable")
    return order[:count]


@dataclass(frozen=True, eq=False)
class BlockPattern:
    """Which blocks (and, for hierarchical pruning, which columns of them) of ``W`` are kept.

    Parameters
    ----------
    shape : (int, int)
        ``(out_features, in_features)`` of ``W``.
    block : (int, int)
        ``(b_r, b_c)``.
    blocks : bool array [n_block_rows, n_block_cols]
        Kept blocks.
    columns : bool array [n_block_rows, n_block_cols, b_c] or None
        Hierarchical patterns only: ``columns[r, c, j]`` keeps input channel ``c * b_c + j`` of
        block ``(r, c)``. Must be False outside kept blocks and past ``in_features``, and every
        kept block keeps at least one column. ``None``: every real column of a kept block.
    """

    shape: tuple
    block: tuple
    blocks: np.ndarray
    columns: np.ndarray | None = None

    def __post_init__(self):
        n, k = (int(v) for v in self.shape)
        if n < 1 or k < 1:
            raise ValueError(f"shape must be positive, not {self.shape}")
        br, bc = check_block(self.block)
        object.__setattr__(self, "shape", (n, k))
        object.__setattr__(self, "block", (br, bc))
        nbr, nbc = -(-n // br), -(-k // bc)
        blocks = np.asarray(self.blocks, dtype=bool)
        if blocks.shape != (nbr, nbc):
            raise ValueError(f"blocks must have shape {(nbr, nbc)}, not {blocks.shape}")
        blocks = blocks.copy()
        blocks.flags.writeable = False
        object.__setattr__(self, "blocks", blocks)
        if self.columns is not None:
            cols = np.asarray(self.columns, dtype=bool).copy()
            if cols.shape != (nbr, nbc, bc):
                raise ValueError(f"columns must have shape {(nbr, nbc, bc)}, not {cols.shape}")
            if np.any(cols & ~blocks[:, :, None]):
                raise ValueError("columns keeps columns of a pruned block")
            if np.any(cols & ~self._valid_columns()):
                raise ValueError(f"columns keeps columns past in_features = {k}")
            if np.any(blocks & ~cols.any(axis=2)):
                raise ValueError("columns keeps no column of a kept block")
            cols.flags.writeable = False
            object.__setattr__(self, "columns", cols)

    # -- shape ----------------------------------------------------------------------------

    @property
    def n_block_rows(self) -> int:
        return self.blocks.shape[0]

    @property
    def n_block_cols(self) -> int:
        return self.blocks.shape[1]

    @property
    def hierarchical(self) -> bool:
        return self.columns is not None

    def _valid_columns(self) -> np.ndarray:
        """bool [1, n_block_cols, b_c]: column ``j`` of block-column ``c`` is a real input."""
        bc = self.block[1]
        k = np.arange(self.n_block_cols)[:, None] * bc + np.arange(bc)[None, :]
        return (k < self.shape[1])[None]

    def column_mask(self) -> np.ndarray:
        """bool [n_block_rows, n_block_cols, b_c]: kept real columns of every block."""
        if self.columns is not None:
            return self.columns
        return self.blocks[:, :, None] & self._valid_columns()

    # -- statistics -----------------------------------------------------------------------

    def kept_blocks_per_row(self) -> np.ndarray:
        return self.blocks.sum(axis=1)

    def kept_columns_per_row(self) -> np.ndarray:
        """Kept ``k`` steps of every block-row (the cycles of its output tile per M-tile)."""
        return self.column_mask().sum(axis=(1, 2))

    @property
    def kept_blocks(self) -> int:
        return int(self.blocks.sum())

    @property
    def block_density(self) -> float:
        return self.kept_blocks / self.blocks.size

    def element_mask(self) -> np.ndarray:
        """bool [out, in]: the kept weights."""
        br = self.block[0]
        cols = self.column_mask()  # [nbr, nbc, bc]
        full = np.repeat(cols.reshape(self.n_block_rows, -1), br, axis=0)
        return np.ascontiguousarray(full[:self.shape[0], :self.shape[1]])

    @property
    def kept_weights(self) -> int:
        return int(self.element_mask().sum())

    @property
    def density(self) -> float:
        """Kept weights / all weights."""
        return self.kept_weights / (self.shape[0] * self.shape[1])

    def imbalance(self) -> float:
        """max / mean kept blocks per block-row (1.0 when balanced; 1.0 if nothing is kept)."""
        per_row = self.kept_blocks_per_row()
        mean = per_row.mean()
        return float(per_row.max() / mean) if mean else 1.0

    def row_k_indices(self, r: int) -> np.ndarray:
        """Sorted input channels ``k`` kept in block-row ``r``."""
        return np.flatnonzero(self.column_mask()[r].ravel())

    # -- use ------------------------------------------------------------------------------

    def apply(self, w) -> np.ndarray:
        """``w`` with the pruned weights set to zero (same dtype as the NumPy view of ``w``)."""
        arr = np.asarray(w.detach().cpu().numpy() if hasattr(w, "detach") else w)
        if arr.shape != self.shape:
            raise ValueError(f"w must have shape {self.shape}, not {arr.shape}")
        return np.where(self.element_mask(), arr, np.zeros((), arr.dtype))

    @classmethod
    def dense(cls, shape, block) -> BlockPattern:
        """The pattern keeping every block."""
        br, bc = check_block(block)
        n, k = shape
        return cls(shape, (br, bc), np.ones((-(-n // br), -(-k // bc)), bool))

    def __eq__(self, other):
        if not isinstance(other, BlockPattern):
            return NotImplemented
        return (self.shape == other.shape and self.block == other.block
                and np.array_equal(self.column_mask(), other.column_mask())
                and np.array_equal(self.blocks, other.blocks))

    __hash__ = None

    def __repr__(self):
        kind = "hierarchical" if self.hierarchical else "block"
        return (f"BlockPattern({kind}, shape={self.shape}, block={self.block}, "
                f"kept_blocks={self.kept_blocks}/{self.blocks.size}, "
                f"density={self.density:.4f})")


def _block_mask(scores: np.ndarray, density: float, balanced: bool) -> np.ndarray:
    nbr, nbc = scores.shape
    keep = np.zeros(scores.shape, bool)
    if balanced:
        per_row = min(nbc, max(1, _round_count(density * nbc)))
        for r in range(nbr):
            keep[r, _top(scores[r], per_row)] = True
    else:
        total = min(scores.size, max(1, _round_count(density * scores.size)))
        keep.ravel()[_top(scores, total)] = True
    return keep


def block_prune(w, density, block=(16, 16), balanced: bool = True) -> BlockPattern:
    """Block pruning of ``w[out, in]``: keep the blocks of largest L2 norm.

    Parameters
    ----------
    w : array [out, in]
        Weights (integer or float).
    density : float in (0, 1]
        Fraction of blocks kept. Balanced: ``max(1, round(density * n_block_cols))`` per
        block-row. Unbalanced: ``max(1, round(density * n_blocks))`` in the whole matrix.
    block : int or (int, int)
        ``(b_r, b_c)``; use :func:`default_block` for the array's block.
    balanced : bool
        Same number of kept blocks in every block-row.

    Returns
    -------
    BlockPattern
        Apply it with :meth:`BlockPattern.apply`.
    """
    density = check_density(density)
    block = check_block(block)
    w = _as_matrix(w)
    keep = _block_mask(block_scores(w, block), density, balanced)
    return BlockPattern(w.shape, block, keep)


def hierarchical_prune(w, density, block=(16, 16), balanced: bool = True,
                       block_density=None) -> BlockPattern:
    """Two-level pruning: blocks, then input columns (``k`` steps) inside every kept block.

    Parameters
    ----------
    w : array [out, in]
        Weights (integer or float).
    density : float in (0, 1]
        Target overall density ``block_density * column_density``.
    block : int or (int, int)
        ``(b_r, b_c)``.
    balanced : bool
        Balanced: equal kept blocks per block-row and ``max(1, round(column_density * b_c))``
        kept columns per kept block. Unbalanced: global block selection, then the globally best
        ``max(1, round(column_density * C))`` of the ``C`` real columns of the kept blocks.
    block_density : float in [density, 1], optional
        Density of the block level; default ``sqrt(density)``. ``column_density`` is
        ``density`` divided by the block density actually achieved (after rounding the kept
        block count), at most 1.

    Returns
    -------
    BlockPattern
        With ``columns`` set. The achieved density follows from the roundings above.
    """
    density = check_density(density)
    block_density = math.sqrt(density) if block_density is None else block_density
    block_density = check_density(block_density, "block_density")
    if block_density < density:
        raise ValueError(f"block_density must be in the range [{density}, 1] (at least "
                         f"density), not {block_density}")
    br, bc = block = check_block(block)
    w = _as_matrix(w)
    blocks = _block_mask(block_scores(w, block), block_density, balanced)
    base = BlockPattern(w.shape, block, blocks)
    # The column level makes up for the rounding of the block level.
    col_density = min(1.0, density / base.block_density)
    # Squared norm of every block column segment: [nbr, nbc, bc].
    p = _squares(_pad(w, block))
    seg = p.reshape(base.n_block_rows, br, base.n_block_cols, bc).sum(axis=1)
    candidates = base.column_mask()
    columns = np.zeros_like(candidates)
    if balanced:
        per_block = max(1, _round_count(col_density * bc))
        for r, c in zip(*np.nonzero(blocks)):
            valid = np.flatnonzero(candidates[r, c])
            chosen = valid[_top(seg[r, c, valid], min(per_block, valid.size))]
            columns[r, c, chosen] = True
    else:
        flat = np.flatnonzero(candidates.ravel())
        total = max(1, _round_count(col_density * flat.size))
        columns.ravel()[flat[_top(seg.ravel()[flat], total)]] = True
        blocks = columns.any(axis=2)
    return BlockPattern(w.shape, block, blocks, columns)


@dataclass(frozen=True, eq=False)
class NeuronPruning:
    """Result of :func:`neuron_prune`.

    Members
    -------
    kept : int array
        Kept hidden neurons, ascending.
    fc1_weight : array [len(kept), dim]
    fc1_bias : array [len(kept)] or None
    fc2_weight : array [dim, len(kept)]
    scores : float array [hidden]
        Importance of every hidden neuron.
    """

    kept: np.ndarray
    fc1_weight: np.ndarray
    fc1_bias: np.ndarray | None
    fc2_weight: np.ndarray
    scores: np.ndarray


def neuron_prune(fc1_weight, fc2_weight, density, fc1_bias=None,
                 multiple_of: int = 1) -> NeuronPruning:
    """Whole-neuron pruning of an MLP ``FC2(act(FC1(x)))``.

    Hidden neuron ``j`` is row ``j`` of ``fc1_weight [hidden, dim]`` (and ``fc1_bias[j]``) and
    column ``j`` of ``fc2_weight [dim, hidden]``. Its importance is the product of the L2 norms
    ``||fc1_weight[j, :]|| * ||fc2_weight[:, j]||`` (the magnitude of the path through it). The
    ``max(1, round(density * hidden))`` most important neurons are kept (ties: lower index),
    rounded up to a multiple of ``multiple_of`` (e.g. the array's ``cols``) but never above
    ``hidden``.

    Returns
    -------
    NeuronPruning
        Kept indices (ascending, original order preserved) and the smaller matrices.
    """
    density = check_density(density)
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, (int, np.integer)):
        raise TypeError(f"multiple_of must be an integer, not {multiple_of!r}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be in the range [1, inf), not {multiple_of}")
    w1 = _as_matrix(fc1_weight, "fc1_weight")
    w2 = _as_matrix(fc2_weight, "fc2_weight")
    hidden = w1.shape[0]
    if w2.shape[1] != hidden:
        raise ValueError(f"fc2_weight must have {hidden} columns (fc1_weight has {hidden} "
                         f"rows), not {w2.shape[1]}")
    b1 = None
    if fc1_bias is not None:
        b1 = np.asarray(fc1_bias.detach().cpu().numpy() if hasattr(fc1_bias, "detach")
                        else fc1_bias)
        if b1.shape != (hidden,):
            raise ValueError(f"fc1_bias must have shape ({hidden},), not {b1.shape}")
    scores = (np.sqrt(_squares(w1.astype(np.float64)).sum(axis=1))
              * np.sqrt(_squares(w2.astype(np.float64)).sum(axis=0)))
    count = max(1, _round_count(density * hidden))
    count = min(hidden, -(-count // multiple_of) * multiple_of)
    kept = np.sort(_top(scores, count))
    src1 = np.asarray(fc1_weight.detach().cpu().numpy() if hasattr(fc1_weight, "detach")
                      else fc1_weight)
    src2 = np.asarray(fc2_weight.detach().cpu().numpy() if hasattr(fc2_weight, "detach")
                      else fc2_weight)
    return NeuronPruning(kept, src1[kept], None if b1 is None else b1[kept], src2[:, kept],
                         scores)
