"""GEMM engine: golden model checks, and the RTL bit-exact against it."""

import numpy as np
import pytest

from golden.gemm import EpilogueParams, gemm, gemm_acc
from rtl.gemm import FEED_STAGES, GemmEngine
from sim.gemm import GemmJob, pack_activations, pack_epilogue, pack_weights, run_gemm, run_gemm_jobs
from sim.perf import gemm_cycles
from sim.streams import run_simulation, stream_recv, stream_send


def operands(cfg, rng, m, k, n):
    a = rng.integers(-128, 128, (m, k))
    b = rng.integers(-128, 128, (k, n))
    return a, b, EpilogueParams.random(cfg, n, rng, k)


# ---- golden model -------------------------------------------------------------------------

def test_golden_matches_float_reference(tiny, rng):
    a, b, ep = operands(tiny, rng, 9, 17, 6)
    real = (a.astype(float) @ b + ep.bias) * ep.mult / 2.0 ** ep.shift
    expected = np.clip(np.floor(real + 0.5), -128, 127)
    assert np.array_equal(gemm(tiny, a, b, ep), expected)


def test_golden_exact_for_extreme_long_dot_products(tiny):
    k = tiny.max_gemm_dim
    a = np.full((2, k), -128)
    b = np.full((k, 3), -128)
    assert gemm_acc(a, b)[0, 0] == 16384 * k
    ep = EpilogueParams(tiny, 3, mult=[1, 1, 1], shift=[14, 0, 20])
    assert gemm(tiny, a, b, ep)[0].tolist() == [96, 127, 2]   # 96 exact, saturated, 1.5 -> 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(a=np.zeros((2, 3, 1), int), b=np.zeros((3, 2), int)), "a and b must be 2-D"),
    (dict(a=np.zeros((2, 3), int), b=np.zeros((4, 2), int)), "inner dimensions differ"),
    (dict(a=np.zeros((33, 3), int), b=np.zeros((3, 2), int)), r"m must be in the range \[1, 32\]"),
    (dict(a=np.zeros((2, 97), int), b=np.zeros((97, 2), int)), r"k must be in the range \[1, 96\]"),
    (dict(a=np.zeros((2, 96), int), b=np.zeros((96, 96), int)),
     "need 2304 words of the weight buffer; weight_buffer_depth is 768"),
    (dict(a=np.full((2, 3), 128), b=np.zeros((3, 2), int)), r"a values must be in the range"),
    (dict(a=np.zeros((2, 3)), b=np.zeros((3, 2), int)), "a must be an integer array"),
])
def test_golden_rejects_bad_operands(tiny, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        gemm(tiny, **kwargs)


def test_epilogue_parameter_ranges(tiny):
    with pytest.raises(ValueError, match=r"mult values must be in the range \[0, 65535\]"):
        EpilogueParams(tiny, 2, mult=[1, 1 << 16])
    with pytest.raises(ValueError, match=r"shift values must be in the range \[0, 48\]"):
        EpilogueParams(tiny, 1, shift=[49])
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\)"):
        EpilogueParams(tiny, 2, bias=[1, 2, 3])


# ---- RTL vs golden ------------------------------------------------------------------------

@pytest.mark.parametrize("m, k, n", [
    (1, 1, 1),        # smallest
    (4, 4, 4),        # exactly one tile
    (5, 3, 9),        # nothing a multiple of the array
    (9, 1, 6),        # k = 1: tiles shorter than the array's period
    (3, 17, 5),       # long k, partial tiles
    (13, 6, 13),
])
def test_random_shapes_bit_exact(tiny, rng, m, k, n):
    a, b, ep = operands(tiny, rng, m, k, n)
    out, run = run_gemm(tiny, a, b, ep)
    assert np.array_equal(out, gemm(tiny, a, b, ep))
    assert run.errors == [0]
    assert run.cycles[0] == gemm_cycles(tiny, m, k, n).total


@pytest.mark.parametrize("m, k, n", [(6, 7, 10), (9, 2, 3)])
def test_random_stalls_on_every_stream(tiny, rng, m, k, n):
    a, b, ep = operands(tiny, rng, m, k, n)
    out, run = run_gemm(tiny, a, b, ep, rng=rng, stall=0.5)
    assert np.array_equal(out, gemm(tiny, a, b, ep))
    assert run.cycles[0] > gemm_cycles(tiny, m, k, n).total     # the stalls did bite


def test_extremes_over_the_longest_k(tiny):
    """-128 x -128 and -128 x 127 accumulated over k = max_gemm_dim: no accumulator wrap."""
    k, n = tiny.max_gemm_dim, 8
    a = np.full((5, k), -128)
    a[1] = 127
    a[3, ::2] = 127
    b = np.full((k, n), -128)
    b[:, 1] = 127
    ep = EpilogueParams(tiny, n, bias=[0, 0, 1 << 20, -(1 << 20), 0, 0, 0, 0],
                        mult=[1, 1, 1, 1, (1 << 16) - 1, 1, 3, 1],
                        shift=[14, 14, 14, 14, 30, 0, 16, 48])
    out, _ = run_gemm(tiny, a, b, ep)
    expected = gemm(tiny, a, b, ep)
    assert np.array_equal(out, expected)
    assert expected.max() == 127 and expected.min() == -128      # saturation exercised
    assert 0 < np.abs(expected).min() < 127 or (expected == 96).any()


def test_saturation_in_the_epilogue(tiny, rng):
    a, b, _ = operands(tiny, rng, 7, 9, 5)
    ep = EpilogueParams(tiny, 5, bias=[(1 << 31) - 1, -(1 << 31), 0, 0, 5],
                        mult=[(1 << 16) - 1] * 5, shift=[0, 0, 0, 48, 3])
    out, _ = run_gemm(tiny, a, b, ep)
    expected = gemm(tiny, a, b, ep)
    assert np.array_equal(out, expected)
    assert (expected[:, 0] == 127).all() and (expected[:, 1] == -128).all()


