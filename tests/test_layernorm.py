import math

import numpy as np
import pytest
import torch

from golden.config import PRESETS, AccelConfig
from golden.layernorm import LnParams, isqrt, layernorm_int, layernorm_row, ln_params, var_bits
from rtl.layernorm import (
    LayerNorm,
    ln_banks,
    ln_output_cycles,
    ln_reducers,
    ln_words,
    reducer_cycles,
    stats_stages,
)
from sim.nonlinear import (
    load_ln_params,
    recv_and_clear_error,
    row_beats,
    run_rows,
    run_timed,
    unpack_words,
    word_beats,
)
from sim.streams import run_simulation, stream_recv, stream_send

# -- golden ----------------------------------------------------------------------------------

def test_golden_isqrt():
    v = np.array([0, 1, 2, 3, 4, 15, 16, 17, (1 << 40) - 1, 1 << 40])
    assert list(isqrt(v)) == [math.isqrt(int(a)) for a in v]


def test_golden_hand_case():
    # x = [1, -1]: n=2, S1=0, S2=2, V = 2*2 - 0 = 4, r = isqrt(4 << 16) = 512, L = 10,
    # inv = 2**25 // 512 = 65536; c = [2, -2];
    # z = round_shift(c * 65536, 15 + 10 - 10 - 8) = [1024, -1024] (= +-1.0 in Q.10)
    # gamma = 3, beta = 5 << 10: acc = [3*1024 + 5120, -3*1024 + 5120] = [8192, 2048]
    # mult/shift = 1/2**10 -> [8, 2]  (float: 3 * (+-1) + 5)
    p = LnParams([3, 3], [5 << 10, 5 << 10], 1, 10)
    assert list(layernorm_row(np.array([1, -1]), p)) == [8, 2]


def test_golden_zero_variance_gives_beta():
    p = LnParams(np.full(8, 1000), np.arange(8) << 10, 1, 10)
    assert list(layernorm_row(np.full(8, -128), p)) == list(range(8))
    p_eps = LnParams(np.full(8, 1000), np.arange(8) << 10, 1, 10, eps_int=64)
    assert list(layernorm_row(np.full(8, 17), p_eps)) == list(range(8))


def test_golden_vs_torch(rng):
    errs = []
    for n in (16, 192):
        g = rng.normal(1, 0.3, n)
        b = rng.normal(0, 0.5, n)
        p = ln_params(g, b, n=n, scale_in=0.05, scale_out=4 / 128, eps=1e-5)
        for sd in (3, 20, 60):
            x = np.clip(np.round(rng.normal(rng.normal(0, 10), sd, (10, n))), -128, 127)
            x = x.astype(np.int64)
            ref = torch.nn.functional.layer_norm(torch.tensor(x * 0.05), (n,), torch.tensor(g),
                                                 torch.tensor(b), 1e-5).numpy()
            ref = np.clip(ref / (4 / 128), -128, 127)
            errs.append(np.abs(layernorm_int(x, p) - ref).ravel())
    err = np.concatenate(errs)
    report = (f"max {err.max():.3f} LSB, mean {err.mean():.3f} LSB, "
              f"{100 * (err <= 1).mean():.3f}% within 1 LSB")
    assert err.max() < 1.6, report
    assert (err <= 1).mean() >= 0.99, report


def test_golden_bad_parameters():
    with pytest.raises(ValueError, match=r"shift must be in the range \[0, 62\], not 63"):
        LnParams([1], [0], 1, 63)
    with pytest.raises(ValueError, match=r"mult must be in the range \[0, 65535\], not 65536"):
        LnParams([1], [0], 1 << 16, 3)
    with pytest.raises(ValueError, match=r"gamma values must be in the range"):
        LnParams([1 << 15], [0], 1, 3)
    with pytest.raises(ValueError, match=r"eps_int must be in the range \[0, 4294967295\]"):
        LnParams([1], [0], 1, 3, eps_int=-1)
    with pytest.raises(ValueError, match=r"row length 3 exceeds the 2 gamma/beta entries"):
        layernorm_row(np.zeros(3, int), LnParams([1, 1], [0, 0], 1, 3))


def test_golden_bad_scales():
    with pytest.raises(ValueError, match=r"scale_out must be a positive finite number, not 0"):
        ln_params([1.0], [0.0], n=1, scale_in=0.1, scale_out=0)
    with pytest.raises(ValueError, match=r"eps must be a non-negative finite number"):
        ln_params([1.0], [0.0], n=1, scale_in=0.1, scale_out=0.1, eps=-1.0)


def test_rtl_bad_parameters():
    with pytest.raises(TypeError, match=r"cfg must be an AccelConfig, not None"):
        LayerNorm(None)
    with pytest.raises(ValueError, match=r"max_dim must be in the range \[1, 8192\], not 9000"):
        AccelConfig(max_dim=9000)


# -- RTL vs golden -----------------------------------------------------------------------------

