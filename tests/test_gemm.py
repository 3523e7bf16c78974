"""GEMM engine: golden model checks, and the RTL bit-exact against it."""

import numpy as np
import pytest
from amaranth.hdl import signed
from amaranth.lib import data

from golden.gemm import OUT16_BITS, EpilogueParams, gemm, gemm_acc
from rtl.gemm import FEED_STAGES, GemmEngine, command_layout, output_layout
from sim.gemm import (
    GemmJob,
    pack_activations,
    pack_epilogue,
    pack_weights,
    raw_activations,
    run_gemm,
    run_gemm_jobs,
    unpack_outputs,
)
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


def test_weight_load_overlaps_the_first_tile_row(tiny, rng):
    """Column tile tj of the first tile row starts once its own weights are in, so a command
    that loads its weights takes no longer than the same command on resident weights (the
    first tile's weights arrive while the first activation tile row loads), less than the
    weight load plus the compute alone."""
    m, k, n = 12, 8, 24
    a, b, ep = operands(tiny, rng, m, k, n)
    run = run_gemm_jobs(tiny, [GemmJob(a, b, ep), GemmJob(a, k=k, n=n)])
    for out in run.outputs:
        assert np.array_equal(out, gemm(tiny, a, b, ep))
    nt, mt = n // tiny.cols, m // tiny.rows
    assert run.cycles[0] == run.cycles[1]
    assert run.cycles[0] < k * nt + mt * nt * k


@pytest.mark.parametrize("a_unsigned, out16", [(0, 0), (1, 1)])
def test_latency_from_last_issue_to_first_output(tiny, rng, a_unsigned, out16):
    dut = GemmEngine(tiny)
    a, b, ep = operands(tiny, rng, 3, 6, 2)
    if a_unsigned:
        a = a + 128
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
        await stream_send(ctx, dut.cmd, [{"m": 3, "k": 6, "n": 2, "load_weights": 1,
                                          "a_unsigned": a_unsigned, "out16": out16}])
        await stream_send(ctx, dut.w, pack_weights(tiny, b))
        await stream_send(ctx, dut.ep, pack_epilogue(tiny, ep))
        await stream_send(ctx, dut.a, pack_activations(tiny, a))

    async def drain(ctx):
        return await stream_recv(ctx, dut.o, 3)

    beats = run_simulation(dut, [watch, feed, drain], max_cycles=200)[2]
    expected = gemm(tiny, a, b, ep, a_unsigned=bool(a_unsigned),
                    out_bits=OUT16_BITS if out16 else None)
    assert np.array_equal(np.array(beats)[:, :2], expected)
    # the array sees the last beat FEED_STAGES (2) cycles after it is issued;
    # 2 (buffer read, register) + cols + 3 (array) + 11 (epilogue: split multiply, two-stage
    # saturation) + 2 (FIFO)
    assert marks["out"] - marks["last"] + FEED_STAGES == dut.latency == tiny.cols + 18


def _command_then(dut, cmds, data_streams=()):
    """Send commands (waiting for each to finish) and record error/busy after each, with the
    number of clock edges from the command's handshake to ``busy`` low."""
    seen = []

    async def bench(ctx):
        for cmd in cmds:
            await stream_send(ctx, dut.cmd, [cmd])
            cycles = 0                  # clock edges after the handshake's edge
            while ctx.get(dut.busy) and cycles < 30:
                await ctx.tick()
                cycles += 1
            seen.append((ctx.get(dut.error), ctx.get(dut.busy), ctx.get(dut.w.ready),
                         ctx.get(dut.a.ready), cycles))
        return seen

    return run_simulation(dut, [bench], max_cycles=100 * len(cmds))[0]


