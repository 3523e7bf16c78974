"""``python -m sim.bench add``: the residual ADD unit (``rtl.add.ResidualAdd``) against
``golden.add.add_int``.

Operands: ``--n`` elements (default ``max_dim * 8``: eight token rows) of each of two int8
tensors, packed into beats of ``cols`` lanes (the last beat zero-padded), with the parameters
:func:`golden.add.add_params` derives from representative scales (``s_a = 0.05``,
``s_b = 0.02``, ``s_out = 0.06``).

* Throughput: both inputs back to back and the output always ready. ``cycles`` runs from the
  first input handshake to the last output beat; ``ideal_cycles`` is the beat count (one beat
  per cycle); ``fill_latency`` is the pipeline depth.
* Stalls (``--stall``, default 0.3): the same operands again with random stalls on all three
  streams, for bit-exactness under back-pressure (``stalled_cycles``, counted from the start
  of the simulation, is reported, not judged).
* Accuracy: the integer result against the float residual ``(a s_a + b s_b) / s_out``, clipped
  to int8, in output LSBs (the rounding alone is at most 0.5).

The harness functions (:func:`run_pairs`, :func:`timed_pairs`, :func:`first_pair_output`) are
shared with ``tests/test_add.py``.
"""

from __future__ import annotations

import numpy as np

from golden.add import add_int, add_params
from rtl.add import ResidualAdd

from .streams import run_simulation, stream_put, stream_recv, stream_send

__all__ = ["HELP", "add_arguments", "run", "pack_beats", "run_pairs", "timed_pairs",
           "first_pair_output"]

HELP = "requantizing residual add of two int8 streams: RTL vs golden, cycles vs one beat/cycle"

SCALES = (0.05, 0.02, 0.06)


def add_arguments(parser):
    parser.add_argument("--n", type=int, default=None,
                        help="elements per operand (default: 8 * max_dim)")
    parser.add_argument("--stall", type=float, default=0.3,
                        help="stall probability per beat on every stream in the stalled run "
                             "(default 0.3; 0 skips it)")


def pack_beats(values, lanes):
    """Beats of ``lanes`` values (the last one zero-padded)."""
    values = [int(v) for v in np.asarray(values).ravel()]
    values += [0] * (-len(values) % lanes)
    return [values[i:i + lanes] for i in range(0, len(values), lanes)]


def _cmd(p):
    return {"ma": p.ma, "mb": p.mb, "shift": p.shift}


def run_pairs(dut, a_beats, b_beats, rng, stall=0.3, *, cmd=None, cmds=None, stalls=None,
              error_clear_after=False, count_cycles=False):
    """Stream beat lists into ``dut.a`` / ``dut.b`` with independent random stalls and receive
    as many output beats.

    ``cmd`` (an :class:`golden.add.AddParams` or a dict) is set once before the first beat;
    ``cmds`` instead gives one per ``a`` beat, set together with it (``cmd`` is sampled with
    each accepted pair). ``stalls`` overrides ``stall`` per stream as ``(a, b, o)``. Returns the
    output beats; with ``error_clear_after``, ``(beats, error, error after a clear)``; with
    ``count_cycles``, ``(beats, cycles until the last output beat)``.
    """
    sa, sb, so = (stall, stall, stall) if stalls is None else stalls

    def as_cmd(c):
        return c if isinstance(c, dict) else _cmd(c)

    async def send_a(ctx):
        if cmds is None:
            if cmd is not None:
                ctx.set(dut.cmd, as_cmd(cmd))
            await stream_send(ctx, dut.a, a_beats, rng=rng, stall=sa)
            return
        for beat, c in zip(a_beats, cmds):
            while sa > 0 and rng.random() < sa:
                await ctx.tick()
            ctx.set(dut.cmd, as_cmd(c))
            await stream_put(ctx, dut.a, beat)

    async def send_b(ctx):
        await stream_send(ctx, dut.b, b_beats, rng=rng, stall=sb)

    state = {"done": False}

    async def recv(ctx):
        out = await stream_recv(ctx, dut.o, len(a_beats), rng=rng, stall=so)
        state["done"] = True
        if not error_clear_after:
            return out
        err = ctx.get(dut.error)
        ctx.set(dut.error_clear, 1)
        await ctx.tick()
        ctx.set(dut.error_clear, 0)
        return out, err, ctx.get(dut.error)

    budget = int(len(a_beats) * (4 + 12 * max(sa, sb, so)) / (1 - max(sa, sb, so, 0.5)) + 100)
    async def count(ctx):
        cycles = 0
        while not state["done"]:
            await ctx.tick()
            cycles += 1
        return cycles

    _, _, out, cycles = run_simulation(dut, [send_a, send_b, recv, count], max_cycles=budget)
    return (out, cycles) if count_cycles else out


