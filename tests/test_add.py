"""golden.add against hand cases and a float reference; rtl.add.ResidualAdd against golden.add."""

import json

import numpy as np
import pytest

from golden.add import AddParams, add_int, add_params
from golden.config import AccelConfig
from rtl.add import ResidualAdd
from sim.bench_add import first_pair_output, pack_beats, run_pairs, timed_pairs
from sim.streams import run_simulation

# -- golden model -------------------------------------------------------------------------------


def test_golden_hand_cases():
    p = AddParams(1, 1, 0)                                   # plain saturating add
    assert add_int([3, 100, -100, 127, -128, 0], [-5, 100, -100, 127, -128, 0], p).tolist() \
        == [-2, 127, -128, 127, -128, 0]
    # shift 1: x / 2 rounded half up, ties toward +inf: 0.5 -> 1, -0.5 -> 0, 1.5 -> 2,
    # -1.5 -> -1, -2.5 -> -2
    p = AddParams(1, 1, 1)
    assert add_int([1, -1, 3, -3, -5], [0, 0, 0, 0, 0], p).tolist() == [1, 0, 2, -1, -2]
    # 0.75 a + 0.25 b: (3 a + b + 2) >> 2
    p = AddParams(3, 1, 2)
    assert add_int([10, -10, 1, 0], [2, -2, 1, -2], p).tolist() == [8, -8, 1, 0]
    # ISA example: (40000 a + 9000 b + 2**15) >> 16; 100 -> 61.03 + 0.69 -> 62 (61.72)
    assert add_int([100, -128], [5, -128], AddParams(40000, 9000, 16)).tolist() == [62, -96]
    assert add_int([127, -128], [-128, 127], AddParams(0, 0, 5)).tolist() == [0, 0]
    big = AddParams(65535, 65535, 62)
    assert add_int([127, -128], [127, -128], big).tolist() == [0, 0]
    # shift 17: 2 * 127 * 65535 / 2**17 = 126.998 -> 127; -128 * 65535 * 2 / 2**17 -> -128
    assert add_int([127, -128], [127, -128], AddParams(65535, 65535, 17)).tolist() == [127, -128]


def test_golden_vs_float_reference(rng):
    """Every result is the exact real value rounded half up, then clipped."""
    for _ in range(40):
        p = AddParams(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 1 << 16)),
                      int(rng.integers(0, 63)))
        a = rng.integers(-128, 128, 500)
        b = rng.integers(-128, 128, 500)
        real = (a * float(p.ma) + b * float(p.mb)) / 2.0 ** p.shift   # exact in float64
        ref = np.clip(np.floor(real + 0.5), -128, 127)
        assert np.array_equal(add_int(a, b, p), ref)
        assert np.abs(add_int(a, b, p) - np.clip(real, -128, 127)).max() <= 0.5


@pytest.mark.parametrize("scales", [(0.05, 0.02, 0.06), (0.01, 0.3, 0.25), (0.1, 0.1, 0.1),
                                    (1e-4, 2e-4, 3e-3)])
def test_golden_add_params_vs_float_residual(scales, rng):
    s_a, s_b, s_out = scales
    p = add_params(s_a, s_b, s_out)
    assert max(p.ma, p.mb) >= 1 << 15                       # the larger ratio is normalised
    a = rng.integers(-128, 128, 2000)
    b = rng.integers(-128, 128, 2000)
    real = np.clip((a * s_a + b * s_b) / s_out, -128, 127)
    err = np.abs(add_int(a, b, p) - real)
    # rounding (0.5) plus the multipliers' representation error (< 2**-15 relative)
    assert err.max() <= 0.5 + 256 * max(s_a, s_b) / s_out * 2.0 ** -16


def test_golden_wider_formats():
    p = AddParams(1, 3, 1, mult_width=2)
    assert add_int([1000], [-2000], p, 16, in_bits=12).tolist() == [-2500]
    assert add_int([2047], [2047], AddParams(1, 1, 0), 8, in_bits=12).tolist() == [127]


