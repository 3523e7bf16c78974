"""Analytic performance model of the accelerator's units.

Each function predicts the cycles the RTL takes for one operation when no stream stalls, from
the same configuration; the tests check the predictions against simulation exactly, so the
model can estimate full-size models without simulating every cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from golden.config import AccelConfig
from golden.sparse_format import HEADER_BYTES, mask_bytes, tile_schedule
from rtl.gemm import (
    FIFO_STAGES,
    SETUP_CYCLES,
    SPARSE_EXTRA_STAGES,
    engine_latency,
    epilogue_stages,
    tile_period,
)
from rtl.sparse_decoder import SparseDecoder

__all__ = ["GemmCycles", "ceil_div", "decode_cycles", "decode_timeline", "gemm_cycles",
           "sparse_gemm_cycles", "tile_ready_dense", "tile_ready_sparse"]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class GemmCycles:
    setup: int         # command validation
    load: int          # weights + epilogue parameters (or first activation tile row)
    compute: int       # first to last reduction step issued to the array
    drain: int         # last step issued -> last output row accepted
    total: int         # busy cycles counted by the engine
    ideal: float       # useful MACs / PEs

    @property
    def utilization(self) -> float:
        return self.ideal / self.total


def gemm_cycles(cfg: AccelConfig, m: int, k: int, n: int, load_weights: bool = True
                ) -> GemmCycles:
    """Busy cycles of one :class:`rtl.gemm.GemmEngine` command with every stream ready.

    A recurrence over tiles, cycle-exact for the RTL (the command is accepted in cycle 0):

    * validation ends in cycle ``S = SETUP_CYCLES`` (3); from cycle ``S + 1`` the weight beats
      (``k`` per column tile), the epilogue beats (one per column tile) and the activation beats
      are taken concurrently, activation tile row ``i`` into the buffer half released by tile
      row ``i - 2``;
    * column tile ``tj`` of the first tile row starts once its weights and epilogue record are
      in (:func:`tile_ready_dense`), so the weight load overlaps the first tile row's compute;
    * a tile issues ``k`` reduction steps on consecutive cycles, its last one at least
      ``max(rows, cols)`` cycles after the previous tile's; a tile row starts the cycle after
      the previous one if its activations are loaded, else one cycle after they are;
    * the last output row leaves ``latency + rows_in_last_tile - 1`` cycles after the last step;
      the engine stays busy at least until the last tile's row ``rows - 1`` (valid or not) has
      left the array, ``latency - EPILOGUE - FIFO + rows - 1`` cycles after it (this bound
      matters when the last tile row is short and ``rows`` large, e.g. 197 tokens on 16 rows).

    In steady state this is ``mt * nt * max(k, rows, cols)`` compute cycles, plus the first
    column tile's weight load (``k`` cycles).
    """
    nt = ceil_div(n, cfg.cols)
    S = SETUP_CYCLES
    ready = None
    if load_weights:
        ready = tile_ready_dense([S + (tj + 1) * k for tj in range(nt)],
                                 [S + 1 + tj for tj in range(nt)])
    return _tiles(cfg, m, k, [k] * nt, S, ready, engine_latency(cfg), m * k * n)


def tile_ready_dense(w_last, ep_taken) -> list[int]:
    """First cycle in which the engine sees each column tile of a dense load as loaded (it
    issues the tile's first step one cycle later at the earliest): the cycle after the tile's
    last weight beat is taken (``w_last[tj]``) and after its epilogue beat (``ep_taken[tj]``),
    whichever is later."""
    return [max(w, e) + 1 for w, e in zip(w_last, ep_taken)]


def tile_ready_sparse(cfg: AccelConfig, pattern, start: int, counts_done, ep_taken
                      ) -> list[int]:
    """:func:`tile_ready_dense` for a sparse load: the decoder started in cycle ``start`` and
    wrote the count of tile ``tj`` (after all its words) in its relative cycle
    ``counts_done[tj]`` (:func:`decode_timeline`); the engine sees it two cycles later
    (``tiles_done``, then its own register)."""
    nt = ceil_div(pattern.shape[0], cfg.cols)
    return [max(start + counts_done[tj] + 1, ep_taken[tj]) + 1 for tj in range(nt)]


def _tiles(cfg, m, k, lengths, S, tile_ready, latency, macs,
           a_supply=None) -> GemmCycles:
    """The tile recurrence shared by dense and sparse commands: ``lengths[tj]`` reduction
    steps per tile, the command starts in cycle ``S`` (activations load from ``S + 1``), column tile
    ``tj`` may start from cycle ``tile_ready[tj]`` (``None``: resident weights, always ready).

    ``a_supply(begin)``, when given, returns the cycle in which the last activation beat of the
    next tile row is accepted, the engine accepting them from cycle ``begin`` on (a source
    slower than one beat per cycle, e.g. ``rtl.exec_gemm``'s transposing reader); by default
    ``begin + k - 1``."""
    R = cfg.rows
    mt = ceil_div(m, R)
    period = tile_period(cfg)
    ready = [0] * len(lengths) if tile_ready is None else tile_ready
    avail, release = [], []
    last = None
    first_issue = None
    for i in range(mt):
        begin = S + 1 if i == 0 else avail[-1]
        if i >= 2:
            begin = max(begin, release[i - 2] + 1)
        avail.append(begin + k if a_supply is None else a_supply(begin) + 1)
        if i == 0:
            start = max(ready[0], avail[0]) + 1
            first_issue = start
        elif avail[i] <= last:
            start = last + 1
        else:
            start = max(last + 1, avail[i]) + 1
        for t, steps in enumerate(lengths):
            first = start if t == 0 else max(last, ready[t]) + 1
            last = first + steps - 1 if last is None else max(first + steps - 1, last + period)
        release.append(last)
    rows_last = m - (mt - 1) * R
    array_drain = latency - epilogue_stages(cfg) - FIFO_STAGES + R - 1
    end = last + max(latency + rows_last - 1, array_drain)
    return GemmCycles(setup=S, load=first_issue - S - 1, compute=last - first_issue + 1,
                      drain=end - last, total=end, ideal=macs / cfg.pes)


def decode_cycles(cfg: AccelConfig, pattern) -> int:
    """Cycles of :class:`rtl.sparse_decoder.SparseDecoder` on the stream ``encode(w, pattern)``
    sent in full ``cols``-byte beats with no stalls: from ``start`` to the ``done`` pulse
    (inclusive). Mirrors the decoder's states cycle by cycle, including its byte aligner."""
    return decode_timeline(cfg, pattern)[0]


def decode_timeline(cfg: AccelConfig, pattern, first_beat: int = 0, counts_done=None
                    ) -> tuple[int, int]:
    """:func:`decode_cycles` when the stream's first beat can be taken no earlier than cycle
    ``first_beat`` (the ``start`` cycle is 0; later beats follow whenever the decoder takes
    them): returns ``(cycles, last)``, ``last`` the cycle the final beat is taken.

    A register-level replay of the decoder: the byte aligner, the parser's states, the column
    generator (entry register, block register, head), the hierarchical entry store and the
    tile-count writer, each updated once per cycle from the values of the previous one.

    ``counts_done``, a list, receives the cycle in which each tile count is written (in tile
    order; every tile's count follows its last weight word).
    """
    C = W = cfg.cols
    BUF = SparseDecoder.buffer_bytes(cfg)
    n = pattern.shape[0]
    br, bc = pattern.block
    q = br // C
    nt = ceil_div(n, C)
    cols = pattern.column_mask()
    hier = pattern.hierarchical
    mb = mask_bytes(bc) if hier else 0
    length = (HEADER_BYTES + 2 * pattern.n_block_rows + (2 + mb) * pattern.kept_blocks
              + br * int(cols.sum()))
    st = {"cycles": 0, "level": 0, "sent": 0, "last": None, "held": None}
    # Column generator and side units (see rtl/sparse_decoder.py): ENT (entry register),
    # S0 (block register, ``s0_left`` columns left), the head queue (its columns' "last of the
    # block-row" flags), the entries stored (``e_w``)
    # and read (``ptr``), the hierarchical store stages, the tile-count writer (``cw`` left).
    g = {"ent_v": False, "ent_b": 0, "s0_v": False, "s0_b": 0, "s0_left": 0, "head": [],
         "ptr": 0, "e_w": 0, "stored": False, "st1": None, "st2": None,
         "cw": 0, "cpend": 0, "cnt": 0}
    row = []                                  # kept columns of each kept block of the row

    def cycle(take=0, idle=False, pop=False, store=False, st1=None, st2=None, count=None,
              counts=None, row_done=None):
        # One clock: the parser takes `take` bytes; the beat in the input register moves into
        # the aligner if it has room, and the input register takes a new beat if it is empty
        # or moving.
        st["cycles"] += 1
        move = st["held"] is not None and st["level"] <= BUF - W
        accept = (not idle and st["sent"] < length and (st["held"] is None or move)
                  and st["cycles"] > first_beat)
        st["level"] -= take
        if move:
            st["level"] += st["held"]
            st["held"] = None
        if accept:
            beat = min(W, length - st["sent"])
            st["sent"] += beat
            st["held"] = beat
            if st["sent"] == length:
                st["last"] = st["cycles"] - 1
        gate = g["stored"] or q == 1
        s0_emit = g["s0_v"] and gate and len(g["head"]) < 2
        s0_done = s0_emit and g["s0_left"] == 1
        s0_load = (not g["s0_v"] or s0_done) and g["ent_v"]
        ent_ld = (not g["ent_v"] or s0_load) and g["ptr"] != g["e_w"]
        nx = dict(g)
        nx["head"] = g["head"][1:] if pop else list(g["head"])
        if s0_emit:
            nx["head"].append(s0_done and g["s0_b"] == g["cnt"] - 1)
        nx["s0_v"] = s0_load or (g["s0_v"] and not s0_done)
        if s0_load:
            nx["s0_b"], nx["s0_left"] = g["ent_b"], row[g["ent_b"]]
        elif s0_emit:
            nx["s0_left"] -= 1
        nx["ent_v"] = ent_ld or (g["ent_v"] and not s0_load)
        if ent_ld:
            nx["ent_b"], nx["ptr"] = g["ptr"], g["ptr"] + 1
        if store or g["st1"] is not None:
            nx["e_w"] += 1
        nx["st1"], nx["st2"] = st1, g["st1"] if g["st1"] is not None else st2
        if g["st2"] is True:
            nx["stored"] = True
        if g["cw"]:
            nx["cw"] -= 1                     # one tile count written
            if counts_done is not None:
                counts_done.append(st["cycles"] - 1)
        if counts is not None:                # the block-row's tile counts start
            nx["cw"] = counts
        nx["cpend"] = 0
        if g["cpend"]:                        # ... the cycle after its last word
            nx["cw"] = g["cpend"]
        if row_done is not None:
            nx["cpend"] = row_done
        if count is not None:                 # COUNT: a new block-row
            nx.update(ptr=0, e_w=0, ent_v=False, s0_v=False, head=[], stored=False,
                      cnt=count)
        g.update(nx)

    def need(nbytes, **kw):
        while st["level"] < nbytes:
            cycle()
        cycle(nbytes, **kw)

    cycle(idle=True)                          # the start cycle (IDLE)
    for nbytes in (4, 2, 2, 2, 2, 4, 4, 4):  # header fields
        need(nbytes)
    for _ in range(q):                        # QDIV
        cycle()
    for _ in range(max(1, pattern.n_block_cols)):
        cycle()                               # NBC
    for r in range(pattern.n_block_rows):
        kept = [c for c in range(pattern.n_block_cols) if pattern.blocks[r, c]]
        row[:] = [int(cols[r, c].sum()) for c in kept]
        need(2, count=len(kept))              # COUNT
        tiles = min(q, nt - r * q)
        if not kept:
            while g["cw"] or g["cpend"]:
                cycle()                       # ECNT: the previous block-row's tile counts
            cycle(counts=tiles)               # ECNT
            while g["cw"]:
                cycle()                       # EROW: its tile counts
            cycle()                           # EROW: next block-row
            continue
        for i in range(len(kept)):
            last = i == len(kept) - 1
            if hier:
                need(2)                       # INDEX
                for b in range(mb):
                    need(1, st1=last if b == mb - 1 else None)   # MASK bytes
            else:
                need(2, store=True, st2=last)  # INDEX (stores the entry)
        for c in range(sum(row)):
            for s in range(q):
                while st["level"] < W or not g["head"]:
                    cycle()
                row_end = c == sum(row) - 1 and s == q - 1
                cycle(W, pop=s == q - 1, row_done=tiles if row_end else None)   # COLUMN
    while st["sent"] < length or st["held"] is not None or g["cw"] or g["cpend"]:
        cycle()                               # END waits for the last beat and tile count
    cycle()                                   # END -> DONE
    cycle()                                   # DONE
    return st["cycles"], st["last"]


def sparse_gemm_cycles(cfg: AccelConfig, m: int, pattern, load_weights: bool = True
                       ) -> GemmCycles:
    """Busy cycles of one sparse :class:`rtl.gemm.GemmEngine` command (``W`` of ``pattern``,
    ``b_r`` a multiple of ``cols``) with every stream ready, cycle-exact.

    As :func:`gemm_cycles`, except: tile ``tj`` issues ``max(1, count_tj)`` steps
    (``count_tj = len(tile_schedule(pattern, cfg)[tj])``); with ``load_weights`` the decoder
    starts in cycle ``S`` and column tile ``tj`` of the first tile row waits for its block-row
    (:func:`tile_ready_sparse`); results leave two cycles later (``sparse_latency``).
    """
    n, k = pattern.shape
    nt = ceil_div(n, cfg.cols)
    lengths = [max(1, len(ks)) for ks in tile_schedule(pattern, cfg)]
    S = SETUP_CYCLES
    ready = None
    if load_weights:
        counts_done = []
        decode_timeline(cfg, pattern, counts_done=counts_done)
        ready = tile_ready_sparse(cfg, pattern, S, counts_done, [S + 1 + j for j in range(nt)])
    return _tiles(cfg, m, k, lengths, S, ready,
                  engine_latency(cfg) + SPARSE_EXTRA_STAGES, m * pattern.kept_weights)