def test_resident_weights_are_reused(tiny, rng):
    a1, b, ep = operands(tiny, rng, 6, 10, 7)
    a2 = rng.integers(-128, 128, (11, 10))
    run = run_gemm_jobs(tiny, [GemmJob(a1, b, ep), GemmJob(a2, k=10, n=7)], rng=rng, stall=0.2)
    assert np.array_equal(run.outputs[0], gemm(tiny, a1, b, ep))
    assert np.array_equal(run.outputs[1], gemm(tiny, a2, b, ep))
    assert run.errors == [0, 0]


def test_latency_from_last_issue_to_first_output(tiny, rng):
    dut = GemmEngine(tiny)
    a, b, ep = operands(tiny, rng, 3, 6, 2)
    marks = {}

    async def watch(ctx):
        cycle = 0
        while "out" not in marks:
            if ctx.get(dut._array.ctl.valid) and ctx.get(dut._array.ctl.last):
                marks["last"] = cycle
            if ctx.get(dut.o.valid):
                marks["out"] = cycle
            await ctx.tick()
            cycle += 1

    async def feed(ctx):
        await stream_send(ctx, dut.cmd, [{"m": 3, "k": 6, "n": 2, "load_weights": 1}])
        await stream_send(ctx, dut.w, pack_weights(tiny, b))
        await stream_send(ctx, dut.ep, pack_epilogue(tiny, ep))
        await stream_send(ctx, dut.a, pack_activations(tiny, a))

    async def drain(ctx):
        return await stream_recv(ctx, dut.o, 3)

    beats = run_simulation(dut, [watch, feed, drain], max_cycles=200)[2]
    assert np.array_equal(np.array(beats)[:, :2], gemm(tiny, a, b, ep))
    # the array sees the last beat FEED_STAGES (2) cycles after it is issued;
    # 2 (buffer read, register) + cols + 3 (array) + 10 (epilogue, split multiply) + 2 (FIFO)
    assert marks["out"] - marks["last"] + FEED_STAGES == dut.latency == tiny.cols + 17


def _command_then(dut, cmds, data_streams=()):
    """Send commands (waiting for each to finish) and record error/busy after each."""
    seen = []

    async def bench(ctx):
        for cmd in cmds:
            await stream_send(ctx, dut.cmd, [cmd])
            for _ in range(30):
                await ctx.tick()
                if not ctx.get(dut.busy):
                    break
            seen.append((ctx.get(dut.error), ctx.get(dut.busy), ctx.get(dut.w.ready),
                         ctx.get(dut.a.ready)))
        return seen

    return run_simulation(dut, [bench], max_cycles=100 * len(cmds))[0]


@pytest.mark.parametrize("cmd", [
    {"m": 0, "k": 4, "n": 4, "load_weights": 1},
    {"m": 33, "k": 4, "n": 4, "load_weights": 1},                 # m > max_tokens
    {"m": 4, "k": 0, "n": 4, "load_weights": 1},
    {"m": 4, "k": 97, "n": 4, "load_weights": 1},                 # k > max_gemm_dim
    {"m": 4, "k": 4, "n": 0, "load_weights": 1},
    {"m": 4, "k": 96, "n": 96, "load_weights": 1},                # weight buffer overflow
    {"m": 4, "k": 4, "n": 4, "load_weights": 0},                  # no resident weights
])
def test_bad_commands_raise_error_and_never_hang(tiny, cmd):
    dut = GemmEngine(tiny)
    ((error, busy, w_ready, a_ready),) = _command_then(dut, [cmd])
    assert (error, busy, w_ready, a_ready) == (1, 0, 0, 0)


def test_error_clears_on_next_good_command_and_engine_still_works(tiny, rng):
    a, b, ep = operands(tiny, rng, 5, 3, 6)
    dut = GemmEngine(tiny)

    async def bench(ctx):                       # load_weights = 0 with nothing resident
        await stream_send(ctx, dut.cmd, [{"m": 5, "k": 3, "n": 6, "load_weights": 0}])
        await ctx.tick()
        assert ctx.get(dut.error) == 1

    run_simulation(dut, [bench], max_cycles=20)
    run = run_gemm_jobs(tiny, [GemmJob(a, b, ep)], dut=dut)
    assert run.errors == [0]
    assert np.array_equal(run.outputs[0], gemm(tiny, a, b, ep))


def test_mismatched_resident_shape_is_rejected(tiny, rng):
    a, b, ep = operands(tiny, rng, 2, 3, 6)
    dut = GemmEngine(tiny)
    run = run_gemm_jobs(tiny, [GemmJob(a, b, ep)], dut=dut)
    assert run.errors == [0]
    ((error, busy, _, _),) = _command_then(dut, [{"m": 2, "k": 4, "n": 6, "load_weights": 0}])
    assert (error, busy) == (1, 0)


def test_non_config_argument_is_type_error():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig"):
        GemmEngine("tiny")


def test_non_square_array(rng):
    from golden.config import AccelConfig
    cfg = AccelConfig(rows=3, cols=5, max_tokens=16, max_dim=16, max_hidden=32)
    a, b, ep = operands(cfg, rng, 7, 4, 11)
    out, run = run_gemm(cfg, a, b, ep, rng=rng, stall=0.3)
    assert np.array_equal(out, gemm(cfg, a, b, ep))
    out, run = run_gemm(cfg, a, b, ep)
    assert run.cycles[0] == gemm_cycles(cfg, 7, 4, 11).total