async def _timed(ctx, dut, a_beats, b_beats):
    ctx.set(dut.o.ready, 1)
    stamps, outs, cycle, k, first = [], [], 0, 0, None
    while len(stamps) < len(a_beats):
        more = k < len(a_beats)
        ctx.set(dut.a.valid, more)
        ctx.set(dut.b.valid, more)
        if more:
            ctx.set(dut.a.payload, a_beats[k])
            ctx.set(dut.b.payload, b_beats[k])
        took = more and ctx.get(dut.a.ready) and ctx.get(dut.b.ready)
        got = ctx.get(dut.o.valid)
        payload = [int(v) for v in ctx.get(dut.o.payload)] if got else None
        await ctx.tick()
        if took:
            first = cycle if first is None else first
            k += 1
        if got:
            outs.append(payload)
            stamps.append(cycle - first)
        cycle += 1
    return outs, stamps


def timed_pairs(dut, a_beats, b_beats, p):
    """Both inputs back to back, output always ready. Returns ``(beats, stamps)``: each output
    beat's cycle counted from the first input handshake."""
    async def bench(ctx):
        ctx.set(dut.cmd, _cmd(p))
        return await _timed(ctx, dut, a_beats, b_beats)

    (outs, stamps), = run_simulation(dut, [bench], max_cycles=len(a_beats) + 100)
    return outs, stamps


async def first_pair_output(ctx, dut, a_beat, b_beat):
    """Offer one pair with the output ready; returns ``(cycles, output beat)``, the cycles
    counted from the pair's handshake (1 = the next cycle)."""
    ctx.set(dut.o.ready, 1)
    ctx.set(dut.a.valid, 1)
    ctx.set(dut.b.valid, 1)
    ctx.set(dut.a.payload, a_beat)
    ctx.set(dut.b.payload, b_beat)
    await ctx.tick()
    ctx.set(dut.a.valid, 0)
    ctx.set(dut.b.valid, 0)
    cycles = 1
    while not ctx.get(dut.o.valid):
        await ctx.tick()
        cycles += 1
    return cycles, [int(v) for v in ctx.get(dut.o.payload)]


def run(args) -> dict:
    cfg = args.cfg
    n = 8 * cfg.max_dim if args.n is None else args.n
    if not 1 <= n <= 1_000_000:
        raise ValueError(f"--n must be in the range [1, 1000000], not {n}")
    if not 0.0 <= args.stall < 0.9:
        raise ValueError(f"--stall must be in the range [0, 0.9), not {args.stall}")
    rng = np.random.default_rng(args.seed)
    lo, hi = -(1 << (cfg.act_width - 1)), 1 << (cfg.act_width - 1)
    a = rng.integers(lo, hi, n)
    b = rng.integers(lo, hi, n)
    s_a, s_b, s_out = SCALES
    p = add_params(s_a, s_b, s_out, mult_width=cfg.mult_width)
    expected = add_int(a, b, p, cfg.act_width)
    dut = ResidualAdd(cfg)
    lanes = dut.lanes
    a_beats, b_beats = pack_beats(a, lanes), pack_beats(b, lanes)
    want = pack_beats(expected, lanes)
    pad = len(want) * lanes - n
    if pad:      # padded lanes: 0 * ma + 0 * mb rounds to 0
        want[-1][lanes - pad:] = [0] * pad

    outs, stamps = timed_pairs(dut, a_beats, b_beats, p)
    beats = len(a_beats)
    cycles = stamps[-1] + 1
    steady = (stamps[-1] - stamps[0]) / (beats - 1) if beats > 1 else 1.0
    result = {
        "kernel": "add", "config": cfg.name, "elements": n, "lanes": lanes, "beats": beats,
        "params": {"ma": p.ma, "mb": p.mb, "shift": p.shift},
        "bit_exact": outs == want,
        "cycles": cycles, "ideal_cycles": beats,
        "utilization": round(beats / cycles, 4),
        "cycles_per_beat_steady": round(steady, 4),
        "fill_latency": dut.latency,
    }
    if args.stall > 0:
        dut2 = ResidualAdd(cfg)
        stalled, cycles2 = run_pairs(dut2, a_beats, b_beats, rng, args.stall, cmd=p,
                                     count_cycles=True)
        result["stalled_bit_exact"] = stalled == want
        result["stalled_cycles"] = cycles2
        result["bit_exact"] = result["bit_exact"] and result["stalled_bit_exact"]
    real = np.clip((a * s_a + b * s_b) / s_out, lo, hi - 1)
    err = np.abs(expected - real)
    result["accuracy"] = {
        "scales": {"s_a": s_a, "s_b": s_b, "s_out": s_out},
        "max_abs_err_lsb": round(float(err.max()), 4),
        "mean_abs_err_lsb": round(float(err.mean()), 4),
        "saturated_pct": round(100.0 * float((np.abs(real) >= hi - 1).mean()), 3),
    }
    return result