# (command, clock edges after its handshake until ``error`` with ``busy`` low): the range and
# resident-weight checks are registered as the command is taken and decided at the next edge,
# the capacity check two edges later.
@pytest.mark.parametrize("cmd, cycles", [
    ({"m": 0, "k": 4, "n": 4, "load_weights": 1}, 1),
    ({"m": 33, "k": 4, "n": 4, "load_weights": 1}, 1),            # m > max_tokens
    ({"m": 4, "k": 0, "n": 4, "load_weights": 1}, 1),
    ({"m": 4, "k": 97, "n": 4, "load_weights": 1}, 1),            # k > max_gemm_dim
    ({"m": 4, "k": 4, "n": 0, "load_weights": 1}, 1),
    ({"m": 4, "k": 96, "n": 96, "load_weights": 1}, 3),           # weight buffer overflow
    ({"m": 4, "k": 4, "n": 4, "load_weights": 0}, 1),             # no resident weights
])
def test_bad_commands_raise_error_and_never_hang(tiny, cmd, cycles):
    dut = GemmEngine(tiny)
    ((error, busy, w_ready, a_ready, seen_cycles),) = _command_then(dut, [cmd])
    assert (error, busy, w_ready, a_ready) == (1, 0, 0, 0)
    assert seen_cycles == cycles


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
    ((error, busy, _, _, cycles),) = _command_then(
        dut, [{"m": 2, "k": 4, "n": 6, "load_weights": 0}])
    assert (error, busy, cycles) == (1, 0, 1)


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


# ---- command options: unsigned A, 16-bit outputs ---------------------------------------------

def test_interface_of_the_options(tiny):
    dut = GemmEngine(tiny)
    dut._MustUse__silence = dut._array._MustUse__silence = True   # never elaborated
    layout = command_layout(tiny)
    assert list(layout.members)[-2:] == ["a_unsigned", "out16"]
    assert layout["a_unsigned"].width == layout["out16"].width == 1
    assert dut.cmd.payload.shape() == layout
    # a: raw act_width bits; the array's A lanes are one bit wider; o: OUT16_BITS lanes
    assert dut.a.payload.shape() == data.ArrayLayout(signed(tiny.act_width), tiny.rows)
    assert dut._array.a.shape() == data.ArrayLayout(signed(tiny.act_width + 1), tiny.rows)
    assert dut.o.payload.shape() == output_layout(tiny) == \
        data.ArrayLayout(signed(OUT16_BITS), tiny.cols)
    assert OUT16_BITS == 16


def test_harness_packs_unsigned_activations_as_raw_bits(tiny):
    a = np.array([[0, 1, 127, 128, 200, 255]])
    assert raw_activations(tiny, a).tolist() == [[0, 1, 127, -128, -56, -1]]
    signed_a = np.array([[-128, -1, 0, 5, 127]])
    assert raw_activations(tiny, signed_a).tolist() == signed_a.tolist()   # signed: unchanged
    beats = pack_activations(tiny, np.array([[255], [128], [7]]))
    assert beats == [[-1, -128, 7, 0]]
    with pytest.raises(ValueError, match=r"a values must be in the range \[-128, 127\]"):
        run_gemm_jobs(tiny, [GemmJob(a, np.zeros((6, 1), int), EpilogueParams(tiny, 1))])
    with pytest.raises(ValueError, match=r"a values must be in the range \[0, 255\]"):
        run_gemm(tiny, -a, np.zeros((6, 1), int), a_unsigned=True)


def test_harness_checks_the_output_range(tiny):
    beats = [[300, 0, 0, 0]]
    assert unpack_outputs(tiny, beats, 1, 1).tolist() == [[300]]
    with pytest.raises(ValueError, match=r"output values must be in the range \[-128, 127\], "
                                         r"found \[0, 300\]"):
        unpack_outputs(tiny, beats, 1, 1, out_bits=8)


def unsigned_operands(cfg, rng, m, k, n):
    """A in 0..255 (with both ends), B int8, epilogue scaled for int8 outputs."""
    a = rng.integers(0, 256, (m, k))
    a[-1, -1] = 0
    a[0, 0] = 255
    b = rng.integers(-128, 128, (k, n))
    return a, b, EpilogueParams.random(cfg, n, rng, 4 * k)


def to_int16_scale(cfg, ep, by=8):
    """The same epilogue ``2**by`` times finer: outputs spread over the int16 range."""
    return EpilogueParams(cfg, ep.bias.shape[0], ep.bias, ep.mult,
                          np.maximum(ep.shift - by, 0))


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (5, 3, 9), (9, 1, 6), (13, 17, 7)])
def test_unsigned_a_bit_exact(tiny, rng, m, k, n):
    a, b, ep = unsigned_operands(tiny, rng, m, k, n)
    out, run = run_gemm(tiny, a, b, ep, a_unsigned=True)
    expected = gemm(tiny, a, b, ep, a_unsigned=True)
    assert np.array_equal(out, expected)
    assert not np.array_equal(expected, gemm(tiny, raw_activations(tiny, a), b, ep))
    assert run.cycles[0] == gemm_cycles(tiny, m, k, n).total


