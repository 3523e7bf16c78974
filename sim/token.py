"""Harness for the token-pruning units: :class:`rtl.topk.TopK`,
:class:`rtl.compaction.TokenCompaction` and :class:`rtl.compaction.TokenPrune`.

* :func:`run_topk` streams scores into the top-k selector and collects its per-token beats and
  keep mask (also for malformed run-time arguments, where the unit raises ``error``).
* :class:`BufferHarness` puts a compaction or pruning unit between a source and a destination
  activation buffer (``amaranth.lib.memory.Memory``), laid out as documented in
  :mod:`rtl.compaction`: row ``r`` segment ``j`` of ``cols`` values at word ``r * stride + j``
  (``stride`` the unit's elaboration parameter), lanes past the row's end zero. The words a
  row does not use can be filled with a marker (``gap``) and the destination preloaded
  (``dst_init``) to check that the unit touches only the words it should.
* :func:`run_compaction` and :func:`run_prune` run one pass of those units and read the
  destination rows back.

The control sequence is the same for every unit: set the run-time arguments, pulse ``start``
for one cycle (:func:`start`), then count cycles until ``done`` or ``error``
(:func:`wait_done`). Cycle counts run from the ``start`` cycle (counted as 1) to the cycle
``done`` or ``error`` is seen.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import memory
from amaranth.lib.wiring import connect

from rtl.compaction import TokenCompaction, TokenPrune
from rtl.topk import TopK

from .streams import run_simulation, stream_recv, stream_send

__all__ = ["start", "wait_done", "run_topk", "pad_rows", "buffer_words", "marker_words",
           "BufferHarness", "read_rows", "read_words", "sel_beats", "run_compaction",
           "run_prune"]


async def start(ctx, dut, **args):
    """Set the run-time argument ports named in ``args`` and pulse ``dut.start`` for one cycle."""
    for name, value in args.items():
        ctx.set(getattr(dut, name), value)
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)


async def wait_done(ctx, dut):
    """Wait for ``done`` or ``error``; returns the cycles since ``start`` (the start cycle is 1)."""
    cycles = 1
    while not ctx.get(dut.done) and not ctx.get(dut.error):
        await ctx.tick()
        cycles += 1
    return cycles


# -- top-k ------------------------------------------------------------------------------------

def run_topk(cfg, scores, k, *, rng=None, stall=0.0, kept_only=False, n=None):
    """Run one selection on a fresh :class:`TopK`.

    ``n`` overrides the token count set on the unit (default ``len(scores)``); with arguments
    outside ``1 <= k <= n <= max_tokens`` no beats are sent or expected. Returns
    ``(beats, mask bits over max_tokens, cycles start -> done/error, error, unit)``.
    """
    dut = TopK(cfg, kept_only=kept_only)
    n = len(scores) if n is None else n
    expect_beats = (k if kept_only else n) if 1 <= k <= n <= cfg.max_tokens else 0
    state = {}

    async def control(ctx):
        await start(ctx, dut, n=n, k=k)
        cycles = await wait_done(ctx, dut)
        state["mask"] = ctx.get(dut.mask)
        state["error"] = ctx.get(dut.error)
        return cycles

    async def send(ctx):
        if expect_beats:
            await stream_send(ctx, dut.i, [int(s) for s in scores], rng=rng, stall=stall)

    async def recv(ctx):
        return await stream_recv(ctx, dut.o, expect_beats, rng=rng, stall=stall)

    budget = 4 * (2 * max(n, 1) + (1 << cfg.score_width) + 10) * (1 + 4 * stall)
    cycles, _, beats = run_simulation(dut, [control, send, recv], max_cycles=int(budget))
    bits = [(state["mask"] >> i) & 1 for i in range(cfg.max_tokens)]
    return beats, bits, cycles, state["error"], dut


# -- activation buffers -------------------------------------------------------------------------

def pad_rows(x, cols):
    """Zero-pad the rows of ``x`` to whole ``cols``-wide segments; returns (padded, segs)."""
    segs = -(-x.shape[1] // cols)
    out = np.zeros((x.shape[0], segs * cols), dtype=np.int64)
    out[:, :x.shape[1]] = x
    return out, segs


def buffer_words(cfg, stride, x, gap=0):
    """Initial contents of a source buffer holding the rows of ``x``: lanes past a row's end in
    its last segment are zero; every word holding none of ``x`` is ``gap`` in all lanes."""
    cols = cfg.cols
    words = []
    for r in range(cfg.max_tokens):
        for j in range(stride):
            seg = list(x[r, j * cols:(j + 1) * cols]) if r < len(x) else []
            if seg:
                words.append([int(v) for v in seg] + [0] * (cols - len(seg)))
            else:
                words.append([int(gap)] * cols)
    return words


def marker_words(depth, cols):
    """A recognisable pattern for a whole buffer (a different word at every address)."""
    return [[(w * 7 + lane * 3) % 201 - 100 for lane in range(cols)] for w in range(depth)]


class BufferHarness(Elaboratable):
    """A compaction or pruning unit between a source and a destination activation buffer.

    Parameters
    ----------
    cfg : AccelConfig
    x : array of shape (rows, D)
        Token rows preloaded into the source buffer.
    heads : int or None
        ``None`` for a :class:`TokenCompaction`, else the head count of a :class:`TokenPrune`.
    stride : int or None
        The unit's row stride (``None``: its default, ``ceil(max_dim / cols)``).
    gap : int
        Value of the source words that hold no part of ``x`` (see :func:`buffer_words`).
    dst_init : list or None
        Initial destination words (default all zero).

    Members
    -------
    dut : TokenCompaction or TokenPrune
    unit : TokenCompaction
        The compaction unit (``dut`` itself or its ``compaction`` submodule): buffer layout.
    src, dst : amaranth.lib.memory.Memory
    cols : int
        Values per buffer word.
    """

    def __init__(self, cfg, x, heads=None, *, stride=None, gap=0, dst_init=None):
        self.dut = (TokenCompaction(cfg, stride) if heads is None
                    else TokenPrune(cfg, heads, stride))
        self.unit = unit = self.dut if heads is None else self.dut.compaction
        self.cols = cfg.cols
        self.src = memory.Memory(shape=unit.row_layout, depth=unit.depth,
                                 init=buffer_words(cfg, unit.stride, x, gap))
        self.dst = memory.Memory(shape=unit.row_layout, depth=unit.depth,
                                 init=[] if dst_init is None else dst_init)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.submodules.src = self.src
        m.submodules.dst = self.dst
        connect(m, self.dut.src, self.src.read_port())
        connect(m, self.dut.dst, self.dst.write_port())
        return m


def read_rows(ctx, h, rows, segs):
    """Destination rows ``0 .. rows - 1`` of harness ``h``, ``segs`` segments each, as an array."""
    out = [[v for j in range(segs) for v in ctx.get(h.dst.data[r * h.unit.stride + j])]
           for r in range(rows)]
    return np.array(out, dtype=np.int64).reshape(len(out), segs * h.cols)


def read_words(ctx, h):
    """Every destination word of harness ``h``, as lists."""
    return [[int(v) for v in ctx.get(h.dst.data[w])] for w in range(h.unit.depth)]


def sel_beats(mask, weights):
    """Selector beats (``rtl.topk.token_layout``) for the candidates' keep bits and scores."""
    n = len(mask)
    return [{"index": i, "score": int(weights[i]), "keep": int(mask[i]), "last": int(i == n - 1)}
            for i in range(n)]