def test_golden_isa_reexports_and_records():
    import golden.isa as isa
    assert isa.AddParams is AddParams and isa.add_int is add_int
    p = AddParams(40000, 123, 17)
    assert isa.unpack_add(isa.pack_add(p)) == p
    bad = bytes([1, 0, 1, 0, 63, 0, 0, 0])
    with pytest.raises(ValueError, match=r"shift must be in the range \[0, 62\], not 63"):
        isa.unpack_add(bad)


@pytest.mark.parametrize("args, kw, exc, match", [
    ((-1, 0, 0), {}, ValueError, r"ma must be in the range \[0, 65535\], not -1"),
    ((0, 65536, 0), {}, ValueError, r"mb must be in the range \[0, 65535\], not 65536"),
    ((0, 0, 63), {}, ValueError, r"shift must be in the range \[0, 62\], not 63"),
    ((0, 0, -1), {}, ValueError, r"shift must be in the range \[0, 62\], not -1"),
    ((16, 0, 0), {"mult_width": 4}, ValueError, r"ma must be in the range \[0, 15\], not 16"),
    ((0, 0, 0), {"mult_width": 33}, ValueError, r"mult_width must be in the range \[1, 32\]"),
    ((1.5, 0, 0), {}, TypeError, r"ma must be an integer, not 1.5"),
    ((0, 0, "2"), {}, TypeError, r"shift must be an integer"),
])
def test_golden_bad_params(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        AddParams(*args, **kw)


def test_golden_bad_arguments():
    p = AddParams(1, 1, 0)
    assert AddParams(np.int64(3), np.uint16(4), np.int8(5)) == (3, 4, 5)
    with pytest.raises(ValueError, match=r"a and b must have the same shape"):
        add_int(np.zeros((2, 3), int), np.zeros((3, 2), int), p)
    with pytest.raises(ValueError, match=r"b values must be in the range \[-128, 127\]"):
        add_int([0], [128], p)
    with pytest.raises(TypeError, match=r"a must be an integer array"):
        add_int([0.5], [1], p)
    with pytest.raises(ValueError, match=r"out_bits must be in the range \[2, 16\], not 1"):
        add_int([0], [0], p, 1)
    with pytest.raises(ValueError, match=r"in_bits must be in the range \[2, 16\], not 17"):
        add_int([0], [0], p, in_bits=17)
    with pytest.raises(TypeError, match=r"p must be an AddParams, not tuple"):
        add_int([0], [0], (1, 1, 0))
    with pytest.raises(ValueError, match=r"s_out must be a positive finite number"):
        add_params(0.1, 0.1, 0.0)
    with pytest.raises(ValueError, match=r"too large for a 16-bit multiplier"):
        add_params(1e6, 0.1, 1.0)


# -- RTL vs golden --------------------------------------------------------------------------------


def _vectors(rng, n, lanes, edge=()):
    a = np.concatenate([np.array([e[0] for e in edge], np.int64), rng.integers(-128, 128, n)])
    b = np.concatenate([np.array([e[1] for e in edge], np.int64), rng.integers(-128, 128, n)])
    n = len(a) // lanes * lanes
    return a[:n], b[:n]


EDGE = [(0, 0), (-128, -128), (127, 127), (-128, 127), (127, -128), (1, 0), (-1, 0), (0, 1),
        (0, -1), (3, 0), (-3, 0), (1, -1), (-5, 2)]


def _check(dut, a, b, p, rng, stall=0.3, **kw):
    out = run_pairs(dut, pack_beats(a, dut.lanes), pack_beats(b, dut.lanes), rng, stall,
                    cmd=p, **kw)
    assert out == pack_beats(add_int(a, b, p), dut.lanes)


@pytest.mark.parametrize("lanes", [None, 1, 3])
def test_rtl_bit_exact_random_stalls(tiny, rng, lanes):
    dut = ResidualAdd(tiny, lanes=lanes)
    assert dut.lanes == (tiny.cols if lanes is None else lanes)
    for p in (add_params(0.05, 0.02, 0.06), AddParams(40000, 9000, 16),
              AddParams(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 1 << 16)),
                        int(rng.integers(10, 25)))):
        a, b = _vectors(rng, 60, dut.lanes, EDGE)
        _check(dut, a, b, p, rng)


