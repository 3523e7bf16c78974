"""Harness for the nonlinear units: :class:`rtl.softmax.Softmax` and
:class:`rtl.layernorm.LayerNorm` (row-wise, a ``last``-framed stream of words of ``cols``
values, ``count`` used) and :class:`rtl.gelu.Gelu`, :class:`rtl.sigmoid.Sigmoid`
(element-wise, ``lanes`` values per beat).

Two ways of driving a unit:

* with random stalls on both streams (:func:`run_rows`, :func:`run_lanes`), for bit-exactness;
* back to back with the output always ready (:func:`run_timed`), for cycle figures: each output
  beat is stamped with its cycle counted from the first input handshake, so the first stamp is
  the fill latency and the spacing of the stamps the throughput.

Run-time configuration (a ``cmd`` port, the LayerNorm parameter stream) is applied by an
optional ``setup(ctx)`` coroutine before the first input beat; :func:`load_ln_params` is the one
for LayerNorm.
"""

from __future__ import annotations

import numpy as np

from .streams import run_simulation, stream_recv, stream_send

__all__ = ["row_beats", "word_beats", "unpack_words", "lane_beats", "load_ln_params", "run_rows",
           "run_lanes", "recv_and_clear_error", "timed", "run_timed", "first_output"]


def row_beats(rows):
    """``{"data", "last"}`` beats of the given rows, ``last`` on each row's final element."""
    return [{"data": int(v), "last": int(i == len(r) - 1)} for r in rows for i, v in enumerate(r)]


def word_beats(rows, lanes):
    """``{"data", "count", "last"}`` beats of the given rows in words of ``lanes`` channels:
    the last word of a row zero-padded, ``count`` its channels, ``last`` on it."""
    beats = []
    for r in rows:
        for j in range(0, len(r), lanes):
            part = [int(v) for v in r[j:j + lanes]]
            beats.append({"data": part + [0] * (lanes - len(part)), "count": len(part),
                          "last": int(j + lanes >= len(r))})
    return beats


def unpack_words(payloads):
    """Elements and per-element ``last`` flags of word beats (the used lanes of each)."""
    data, last = [], []
    for p in payloads:
        count = int(p.count)
        data += [int(p.data[k]) for k in range(count)]
        last += [0] * (count - 1) + [int(p.last)]
    return data, last


def _word_lanes(dut):
    """``cols`` of a word-wide row unit (payload with a ``count`` field), else None."""
    layout = dut.i.payload.shape()
    return layout["data"].shape.length if "count" in layout.members else None


def lane_beats(values, lanes):
    """Beats of ``lanes`` consecutive values each (``len(values)`` a multiple of ``lanes``)."""
    return [list(map(int, values[i:i + lanes])) for i in range(0, len(values), lanes)]


async def load_ln_params(ctx, dut, p):
    """Set a LayerNorm's ``cmd`` from :class:`golden.layernorm.LnParams` ``p`` and write its
    ``gamma``/``beta`` entries through the parameter port (channel ``k`` at word
    ``k // lanes``, lane ``k % lanes``), one per cycle."""
    ctx.set(dut.cmd, {"mult": p.mult, "shift": p.shift, "eps": p.eps_int})
    for k in range(len(p.gamma)):
        ctx.set(dut.param.valid, 1)
        ctx.set(dut.param.payload, {"word": k // dut.lanes, "lane": k % dut.lanes,
                                    "gamma": int(p.gamma[k]), "beta": int(p.beta[k])})
        await ctx.tick()
    ctx.set(dut.param.valid, 0)


