"""rtl.compaction.TokenCompaction against golden.token_prune.compact_tokens."""

import numpy as np
import pytest

from golden.config import AccelConfig
from golden.token_prune import compact_tokens
from rtl.compaction import TokenCompaction, TokenPrune, bank_stride, divider_cycles, row_stride
from sim.streams import run_simulation, stream_send
from sim.token import (
    BufferHarness,
    marker_words,
    pad_rows,
    read_rows,
    run_compaction,
    sel_beats,
    start,
)


def _cfg(**kw):
    base = {"rows": 4, "cols": 4, "max_tokens": 16, "max_dim": 16, "max_hidden": 64,
            "score_width": 8}
    base.update(kw)
    return AccelConfig(**base)


def _expect(cfg, x, mask, weights):
    xp, _ = pad_rows(x, cfg.cols)
    return compact_tokens(xp, mask, weights, cfg)


@pytest.mark.parametrize("d, stall", [(16, 0.0), (16, 0.3), (6, 0.3), (4, 0.0)])
def test_random_masks(d, stall, rng):
    cfg = _cfg()
    n_tokens = 12
    x = rng.integers(-128, 128, (n_tokens, d))
    mask = rng.random(n_tokens - 1) < 0.5
    weights = rng.integers(0, 256, n_tokens - 1)
    res, dut = run_compaction(cfg, x, mask, weights, rng=rng, stall=stall)
    out, weight = _expect(cfg, x, mask, weights)
    assert not res["error"]
    assert res["rows"] == len(out) and res["weight"] == weight
    np.testing.assert_array_equal(res["out"], out)
    if stall == 0:
        segs = -(-d // cfg.cols)
        assert res["cycles"] == dut.cycles(n_tokens, segs, int((~mask).sum()))


@pytest.mark.parametrize("mult_width", [2, 3, 4, 7, 15, 16])
def test_divider_widths(mult_width, rng):
    """The reciprocal divider (two quotient bits per cycle, one in the last cycle for an odd
    ``mult_width``) against golden, with total weights from 1 to the largest."""
    cfg = _cfg(mult_width=mult_width)
    n_tokens = 12
    for weights in (np.ones(n_tokens - 1, dtype=np.int64),
                    np.full(n_tokens - 1, 255), rng.integers(0, 256, n_tokens - 1),
                    rng.integers(0, 8, n_tokens - 1)):
        x = rng.integers(-128, 128, (n_tokens, 8))
        mask = rng.random(n_tokens - 1) < 0.4
        mask[0] = False
        res, dut = run_compaction(cfg, x, mask, weights)
        out, weight = _expect(cfg, x, mask, weights)
        assert not res["error"] and res["rows"] == len(out) and res["weight"] == weight
        np.testing.assert_array_equal(res["out"], out)
        assert res["cycles"] == dut.cycles(n_tokens, 2, int((~mask).sum()))
    assert divider_cycles(mult_width) == (mult_width + 1) // 2


@pytest.mark.parametrize("kind", ["keep_all", "keep_none", "zero_weights", "extremes",
                                  "one_pruned"])
def test_edge_cases(kind, rng):
    cfg = _cfg()
    n_tokens = 9
    x = rng.integers(-128, 128, (n_tokens, 8))
    weights = rng.integers(0, 256, n_tokens - 1)
    mask = rng.random(n_tokens - 1) < 0.5
    if kind == "keep_all":
        mask[:] = True
    elif kind == "keep_none":
        mask[:] = False
    elif kind == "zero_weights":
        mask[:] = False
        mask[0] = True
        weights[:] = 0
    elif kind == "extremes":
        mask[:] = False
        x[:, :4] = -128
        x[:, 4:] = 127
        weights[:] = 255
    elif kind == "one_pruned":
        mask[:] = True
        mask[3] = False
    res, _dut = run_compaction(cfg, x, mask, weights, rng=rng, stall=0.2)
    out, weight = _expect(cfg, x, mask, weights)
    assert not res["error"] and res["rows"] == len(out) and res["weight"] == weight
    np.testing.assert_array_equal(res["out"], out)


def test_max_tokens_segs1_back_to_back_accumulate(rng):
    """N = max_tokens, one segment per row: the accumulator is read-modify-written every cycle."""
    cfg = _cfg(max_tokens=16, max_dim=4)
    x = rng.integers(-128, 128, (16, 4))
    mask = np.zeros(15, dtype=bool)
    mask[[2, 9]] = True
    weights = rng.integers(0, 256, 15)
    res, dut = run_compaction(cfg, x, mask, weights)
    out, _weight = _expect(cfg, x, mask, weights)
    np.testing.assert_array_equal(res["out"], out)
    assert res["cycles"] == dut.cycles(16, 1, 13)


def test_latency_measured(rng):
    cfg = _cfg()
    x = rng.integers(-128, 128, (3, 16))
    h = BufferHarness(cfg, pad_rows(x, cfg.cols)[0])
    dut = h.dut
    seen = {}

    async def bench(ctx):
        await start(ctx, dut, segs=4)
        for cycle in range(1, 10):
            if "read" not in seen and ctx.get(dut.busy):
                seen["read"] = (cycle, ctx.get(dut.src.addr))
            if ctx.get(dut.dst.en):
                seen["write"] = (cycle, ctx.get(dut.dst.addr))
                return
            await ctx.tick()

    run_simulation(h, [bench], max_cycles=20)
    assert dut.stride == row_stride(cfg) == 4            # the default stride
    assert seen["read"][1] == seen["write"][1] == 0
    assert seen["write"][0] - seen["read"][0] == dut.latency == 1


def test_two_runs_clear_accumulator(rng):
    cfg = _cfg()
    x = rng.integers(-128, 128, (10, 16))
    masks = [rng.random(9) < 0.3, rng.random(9) < 0.6]
    weights = [rng.integers(0, 256, 9), rng.integers(0, 256, 9)]
    xp, segs = pad_rows(x, cfg.cols)
    h = BufferHarness(cfg, xp)
    dut = h.dut
    got = []

    async def bench(ctx):
        for mask, w in zip(masks, weights):
            await start(ctx, dut, segs=segs)
            await stream_send(ctx, dut.sel, sel_beats(mask, w))
            while not ctx.get(dut.done):
                await ctx.tick()
            got.append(read_rows(ctx, h, ctx.get(dut.rows), segs))
            await ctx.tick()

    run_simulation(h, [bench], max_cycles=600)
    for (mask, w), g in zip(zip(masks, weights), got):
        out, _ = _expect(cfg, x, mask, w)
        np.testing.assert_array_equal(g, out)


@pytest.mark.parametrize("segs", [0, 5])
def test_bad_segs_raise_error(segs, rng):
    cfg = _cfg()       # stride = 16 / 4 = 4
    x = rng.integers(-128, 128, (4, 16))
    res, _ = run_compaction(cfg, x, np.ones(3, bool), np.zeros(3, int), segs=segs)
    assert res["error"] == 1 and res["cycles"] <= 2


@pytest.mark.parametrize("bad", ["skipped_index", "row_out_of_range"])
def test_bad_sel_stream_raises_error(bad, rng):
    cfg = _cfg()
    x = rng.integers(-128, 128, (4, 16))
    if bad == "skipped_index":
        beats = [{"index": 0, "score": 1, "keep": 1, "last": 0},
                 {"index": 2, "score": 1, "keep": 0, "last": 1}]
    else:
        beats = [{"index": i, "score": 1, "keep": 1, "last": int(i == 15)} for i in range(16)]
    res, _ = run_compaction(cfg, x, None, None, beats=beats)
    assert res["error"] == 1


def test_bad_elaboration_parameters():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig"):
        TokenCompaction(None)
    with pytest.raises(ValueError, match=r"max_tokens must be in the range \[2, 4096\]"):
        TokenCompaction(_cfg(max_tokens=1))
    with pytest.raises(ValueError, match=r"mult_width must be in the range \[2, "):
        TokenCompaction(_cfg(mult_width=1))
    assert row_stride(_cfg(max_dim=17)) == 5


def test_verilog_emission():
    from amaranth.back import verilog

    from rtl.compaction import TokenPrune
    text = verilog.convert(TokenPrune(_cfg(), 3), name="token_prune")
    assert "module token_prune" in text


# -- row stride larger than the row ------------------------------------------------------------


def _check_untouched(words, marker, stride, rows, segs):
    written = {r * stride + j for r in range(rows) for j in range(segs)}
    for addr, (got, init) in enumerate(zip(words, marker)):
        if addr not in written:
            assert got == init, f"word {addr} (row {addr // stride}) was overwritten"


@pytest.mark.parametrize("stride, d, stall, keep", [
    (7, 16, 0.0, 0.5),          # full-width rows, odd stride, cycle formula
    (7, 6, 0.3, 0.5),           # two segments in a 7-word pitch, random stalls
    ("bank", 10, 0.3, 0.3),     # the accelerator's bank pitch: 16 words per row
    ("bank", 16, 0.0, 1.0),     # keep all: no package row
    (4, 8, 0.2, 0.4),           # the smallest stride, given explicitly
])
def test_stride_rows_land_at_pitch(stride, d, stall, keep, rng):
    cfg = _cfg()                            # max_dim 16, cols 4: max_segs 4
    stride = bank_stride(cfg) if stride == "bank" else stride
    n_tokens = 12
    x = rng.integers(-128, 128, (n_tokens, d))
    mask = rng.random(n_tokens - 1) < keep
    weights = rng.integers(0, 256, n_tokens - 1)
    marker = marker_words(cfg.max_tokens * stride, cfg.cols)
    res, dut = run_compaction(cfg, x, mask, weights, rng=rng, stall=stall, stride=stride,
                              gap=99, dst_init=marker, dump=True)
    assert dut.stride == stride and dut.depth == cfg.max_tokens * stride
    out, weight = _expect(cfg, x, mask, weights)
    assert not res["error"] and res["rows"] == len(out) and res["weight"] == weight
    np.testing.assert_array_equal(res["out"], out)       # rows read at r * stride + j
    segs = -(-d // cfg.cols)
    _check_untouched(res["words"], marker, stride, res["rows"], segs)
    if stall == 0:
        assert res["cycles"] == dut.cycles(n_tokens, segs, int((~mask).sum()))


def test_stride_segs_limited_by_max_dim(rng):
    """segs is bounded by ceil(max_dim / cols), not by a larger stride."""
    cfg = _cfg()
    x = rng.integers(-128, 128, (4, 16))
    res, dut = run_compaction(cfg, x, np.ones(3, bool), np.zeros(3, int), segs=5, stride=16)
    assert dut.max_segs == 4 and len(dut.segs) == 3
    assert res["error"] == 1 and res["cycles"] <= 2


def test_bank_stride():
    assert bank_stride(_cfg()) == 16                       # max(3 * 16, 64) / 4
    assert bank_stride(AccelConfig()) == 96                # max(576, 768) / 8
    assert bank_stride(AccelConfig(max_dim=384, max_hidden=768)) == 144   # 1152 / 8


@pytest.mark.parametrize("stride, exc, match", [
    (3, ValueError, r"stride must be in the range \[4, 65536\] \(at least ceil\(max_dim / cols\)"
                    r"\), not 3"),
    (65537, ValueError, r"stride must be in the range \[4, 65536\]"),
    (4.0, TypeError, r"stride must be an integer, not 4.0"),
    (True, TypeError, r"stride must be an integer"),
])
def test_bad_stride(stride, exc, match):
    with pytest.raises(exc, match=match):
        TokenCompaction(_cfg(), stride)
    with pytest.raises(exc, match=match):
        TokenPrune(_cfg(), 2, stride=stride)


def test_verilog_emission_with_stride():
    from amaranth.back import verilog
    text = verilog.convert(TokenCompaction(_cfg(), bank_stride(_cfg())), name="compaction")
    assert "module compaction" in text
