"""Compressed block-sparse weight format: encoder, validating decoder, sizes and array schedule.

The byte-level layout is specified in ``docs/sparse_format.md``; in short (little-endian)::

    header (24 bytes): magic "SVWB", version 1, flags, b_r, b_c, reserved 0,
                       out_features, in_features, total kept blocks
    per block-row r = 0 .. ceil(out / b_r) - 1:
        count                          u16
        count entries: index (u16)  [+ column mask, ceil(b_c / 8) bytes, if hierarchical]
        payload: for each kept block (index order), for each kept column k (ascending, only
                 k < in_features), the b_r int8 weights W[r*b_r + i, k], i = 0 .. b_r-1
                 (rows at or past out_features are zero padding)

The payload order is the order in which the array consumes weights: an output tile of ``cols``
channels iterates its kept ``k`` in ascending order and needs, per ``k``, one word of ``cols``
weights. With ``b_r`` a multiple of ``cols`` (the required case in :class:`AccelConfig`) a
payload column of ``b_r`` bytes is ``b_r / cols`` consecutive words, one per output tile of the
block-row; with ``b_r = cols`` (the default) the payload of block-row ``r`` *is* the weight
stream of output tile ``r``. Columns past ``in_features`` are never stored (they would be
skipped cycles), rows past ``out_features`` are (so that every word has ``cols`` lanes).

Trade-offs: 16-bit indices and counts keep the index stream byte-addressable and small (2 bytes
per kept block of 256 or 1024 weights); interleaving metadata and payload per block-row lets a
decoder work block-row by block-row with one counter and no random access. The hierarchical
variant pays ``ceil(b_c / 8)`` mask bytes per kept block.

:func:`tile_schedule` is the shared contract with the RTL decoder and the performance model: the
``k`` indices each output tile iterates; sparse GEMM cycles (array occupancy) are
``ceil(M / rows) * sum(len(k_list))``.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from .config import AccelConfig
from .fixedpoint import check_int_array
from .pruning import MAX_BLOCK, BlockPattern, block_prune, hierarchical_prune

__all__ = [
    "FLAG_BALANCED",
    "FLAG_HIERARCHICAL",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_WEIGHTS",
    "VERSION",
    "Decoded",
    "compressed_bytes",
    "decode",
    "dense_bytes",
    "dense_cycles",
    "encode",
    "ideal_cycles",
    "kept_macs",
    "mask_bytes",
    "schedule_cycles",
    "schedule_imbalance",
    "schedule_report",
    "size_table",
    "sparse_gemm_acc",
    "tile_schedule",
    "tile_weight_words",
]

MAGIC = b"SVWB"
VERSION = 1
_HEADER = struct.Struct("<4sBBHHHIII")
HEADER_BYTES = _HEADER.size  # 24
#: Column masks follow every index (hierarchical pruning).
FLAG_HIERARCHICAL = 0x01
#: Set if and only if every block-row holds the same number of kept blocks (checked).
FLAG_BALANCED = 0x02
_KNOWN_FLAGS = FLAG_HIERARCHICAL | FLAG_BALANCED
_MAX_FEATURES = (1 << 32) - 1
_MAX_BLOCK_COLS = (1 << 16) - 1
#: Largest matrix the golden decoder materialises (a corrupted header cannot make it allocate
#: more); 30x DeiT-Base's largest layer.
MAX_WEIGHTS = 1 << 26


class Decoded(NamedTuple):
    """Result of :func:`decode`: the dense pruned weights ``[out, in]`` (int64 holding int8
    values, zero where pruned), the pattern, and the header flags."""

    weights: np.ndarray
    pattern: BlockPattern
    flags: int


def mask_bytes(block_cols: int) -> int:
    """Bytes of one column mask: ``ceil(b_c / 8)``."""
    return -(-block_cols // 8)


def _flags(pattern: BlockPattern) -> int:
    counts = pattern.kept_blocks_per_row()
    flags = FLAG_HIERARCHICAL if pattern.hierarchical else 0
    if np.all(counts == counts[0]):
        flags |= FLAG_BALANCED
    return flags


def _check_pattern(pattern: BlockPattern):
    if not isinstance(pattern, BlockPattern):
        raise TypeError(f"pattern must be a BlockPattern, not {type(pattern).__name__}")
    n, k = pattern.shape
    if n > _MAX_FEATURES or k > _MAX_FEATURES:
        raise ValueError(f"out_features and in_features must be in the range "
                         f"[1, {_MAX_FEATURES}], not {pattern.shape}")
    if pattern.n_block_cols > _MAX_BLOCK_COLS:
        raise ValueError(f"the number of block-columns must be in the range "
                         f"[1, {_MAX_BLOCK_COLS}], not {pattern.n_block_cols}")


def encode(w, pattern: BlockPattern) -> bytes:
    """Encode the kept blocks of the int8 matrix ``w[out, in]`` under ``pattern``.

    Pruned weights of ``w`` are dropped: ``decode(encode(w, p)).weights == p.apply(w)``.
    """
    _check_pattern(pattern)
    w = check_int_array("w", w, 8, shape=pattern.shape)
    (n, k), (br, bc) = pattern.shape, pattern.block
    hier = pattern.hierarchical
    cmask = pattern.column_mask()
    wp = np.pad(w, ((0, -n % br), (0, -k % bc)))
    out = bytearray(_HEADER.pack(MAGIC, VERSION, _flags(pattern), br, bc, 0, n, k,
                                 pattern.kept_blocks))
    mb = mask_bytes(bc)
    for r in range(pattern.n_block_rows):
        kept = np.flatnonzero(pattern.blocks[r])
        out += struct.pack("<H", kept.size)
        for c in kept:
            out += struct.pack("<H", int(c))
            if hier:
                bits = np.packbits(cmask[r, c], bitorder="little")
                out += bits.tobytes().ljust(mb, b"\0")
        rows = wp[r * br:(r + 1) * br]
        for c in kept:
            cols = c * bc + np.flatnonzero(cmask[r, c])
            out += rows[:, cols].T.astype(np.int8).tobytes()
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, size: int, what: str) -> bytes:
        left = len(self.data) - self.pos
        if size > left:
            raise ValueError(f"compressed weights: truncated {what}: needs {size} bytes at "
                             f"offset {self.pos}, only {left} left")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk


def decode(data) -> Decoded:
    """Decode and validate a compressed weight stream.

    Raises
    ------
    ValueError
        With a message naming the defect: bad magic, unsupported version, unknown flags, a bad
        header field, a count larger than the number of block-columns, a block-column index out
        of range or not strictly increasing, an empty or out-of-range column mask, a truncated
        index list or payload, nonzero padding, a kept-block count that disagrees with the
        header, a balanced flag that disagrees with the counts, or trailing bytes. A stream
        that decodes is canonical: ``encode(*decode(data)[:2]) == data``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    rd = _Reader(bytes(data))
    magic, version, flags, br, bc, reserved, n, k, total = _HEADER.unpack(
        rd.take(HEADER_BYTES, "header"))
    if magic != MAGIC:
        raise ValueError(f"compressed weights: bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"compressed weights: unsupported version {version}, "
                         f"expected {VERSION}")
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"compressed weights: unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x}")
    if reserved:
        raise ValueError(f"compressed weights: reserved header field must be 0, not {reserved}")
    for name, value in (("block_rows", br), ("block_cols", bc)):
        if not 1 <= value <= MAX_BLOCK:
            raise ValueError(f"compressed weights: {name} must be in the range "
                             f"[1, {MAX_BLOCK}], not {value}")
    for name, value in (("out_features", n), ("in_features", k)):
        if value < 1:
            raise ValueError(f"compressed weights: {name} must be at least 1, not {value}")
    nbr, nbc = -(-n // br), -(-k // bc)
    if nbc > _MAX_BLOCK_COLS:
        raise ValueError(f"compressed weights: {nbc} block-columns exceed {_MAX_BLOCK_COLS}")
    if n * k > MAX_WEIGHTS:
        raise ValueError(f"compressed weights: out_features x in_features = {n} x {k} exceeds "
                         f"{MAX_WEIGHTS} weights")
    if len(rd.data) < HEADER_BYTES + 2 * nbr:
        raise ValueError(f"compressed weights: truncated stream: {nbr} block-rows need at least "
                         f"{HEADER_BYTES + 2 * nbr} bytes, the stream has {len(rd.data)}")
    hier = bool(flags & FLAG_HIERARCHICAL)
    mb = mask_bytes(bc)
    entry = 2 + (mb if hier else 0)
    valid = (np.arange(nbc)[:, None] * bc + np.arange(bc)[None, :]) < k  # [nbc, bc]
    blocks = np.zeros((nbr, nbc), bool)
    columns = np.zeros((nbr, nbc, bc), bool)
    weights = np.zeros((nbr * br, nbc * bc), np.int64)
    seen = 0
    for r in range(nbr):
        (count,) = struct.unpack("<H", rd.take(2, f"count of block-row {r}"))
        if count > nbc:
            raise ValueError(f"compressed weights: block-row {r}: count {count} larger than "
                             f"the number of block-columns {nbc}")
        if seen + count > total:
            raise ValueError(f"compressed weights: count mismatch: block-rows 0..{r} hold "
                             f"{seen + count} kept blocks, the header says {total}")
        seen += count
        meta = rd.take(count * entry, f"index list of block-row {r}")
        prev = -1
        for i in range(count):
            (c,) = struct.unpack_from("<H", meta, i * entry)
            if c >= nbc:
                raise ValueError(f"compressed weights: block-row {r}: block-column index {c} "
                                 f"out of range [0, {nbc})")
            if c <= prev:
                raise ValueError(f"compressed weights: block-row {r}: block-column indices "
                                 f"not strictly increasing ({c} after {prev})")
            prev = c
            blocks[r, c] = True
            if hier:
                raw = np.frombuffer(meta, np.uint8, mb, i * entry + 2)
                bits = np.unpackbits(raw, bitorder="little").astype(bool)
                if bits[bc:].any():
                    raise ValueError(f"compressed weights: block ({r}, {c}): column mask sets "
                                     f"unused bits past block_cols = {bc}")
                bits = bits[:bc]
                if not bits.any():
                    raise ValueError(f"compressed weights: block ({r}, {c}): column mask is "
                                     f"empty")
                if (bits & ~valid[c]).any():
                    raise ValueError(f"compressed weights: block ({r}, {c}): column mask "
                                     f"selects columns past in_features = {k}")
                columns[r, c] = bits
            else:
                columns[r, c] = valid[c]
        for c in np.flatnonzero(blocks[r]):
            ks = c * bc + np.flatnonzero(columns[r, c])
            raw = rd.take(ks.size * br, f"payload of block ({r}, {c})")
            payload = np.frombuffer(raw, np.int8).reshape(ks.size, br).astype(np.int64)
            pad = r * br + np.arange(br) >= n
            if payload[:, pad].any():
                raise ValueError(f"compressed weights: block ({r}, {c}): nonzero padding in "
                                 f"rows past out_features = {n}")
            weights[r * br:(r + 1) * br, ks] = payload.T
    if seen != total:
        raise ValueError(f"compressed weights: count mismatch: block-rows hold {seen} kept "
                         f"blocks, the header says {total}")
    if rd.pos != len(rd.data):
        raise ValueError(f"compressed weights: {len(rd.data) - rd.pos} trailing bytes after "
                         f"the last block-row")
    counts = blocks.sum(axis=1)
    even = bool(np.all(counts == counts[0]))
    if bool(flags & FLAG_BALANCED) != even:
        raise ValueError(f"compressed weights: balanced flag is {int(not even)} but block-rows "
                         f"keep between {counts.min()} and {counts.max()} blocks")
    pattern = BlockPattern((n, k), (br, bc), blocks, columns if hier else None)
    return Decoded(weights[:n, :k], pattern, flags)


def compressed_bytes(pattern: BlockPattern) -> int:
    """Size of :func:`encode`'s output for ``pattern`` (computed without encoding)."""
    br, bc = pattern.block
    meta = 2 + (mask_bytes(bc) if pattern.hierarchical else 0)
    kept_columns = int(pattern.column_mask().sum())
    return (HEADER_BYTES + 2 * pattern.n_block_rows + meta * pattern.kept_blocks
            + br * kept_columns)


def dense_bytes(shape) -> int:
    """Bytes of the dense int8 matrix: ``out * in``."""
    return int(shape[0]) * int(shape[1])


# -- schedule on the array ---------------------------------------------------------------------


def tile_schedule(pattern: BlockPattern, cfg: AccelConfig) -> list[np.ndarray]:
    """The ``k`` indices every output tile iterates, ascending.

    Output tile ``tj`` covers output channels ``[tj * cols, min(out, (tj + 1) * cols))`` of
    ``W`` (columns of ``B = W^T``). It iterates the union of the kept ``k`` of the block-rows it
    overlaps: with ``b_r`` a multiple of ``cols`` that is exactly its block-row's list; with a
    divisor of ``cols`` the tile also multiplies the zeros of its other block-rows.
    """
    n = pattern.shape[0]
    br = pattern.block[0]
    c = cfg.cols
    rows = [pattern.row_k_indices(r) for r in range(pattern.n_block_rows)]
    sched = []
    for tj in range(-(-n // c)):
        lo, hi = tj * c, min(n, (tj + 1) * c) - 1
        parts = rows[lo // br:hi // br + 1]
        sched.append(parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts)))
    return sched


def schedule_cycles(schedule, cfg: AccelConfig, m: int) -> int:
    """Array cycles of a sparse GEMM with ``m`` tokens: ``ceil(m / rows) * sum(len(k_list))``
    (one ``k`` per cycle, pipeline fill and drain excluded)."""
    return -(-m // cfg.rows) * sum(len(ks) for ks in schedule)


def dense_cycles(cfg: AccelConfig, m: int, k: int, n: int) -> int:
    """The same count for a dense ``m x k x n`` GEMM: ``ceil(m/rows) * ceil(n/cols) * k``."""
    return -(-m // cfg.rows) * -(-n // cfg.cols) * k


def kept_macs(pattern: BlockPattern, m: int) -> int:
    """Useful multiply-accumulates of a sparse GEMM with ``m`` tokens."""
    return m * pattern.kept_weights


def ideal_cycles(pattern: BlockPattern, cfg: AccelConfig, m: int) -> float:
    """Kept MACs / PEs: the floor on the cycles of any schedule."""
    return kept_macs(pattern, m) / cfg.pes


def schedule_imbalance(schedule) -> float:
    """max / mean ``k`` steps per output tile (1.0 for a balanced pattern or an empty one)."""
    lengths = np.array([len(ks) for ks in schedule], float)
    mean = lengths.mean()
    return float(lengths.max() / mean) if mean else 1.0


def schedule_report(pattern: BlockPattern, cfg: AccelConfig, m: int) -> dict:
    """Schedule-level figures of a sparse GEMM with ``m`` tokens (no pipeline overheads):
    ``cycles``, ``dense_cycles``, ``ideal_cycles``, ``speedup``, ``utilization`` (ideal /
    cycles), ``density``, ``kept_blocks``, ``block_imbalance`` (:meth:`BlockPattern.imbalance`)
    and ``tile_imbalance`` (:func:`schedule_imbalance`)."""
    sched = tile_schedule(pattern, cfg)
    cycles = schedule_cycles(sched, cfg, m)
    dense = dense_cycles(cfg, m, pattern.shape[1], pattern.shape[0])
    ideal = ideal_cycles(pattern, cfg, m)
    return {
        "cycles": cycles, "dense_cycles": dense, "ideal_cycles": ideal,
        "speedup": dense / cycles if cycles else float("inf"),
        "utilization": ideal / cycles if cycles else 1.0,
        "density": pattern.density, "kept_blocks": pattern.kept_blocks,
        "block_imbalance": pattern.imbalance(), "tile_imbalance": schedule_imbalance(sched),
    }


def tile_weight_words(w, schedule, cfg: AccelConfig) -> list[np.ndarray]:
    """Weight-buffer image of a sparse GEMM: for output tile ``tj`` an int64 array
    ``[len(schedule[tj]), cols]`` whose row ``i`` is the word of weights
    ``W[tj*cols + lane, schedule[tj][i]]`` (lanes past ``out`` are zero)."""
    w = np.asarray(w, np.int64)
    c = cfg.cols
    wp = np.pad(w, ((0, -w.shape[0] % c), (0, 0)))
    return [wp[tj * c:(tj + 1) * c, ks].T for tj, ks in enumerate(schedule)]


def sparse_gemm_acc(a, w, schedule, cfg: AccelConfig) -> np.ndarray:
    """``a[M, in] @ w[out, in]^T`` computed tile by tile over the schedule's ``k`` lists only.

    Equal to the dense product of the pruned ``w`` when the schedule covers every kept weight;
    the tests use it to check :func:`tile_schedule`.
    """
    a = np.asarray(a, np.int64)
    words = tile_weight_words(w, schedule, cfg)
    n = np.asarray(w).shape[0]
    acc = np.zeros((a.shape[0], len(schedule) * cfg.cols), np.int64)
    for tj, (ks, word) in enumerate(zip(schedule, words)):
        acc[:, tj * cfg.cols:(tj + 1) * cfg.cols] = a[:, ks] @ word
    return acc[:, :n]


def size_table(shapes=((192, 192), (768, 192)), densities=(1.0, 0.5, 0.25), block=16,
               seed: int = 0) -> list[dict]:
    """Compressed bytes vs dense int8 bytes for random int8 matrices (the table of
    ``docs/sparse_format.md``). Hierarchical rows use ``block_density = min(1, 2 * density)``,
    i.e. half of the columns of every kept block."""
    rng = np.random.default_rng(seed)
    rows = []
    for shape in shapes:
        w = rng.integers(-128, 128, size=shape)
        for kind in ("block", "hierarchical"):
            for density in densities:
                if kind == "block":
                    p = block_prune(w, density, block)
                elif density < 1.0:
                    p = hierarchical_prune(w, density, block, block_density=min(1.0, 2 * density))
                else:
                    continue
                size = compressed_bytes(p)
                rows.append({"shape": shape, "kind": kind, "density": p.density, "bytes": size,
                             "dense_bytes": dense_bytes(shape),
                             "ratio": size / dense_bytes(shape)})
    return rows


if __name__ == "__main__":
    print("| W [out, in] | pruning | density | compressed bytes | dense bytes | ratio |")
    print("|---|---|---|---|---|---|")
    for row in size_table():
        print(f"| {row['shape'][0]}x{row['shape'][1]} | {row['kind']} | {row['density']:.2f} "
              f"| {row['bytes']:,} | {row['dense_bytes']:,} | {row['ratio']:.4f} |")