def run_rows(dut, rows, rng, stall=0.3, *, setup=None, expected_rows=None, slack=400):
    """Stream ``rows`` through a row-wise unit with random stalls on both sides (elements, or
    words for a word-wide unit).

    Receives as many elements as ``expected_rows`` hold (default ``rows``). Returns the output
    ``(data, last)`` lists, one entry per element.
    """
    lanes = _word_lanes(dut)
    beats = row_beats(rows) if lanes is None else word_beats(rows, lanes)
    expected_rows = rows if expected_rows is None else expected_rows
    count = sum(len(r) if lanes is None else -(-len(r) // lanes) for r in expected_rows)

    async def send(ctx):
        if setup is not None:
            await setup(ctx)
        await stream_send(ctx, dut.i, beats, rng=rng, stall=stall)

    async def recv(ctx):
        return await stream_recv(ctx, dut.o, count, rng=rng, stall=stall, convert=False)

    _, out = run_simulation(dut, [send, recv], max_cycles=12 * len(beats) + slack)
    if lanes is not None:
        return unpack_words(out)
    return [int(o.data) for o in out], [int(o.last) for o in out]


def run_lanes(dut, values, rng, stall=0.3, *, setup=None):
    """Stream ``values`` through an element-wise unit (``dut.lanes`` per beat) with random
    stalls on both sides; returns the outputs as a flat array."""
    beats = lane_beats(values, dut.lanes)

    async def send(ctx):
        if setup is not None:
            await setup(ctx)
        await stream_send(ctx, dut.i, beats, rng=rng, stall=stall)

    async def recv(ctx):
        return await stream_recv(ctx, dut.o, len(beats), rng=rng, stall=stall)

    _, out = run_simulation(dut, [send, recv], max_cycles=20 * len(beats) + 100)
    return np.array(out).reshape(-1)


async def recv_and_clear_error(ctx, dut, count, *, rng=None, stall=0.0):
    """Receive ``count`` beats, then read the sticky ``error`` flag and clear it (the data: one
    value per element, the used lanes of words for a word-wide unit).

    Returns ``(data, error before clearing, error after clearing)``.
    """
    out = await stream_recv(ctx, dut.o, count, rng=rng, stall=stall, convert=False)
    err = ctx.get(dut.error)
    ctx.set(dut.error_clear, 1)
    await ctx.tick()
    ctx.set(dut.error_clear, 0)
    data = unpack_words(out)[0] if _word_lanes(dut) else [int(o.data) for o in out]
    return data, err, ctx.get(dut.error)


async def timed(ctx, dut, beats, count, read=None):
    """Send ``beats`` back to back with the output always ready until ``count`` output beats.

    Returns ``(outputs, stamps)``: ``read(payload)`` of each output beat, concatenated (empty
    without ``read``), and each output beat's cycle counted from the first input handshake.
    """
    ctx.set(dut.o.ready, 1)
    stamps, outs, cycle, k, first = [], [], 0, 0, None
    while len(stamps) < count:
        if k < len(beats):
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, beats[k])
        else:
            ctx.set(dut.i.valid, 0)
        took = k < len(beats) and ctx.get(dut.i.ready)
        got = ctx.get(dut.o.valid)
        payload = ctx.get(dut.o.payload) if got and read is not None else None
        await ctx.tick()
        if took:
            first = cycle if first is None else first
            k += 1
        if got:
            if read is not None:
                outs.extend(read(payload))
            stamps.append(cycle - first)
        cycle += 1
    return outs, stamps


def run_timed(dut, beats, count=None, *, read=None, setup=None, max_cycles=200000):
    """Simulate :func:`timed` after the optional ``setup``; ``count`` defaults to one output
    beat per input beat. Returns ``(outputs, stamps)``."""
    count = len(beats) if count is None else count

    async def bench(ctx):
        if setup is not None:
            await setup(ctx)
        return await timed(ctx, dut, beats, count, read)

    (outs, stamps), = run_simulation(dut, [bench], max_cycles=max_cycles)
    return outs, stamps


async def first_output(ctx, dut, payload):
    """Offer one input beat with the output ready; returns ``(cycles, output payload)``, the
    cycles counted from the input beat (1 = the next cycle)."""
    ctx.set(dut.o.ready, 1)
    ctx.set(dut.i.valid, 1)
    ctx.set(dut.i.payload, payload)
    await ctx.tick()
    ctx.set(dut.i.valid, 0)
    cycles = 1
    while not ctx.get(dut.o.valid):
        await ctx.tick()
        cycles += 1
    return cycles, ctx.get(dut.o.payload)