def test_unsigned_a_extremes_over_the_longest_k(tiny):
    """255 x -128 and 255 x 127 accumulated over k = max_gemm_dim: the (act_width + 1)-bit
    operand and the widened accumulator bound, no wrap; both output widths."""
    k, n = tiny.max_gemm_dim, 8
    a = np.full((6, k), 255)
    a[1] = 0
    a[2, ::2] = 128
    a[3] = 1
    a[4, 1::2] = 127
    b = np.full((k, n), -128)
    b[:, 1] = 127
    b[::3, 2] = 127
    assert gemm_acc(a, b)[0, 0] == 255 * -128 * k
    ep = EpilogueParams(tiny, n, bias=[0, 0, 1 << 20, -(1 << 20), 0, 0, 0, 0],
                        mult=[1, 1, 1, 1, (1 << 16) - 1, 1, 3, 1],
                        shift=[14, 14, 14, 14, 30, 0, 16, 48])
    results = []
    for out16 in (False, True):
        out, _ = run_gemm(tiny, a, b, ep, a_unsigned=True, out16=out16)
        expected = gemm(tiny, a, b, ep, a_unsigned=True, out_bits=16 if out16 else None)
        assert np.array_equal(out, expected)
        results.append(expected)
    int8, int16 = results
    assert int8.max() == 127 and int8.min() == -128                  # int8 saturation
    assert int16.min() == -32768 and int16.max() > 127               # int16 saturation, wider
    assert int16[0, 0] == np.floor(-255 * 128 * k / 2 ** 14 + 0.5) == -191   # not saturated
    assert int8[0, 0] == -128


def test_out16_saturation_edges(tiny):
    """sat16 at +32767 / -32768 (exactly and past it, also after rounding) and values between
    the int8 and the int16 range; the same command without out16 saturates to int8."""
    values = [32767, 32768, 1 << 30, -32768, -32769, -(1 << 30), 128, -129, 1000, -1000,
              12345, -23456, 127, -128, 0, 1]
    n = len(values) + 4
    bias = values + [65533, 65535, -65536, -65538]          # shifted by 1 with rounding below
    shift = [0] * len(values) + [1, 1, 1, 1]           # 32767 (32766.5 up), 32768 -> 32767,
    a = np.ones((3, 1), int)                            # -32768 exact, -32769 -> -32768
    a[1] = -1                                           # row 1: the negated values
    b = np.zeros((1, n), int)
    ep = EpilogueParams(tiny, n, bias=bias, mult=[1] * n, shift=shift)
    jobs = [GemmJob(a, b, ep, out16=True), GemmJob(a, k=1, n=n)]
    run = run_gemm_jobs(tiny, jobs)
    expected16 = gemm(tiny, a, b, ep, out_bits=OUT16_BITS)
    assert expected16[0].tolist() == [32767, 32767, 32767, -32768, -32768, -32768, 128, -129,
                                      1000, -1000, 12345, -23456, 127, -128, 0, 1,
                                      32767, 32767, -32768, -32768]
    assert np.array_equal(run.outputs[0], expected16)
    assert np.array_equal(run.outputs[1], gemm(tiny, a, b, ep))
    assert run.outputs[1].max() == 127 and run.outputs[1].min() == -128
    assert run.errors == [0, 0]