@pytest.mark.parametrize("p", [
    AddParams(0, 0, 0), AddParams(0, 0, 62), AddParams(1, 1, 0), AddParams(65535, 65535, 0),
    AddParams(65535, 65535, 62), AddParams(65535, 65535, 16), AddParams(65535, 0, 9),
    AddParams(1, 1, 1), AddParams(3, 1, 2), AddParams(1, 1, 24), AddParams(1 << 15, 1 << 15, 25),
    AddParams(65535, 65535, 25), AddParams(65535, 65535, 26), AddParams(1 << 15, 65535, 27),
    AddParams(65535, 1, 40)], ids=lambda p: f"{p.ma}_{p.mb}_{p.shift}")
def test_rtl_edge_cases(tiny, rng, p):
    """Zeros, extremes, zero multipliers, shifts 0 / 62 / around the sum's width (25),
    saturation both ways and rounding ties."""
    dut = ResidualAdd(tiny)
    a, b = _vectors(rng, 24, dut.lanes, EDGE)
    _check(dut, a, b, p, rng, stall=0.3)


def test_rtl_saturates_both_ways_and_ties(tiny, rng):
    p = AddParams(1, 1, 1)
    a = np.array([127, -128, 1, -1, 3, -3, 5, -5])
    b = np.array([127, -128, 0, 0, 0, 0, 0, 0])
    y = add_int(a, b, p)
    assert y.tolist() == [127, -128, 1, 0, 2, -1, 3, -2]
    _check(ResidualAdd(tiny), a, b, p, rng)


def test_rtl_cmd_sampled_per_pair(tiny, rng):
    """Each pair uses the cmd present when it is accepted (one set per beat here)."""
    dut = ResidualAdd(tiny, lanes=2)
    a, b = _vectors(rng, 40, 2, EDGE)
    beats = len(a) // 2
    ps = [AddParams(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 1 << 16)),
                    int(rng.integers(0, 63))) for _ in range(beats)]
    out = run_pairs(dut, pack_beats(a, 2), pack_beats(b, 2), rng, 0.3, cmds=ps)
    want = [add_int(a[2 * i:2 * i + 2], b[2 * i:2 * i + 2], p).tolist()
            for i, p in enumerate(ps)]
    assert out == want


@pytest.mark.parametrize("stalls", [(0.8, 0.0, 0.0), (0.0, 0.8, 0.0), (0.0, 0.0, 0.8),
                                    (0.6, 0.1, 0.6)])
def test_rtl_join_under_lopsided_stalls(tiny, rng, stalls):
    """One stream far behind the other, or the output mostly blocked: no beat is paired with
    a stale beat, dropped or duplicated."""
    dut = ResidualAdd(tiny, lanes=2)
    a, b = _vectors(rng, 50, 2, EDGE)
    _check(dut, a, b, AddParams(30000, 50000, 15), rng, stalls=stalls)


def test_rtl_join_waits_for_both(tiny):
    """``a`` alone is not taken and produces nothing; ``b`` arriving later completes the pair."""
    dut = ResidualAdd(tiny, lanes=1)
    p = AddParams(1, 2, 0)

    async def bench(ctx):
        ctx.set(dut.cmd, {"ma": p.ma, "mb": p.mb, "shift": p.shift})
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.a.valid, 1)
        ctx.set(dut.a.payload, [5])
        seen = []
        for _ in range(6):
            seen.append((ctx.get(dut.a.ready), ctx.get(dut.b.ready), ctx.get(dut.o.valid)))
            await ctx.tick()
        assert seen == [(0, 1, 0)] * 6      # b would be taken, a waits
        ctx.set(dut.b.valid, 1)
        ctx.set(dut.b.payload, [7])
        assert ctx.get(dut.a.ready) and ctx.get(dut.b.ready)
        await ctx.tick()
        ctx.set(dut.a.valid, 0)
        ctx.set(dut.b.valid, 0)
        while not ctx.get(dut.o.valid):
            await ctx.tick()
        return [int(v) for v in ctx.get(dut.o.payload)]

    out, = run_simulation(dut, [bench], max_cycles=30)
    assert out == add_int([5], [7], p).tolist() == [19]