async def _run_pass(ctx, h, segs, res, dump=False, **args):
    dut = h.dut
    await start(ctx, dut, segs=segs, **args)
    cycles = await wait_done(ctx, dut)
    res.update(cycles=cycles, rows=ctx.get(dut.rows), error=ctx.get(dut.error),
               weight=ctx.get(dut.package_weight))
    res["out"] = read_rows(ctx, h, 0 if res["error"] else res["rows"], segs)
    if dump:
        res["words"] = read_words(ctx, h)


def run_compaction(cfg, x, mask, weights, *, rng=None, stall=0.0, segs=None, beats=None,
                   stride=None, gap=0, dst_init=None, dump=False):
    """One compaction pass over the rows of ``x`` (CLS first) with the given selection.

    ``beats`` overrides the selector stream (default :func:`sel_beats`), ``segs`` the
    segment count (default ``ceil(D / cols)``); with ``segs`` outside ``[1, max_segs]``
    nothing is sent. ``stride``, ``gap`` and ``dst_init`` are passed to
    :class:`BufferHarness`; with ``dump`` the result also holds every destination word
    (``words``). Returns ``(dict(cycles, rows, error, weight, out[, words]), unit)``.
    """
    xp, nsegs = pad_rows(x, cfg.cols)
    segs = nsegs if segs is None else segs
    h = BufferHarness(cfg, xp, stride=stride, gap=gap, dst_init=dst_init)
    dut = h.dut
    if beats is None:
        beats = sel_beats(mask[:x.shape[0] - 1], weights)
    res = {}

    async def control(ctx):
        await _run_pass(ctx, h, segs, res, dump)

    async def send(ctx):
        await stream_send(ctx, dut.sel, beats, rng=rng, stall=stall)

    if segs < 1 or segs > dut.max_segs:
        run_simulation(h, [control], max_cycles=50)
    else:
        budget = (len(beats) + 2) * (segs + 2) * (1 + 6 * stall) + 100
        run_simulation(h, [control, send], max_cycles=int(budget))
    return res, dut


def run_prune(cfg, x, probs, k, *, rng=None, stall=0.0, stride=None, gap=0, dst_init=None,
              dump=False):
    """One pruning pass (CLS score -> top-k -> compaction) keeping ``k`` of the ``N - 1``
    candidate rows of ``x``, with ``probs`` of shape ``(heads, N)`` streamed at random stalls.
    ``stride``, ``gap``, ``dst_init`` and ``dump`` as for :func:`run_compaction`.

    Returns ``(dict(cycles, rows, error, weight, out, segs[, words]), unit)``.
    """
    n_tokens = x.shape[0]
    segs = -(-x.shape[1] // cfg.cols)
    h = BufferHarness(cfg, x, probs.shape[0], stride=stride, gap=gap, dst_init=dst_init)
    dut = h.dut
    res = {"segs": segs}

    async def control(ctx):
        await _run_pass(ctx, h, segs, res, dump, n_tokens=n_tokens, k=k)

    async def send(ctx):
        await stream_send(ctx, dut.probs, [probs[:, i].tolist() for i in range(1, n_tokens)],
                          rng=rng, stall=stall)

    pruned = n_tokens - 1 - k
    budget = max((n_tokens * (segs + 2) + (1 << cfg.score_width) + 60) * (1 + 4 * stall),
                 dut.cycles(n_tokens, segs, max(pruned, 0)) * (1 + 4 * stall) + 200)
    run_simulation(h, [control, send], max_cycles=int(budget))
    return res, dut