@pytest.mark.parametrize("m, k, n, stall", [(6, 7, 10, 0.0), (9, 13, 5, 0.4), (3, 2, 3, 0.6)])
def test_both_options_together(tiny, rng, m, k, n, stall):
    a, b, ep = unsigned_operands(tiny, rng, m, k, n)
    ep = to_int16_scale(tiny, ep)
    out, run = run_gemm(tiny, a, b, ep, a_unsigned=True, out16=True, rng=rng, stall=stall)
    expected = gemm(tiny, a, b, ep, a_unsigned=True, out_bits=16)
    assert np.array_equal(out, expected)
    assert np.abs(expected).max() > 127                       # wider than int8
    if stall:
        assert run.cycles[0] > gemm_cycles(tiny, m, k, n).total
    else:
        assert run.cycles[0] == gemm_cycles(tiny, m, k, n).total


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_options_are_latched_per_command(tiny, rng, stall):
    """Commands with and without each option in one run, reusing resident weights across
    them (the options belong to the command, not to the weights), a rejected command with
    options in between; without stalls, cycle counts are those of commands without options."""
    m, k, n = 6, 9, 7
    a_s, b, ep = operands(tiny, rng, m, k, n)
    ep = to_int16_scale(tiny, ep, 3)            # int8 results saturate, int16 ones do not
    a_u = rng.integers(0, 256, (m, k))
    a_u[:, 0] = 255
    b2 = rng.integers(-128, 128, (k, 3))
    ep2 = to_int16_scale(tiny, EpilogueParams.random(tiny, 3, rng, k), 4)
    w1, w2 = (b, ep), (b2, ep2)
    u, o16 = dict(a_unsigned=True), dict(out16=True)
    jobs = [   # (job options, A, weights loaded or reused, expected result or None)
        ({}, a_s, w1, True),
        (u, a_u, w1, False),
        (o16, a_s, w1, False),
        ({**u, **o16}, a_u, w1, False),
        ({**u, **o16}, a_u[:, :k - 1], None, None),      # k mismatch: rejected
        ({}, a_s, w1, False),
        ({**u, **o16}, a_u, w2, True),
        (o16, a_s[:2], w2, False),
        (u, a_u[:4], w2, False),
    ]
    gemm_jobs = []
    for opts, a, weights, load in jobs:
        if weights is None:
            gemm_jobs.append(GemmJob(a, k=k - 1, n=n, expect_error=True, **opts))
        elif load:
            gemm_jobs.append(GemmJob(a, *weights, **opts))
        else:
            gemm_jobs.append(GemmJob(a, k=k, n=weights[0].shape[1], **opts))
    run = run_gemm_jobs(tiny, gemm_jobs, rng=rng, stall=stall)
    assert run.errors == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    for i, (opts, a, weights, _) in enumerate(jobs):
        if weights is None:
            assert run.outputs[i] is None
            continue
        expected = gemm(tiny, a, *weights, a_unsigned=bool(opts.get("a_unsigned")),
                        out_bits=OUT16_BITS if opts.get("out16") else None)
        assert np.array_equal(run.outputs[i], expected), i
    # the options did matter
    assert np.abs(run.outputs[2]).max() > 127
    assert not np.array_equal(run.outputs[1], gemm(tiny, raw_activations(tiny, a_u), b, ep))
    if stall == 0:
        assert run.cycles[0] == gemm_cycles(tiny, m, k, n).total
        assert run.cycles[1:4] == [gemm_cycles(tiny, m, k, n, load_weights=False).total] * 3
        assert run.cycles[5] == gemm_cycles(tiny, m, k, n, load_weights=False).total
        assert run.cycles[6] == gemm_cycles(tiny, m, k, 3).total
        assert run.cycles[7] == gemm_cycles(tiny, 2, k, 3, load_weights=False).total
        assert run.cycles[8] == gemm_cycles(tiny, 4, k, 3, load_weights=False).total


@pytest.mark.parametrize("act_width", [4, 16])
def test_saturation_edges_for_other_act_widths(tiny, act_width):
    """The two-stage saturation at the bounds of ``act_width`` bits (4: more bits above the
    int8 split; 16: no bits between act_width - 1 and OUT16_BITS - 1) and of OUT16_BITS, with
    random stalls on every stream."""
    from dataclasses import replace
    cfg = replace(tiny, act_width=act_width)
    hi = (1 << (act_width - 1)) - 1
    values = [hi, hi + 1, -hi - 1, -hi - 2, 0, 1, -1, 32767, 32768, -32768, -32769,
              1 << 30, -(1 << 30), 5, -6, hi - 1]
    n = len(values)
    a = np.ones((3, 1), int)
    a[1] = -1                                           # row 1: the negated values
    b = np.zeros((1, n), int)
    ep = EpilogueParams(cfg, n, bias=values, mult=[1] * n, shift=[0] * n)
    run = run_gemm_jobs(cfg, [GemmJob(a, b, ep), GemmJob(a, k=1, n=n, out16=True)],
                        rng=np.random.default_rng(5), stall=0.3)
    expected = gemm(cfg, a, b, ep)
    expected16 = gemm(cfg, a, b, ep, out_bits=OUT16_BITS)
    assert expected[0].tolist() == [hi, hi, -hi - 1, -hi - 1, 0, 1, -1] + \
        [min(max(v, -hi - 1), hi) for v in values[7:]]
    assert expected16[0, 7:11].tolist() == [32767, 32767, -32768, -32768]
    assert np.array_equal(run.outputs[0], expected)
    assert np.array_equal(run.outputs[1], expected16)
    assert run.errors == [0, 0]