def _check(dut, rows, p, rng, stall=0.3):
    data, last = run_rows(dut, rows, rng, stall, setup=lambda ctx: load_ln_params(ctx, dut, p),
                          slack=600 + 12 * len(p.gamma))
    assert data == [int(v) for r in rows for v in layernorm_row(r, p)]
    assert last == [b["last"] for b in row_beats(rows)]


def _params(cfg, rng, eps=1e-5, scale_out=4 / 128):
    d = cfg.max_dim
    return ln_params(rng.normal(1, 0.4, d), rng.normal(0, 0.5, d), n=d, scale_in=0.05,
                     scale_out=scale_out, eps=eps, mult_width=cfg.mult_width)


def test_rtl_random_rows(tiny, rng):
    p = _params(tiny, rng)
    rows = [rng.integers(-128, 128, size=n) for n in rng.integers(1, tiny.max_dim + 1, 8)]
    _check(LayerNorm(tiny), rows, p, rng)


def test_rtl_edge_rows(tiny, rng):
    d = tiny.max_dim
    p0 = _params(tiny, rng, eps=0.0)
    assert p0.eps_int == 0
    spike = np.full(d, -128)
    spike[3] = 127
    rows = [
        np.full(d, 77),                               # zero variance, eps = 0: r = 0 path
        np.full(d, -128),                             # most negative, zero variance
        [5],                                          # length 1
        [-128],
        np.array([-128, 127] * (d // 2)),             # maximum variance, max length
        spike,                                        # one dominant element
        rng.integers(-128, 128, size=d),
        [0, 1],                                       # tiny variance
    ]
    _check(LayerNorm(tiny), rows, p0, rng)


def test_rtl_saturation_and_extreme_params(tiny, rng):
    d = tiny.max_dim
    gamma = np.where(np.arange(d) % 2, (1 << 15) - 1, -(1 << 15))
    beta = np.where(np.arange(d) % 3, (1 << 31) - 1, -(1 << 31))
    p = LnParams(gamma, beta, (1 << 16) - 1, 30, eps_int=(1 << 32) - 1)
    rows = [rng.integers(-128, 128, size=d), np.array([-128, 127] * (d // 2)), np.full(4, 9)]
    exp = layernorm_int(rows[0], p)
    assert exp.min() == -128 and exp.max() == 127
    _check(LayerNorm(tiny), rows, p, rng)
    p2 = LnParams(gamma, np.zeros(d, int), 1 << 15, 12, eps_int=0)
    _check(LayerNorm(tiny), rows, p2, rng)


def test_rtl_heavy_stalls(tiny, rng):
    p = _params(tiny, rng)
    rows = [rng.integers(-60, 60, size=n) for n in (32, 3, 32, 1)]
    _check(LayerNorm(tiny), rows, p, rng, stall=0.6)
    _check(LayerNorm(tiny), rows, p, rng, stall=0.0)


def test_rtl_overlong_row_raises_error(tiny, rng):
    d = tiny.max_dim
    p = _params(tiny, rng)
    dut = LayerNorm(tiny)
    good1, bad, good2 = (rng.integers(-100, 100, size=n) for n in (9, d + 3, d))
    beats = word_beats([good1, bad, good2], dut.lanes)
    expect = [int(v) for r in (good1, good2) for v in layernorm_row(r, p)]
    words = ln_words(tiny) + 3          # the two good rows' words

    async def send(ctx):
        await load_ln_params(ctx, dut, p)
        assert not ctx.get(dut.error)
        await stream_send(ctx, dut.i, beats, rng=rng, stall=0.2)

    async def recv(ctx):
        return await recv_and_clear_error(ctx, dut, words, rng=rng, stall=0.2)

    _, (out, err, cleared) = run_simulation(dut, [send, recv], max_cycles=3000)
    assert out == expect
    assert err == 1 and cleared == 0


def test_geometry_of_presets():
    """Lanes, reducers and row buffers derived from the configuration (rows of ``max_dim``
    channels at one word per cycle)."""
    tiny, default = PRESETS["tiny"], PRESETS["default"]
    assert [reducer_cycles(c) for c in (tiny, default)] == [25, 25]
    assert (ln_words(tiny), ln_reducers(tiny), ln_banks(tiny), stats_stages(tiny)) == (8, 4, 6, 3)
    assert (ln_words(default), ln_reducers(default), ln_banks(default),
            stats_stages(default)) == (24, 2, 4, 3)
    one = tiny.replace(max_dim=1)
    assert (ln_words(one), ln_reducers(one), ln_banks(one)) == (1, 4, 8)
    wide = tiny.replace(max_dim=4096, cols=1)
    assert (ln_reducers(wide), ln_banks(wide), stats_stages(wide)) == (1, 3, 2)
    assert stats_stages(tiny.replace(cols=16)) == 4 and stats_stages(tiny.replace(cols=8)) == 3


@pytest.mark.parametrize("n", [32, 29, 5])
def test_rtl_latency_and_throughput(tiny, rng, n):
    p = _params(tiny, rng)
    dut = LayerNorm(tiny)
    rows = [rng.integers(-100, 100, size=n) for _ in range(9)]
    outs, stamps = run_timed(dut, word_beats(rows, dut.lanes),
                             setup=lambda ctx: load_ln_params(ctx, dut, p), max_cycles=3000,
                             read=lambda q: [q])
    assert unpack_words(outs)[0] == [int(v) for r in rows for v in layernorm_row(r, p)]
    assert dut.var_width == var_bits(8, 32) == 49 and dut.reducer_cycles == 25
    assert dut.latency == dut.stats_stages + dut.reducer_cycles + 11 == 39
    w = -(-n // dut.lanes)
    assert stamps[0] == w + dut.latency
    model = ln_output_cycles(tiny, len(rows), w)
    assert stamps[::w] == [f for f, _ in model] and stamps[w - 1::w] == [e for _, e in model]
    if w * dut.reducers >= dut.reducer_cycles:
        # rows back to back, one word per cycle
        assert stamps == list(range(stamps[0], stamps[0] + w * len(rows)))
    else:
        # short rows: paced by the reducers (`reducers` rows per reducer_cycles cycles) and
        # the row buffers
        assert stamps[-1] - stamps[0] > w * len(rows)


@pytest.mark.parametrize("max_dim", [30, 31])
def test_rtl_overlong_last_word_raises_error(tiny, rng, max_dim):
    """``max_dim`` not a multiple of ``cols``: a row whose last word holds more channels than
    fit is as malformed as a row of too many words; both are dropped with ``error``."""
    cfg = tiny.replace(max_dim=max_dim)
    p = _params(cfg, rng)
    dut = LayerNorm(cfg)
    good = [rng.integers(-100, 100, size=n) for n in (max_dim, 3, max_dim - 1)]
    rows = [good[0], rng.integers(-100, 100, size=max_dim + 1), good[1],
            rng.integers(-100, 100, size=32 + 2), good[2]]
    expect = [int(v) for r in good for v in layernorm_row(r, p)]
    words = sum(-(-len(r) // dut.lanes) for r in good)

    async def send(ctx):
        await load_ln_params(ctx, dut, p)
        await stream_send(ctx, dut.i, word_beats(rows, dut.lanes), rng=rng, stall=0.2)

    async def recv(ctx):
        return await recv_and_clear_error(ctx, dut, words, rng=rng, stall=0.2)

    _, (out, err, cleared) = run_simulation(dut, [send, recv], max_cycles=3000)
    assert out == expect
    assert err == 1 and cleared == 0


def test_rtl_ignores_unused_lanes(tiny, rng):
    """Lanes past ``count`` in a row's last word (random here) do not enter the statistics."""
    p = _params(tiny, rng)
    dut = LayerNorm(tiny)
    rows = [rng.integers(-128, 128, size=n) for n in (5, 31, 2, 17)]
    beats = word_beats(rows, dut.lanes)
    for b in beats:
        b["data"][b["count"]:] = [int(v) for v in rng.integers(-128, 128,
                                                                dut.lanes - b["count"])]

    async def send(ctx):
        await load_ln_params(ctx, dut, p)
        await stream_send(ctx, dut.i, beats, rng=rng, stall=0.3)

    async def recv(ctx):
        return await stream_recv(ctx, dut.o, len(beats), rng=rng, stall=0.3, convert=False)

    _, out = run_simulation(dut, [send, recv], max_cycles=3000)
    data, last = unpack_words(out)
    assert data == [int(v) for r in rows for v in layernorm_row(r, p)]
    assert last == [b["last"] for b in row_beats(rows)]


@pytest.mark.parametrize("cols,max_dim", [(1, 12), (3, 13), (8, 20), (16, 40)])
def test_rtl_word_widths(rng, cols, max_dim):
    """Other word widths: one channel per word, words of 3 (rows end anywhere in a word),
    8 and 16 channels (three and four levels of the statistics adder trees)."""
    cfg = AccelConfig(rows=2, cols=cols, max_tokens=8, max_dim=max_dim, max_hidden=64,
                      name=f"cols{cols}")
    p = _params(cfg, rng)
    rows = [rng.integers(-128, 128, size=n) for n in rng.integers(1, max_dim + 1, 7)]
    rows += [np.full(max_dim, -128), [127]]
    _check(LayerNorm(cfg), rows, p, rng)


def test_rtl_default_preset(rng):
    """``default``: words of 8 channels, rows of up to 192 channels, two reducers."""
    cfg = PRESETS["default"]
    p = _params(cfg, rng)
    rows = [rng.integers(-128, 128, size=n) for n in (192, 191, 7, 192, 100)]
    _check(LayerNorm(cfg), rows, p, rng, stall=0.2)


def test_rtl_emits_verilog(tiny):
    from amaranth.back import verilog
    assert "module layernorm" in verilog.convert(LayerNorm(tiny), name="layernorm")


@pytest.mark.parametrize("max_dim", [1, 3])
def test_rtl_tiny_max_dim(tiny, rng, max_dim):
    cfg = tiny.replace(max_dim=max_dim)
    p = _params(cfg, rng)
    rows = [rng.integers(-128, 128, size=n) for n in rng.integers(1, max_dim + 1, 9)]
    _check(LayerNorm(cfg), rows, p, rng)