def test_rtl_latency_and_throughput(tiny, rng):
    dut = ResidualAdd(tiny)
    p = AddParams(40000, 9000, 16)

    async def bench(ctx):
        ctx.set(dut.cmd, {"ma": p.ma, "mb": p.mb, "shift": p.shift})
        return await first_pair_output(ctx, dut, [100, -128, 0, 1], [5, -128, 0, 1])

    (cycles, value), = run_simulation(dut, [bench], max_cycles=30)
    assert cycles == dut.latency == 3
    assert value == add_int([100, -128, 0, 1], [5, -128, 0, 1], p).tolist()
    # back to back: one beat per cycle after the fill
    a, b = _vectors(rng, 80, dut.lanes)
    outs, stamps = timed_pairs(ResidualAdd(tiny), pack_beats(a, 4), pack_beats(b, 4), p)
    assert outs == pack_beats(add_int(a, b, p), 4)
    assert stamps == list(range(dut.latency, dut.latency + len(a) // 4))


def test_rtl_bad_shift_raises_error(tiny, rng):
    """shift 63 (outside [0, 62]) sets the sticky error; the beats still come out (as 0)."""
    dut = ResidualAdd(tiny)
    a, b = _vectors(rng, 16, 4, EDGE[:4])
    bad = {"ma": 65535, "mb": 65535, "shift": 63}
    out, err, cleared = run_pairs(dut, pack_beats(a, 4), pack_beats(b, 4), rng, 0.3, cmd=bad,
                                  error_clear_after=True)
    assert out == [[0] * 4] * (len(a) // 4)
    assert (err, cleared) == (1, 0)
    # a valid shift raises nothing
    dut = ResidualAdd(tiny)
    p = AddParams(65535, 65535, 62)
    out, err, _ = run_pairs(dut, pack_beats(a, 4), pack_beats(b, 4), rng, 0.3, cmd=p,
                            error_clear_after=True)
    assert out == pack_beats(add_int(a, b, p), 4) and err == 0


def test_rtl_other_widths(rng):
    cfg = AccelConfig(rows=2, cols=2, act_width=6, mult_width=12, max_tokens=8, max_dim=8,
                      max_hidden=16)
    dut = ResidualAdd(cfg)
    a = np.concatenate([[-32, 31, -32, 31], rng.integers(-32, 32, 40)])
    b = np.concatenate([[-32, 31, 31, -32], rng.integers(-32, 32, 40)])
    for p in (AddParams(4095, 4095, 0, mult_width=12), AddParams(3000, 1000, 12, mult_width=12),
              AddParams(4095, 4095, 19, mult_width=12), AddParams(4095, 4095, 62, mult_width=12)):
        out = run_pairs(dut, pack_beats(a, 2), pack_beats(b, 2), rng, 0.3, cmd=p)
        assert out == pack_beats(add_int(a, b, p, 6), 2)


def test_rtl_bad_parameters(tiny):
    with pytest.raises(ValueError, match=r"lanes must be in the range \[1, 64\], not 0"):
        ResidualAdd(tiny, lanes=0)
    with pytest.raises(ValueError, match=r"lanes must be in the range \[1, 64\], not 65"):
        ResidualAdd(tiny, lanes=65)
    with pytest.raises(TypeError, match=r"lanes must be an integer, not 2.0"):
        ResidualAdd(tiny, lanes=2.0)
    with pytest.raises(TypeError, match=r"cfg must be an AccelConfig"):
        ResidualAdd("tiny")


def test_rtl_emits_verilog(tiny):
    from amaranth.back import verilog
    assert "module residual_add" in verilog.convert(ResidualAdd(tiny), name="residual_add")


def test_bench_figures(tiny):
    """The benchmark's run() (``python -m sim.bench add``) on a small operand."""
    from argparse import Namespace

    from sim.bench_add import run
    out = run(Namespace(cfg=tiny, n=90, seed=0, stall=0.3))
    assert out["bit_exact"] is True and out["stalled_bit_exact"] is True
    assert out["beats"] == out["ideal_cycles"] == 23
    assert out["cycles"] == 23 + 3
    assert out["utilization"] == round(23 / 26, 4)
    assert out["accuracy"]["max_abs_err_lsb"] <= 0.5 + 1e-3
    json.dumps(out)
    with pytest.raises(ValueError, match=r"--n must be in the range \[1, 1000000\], not 0"):
        run(Namespace(cfg=tiny, n=0, seed=0, stall=0.3))
