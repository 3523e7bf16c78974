"""rtl.topk.TopK / ClsScore against golden.topk / golden.token_prune.cls_scores."""

import numpy as np
import pytest

from golden.config import AccelConfig
from golden.token_prune import cls_scores
from golden.topk import check_topk_args, topk_select, topk_threshold
from rtl.topk import SCAN_LANES, ClsScore, TopK, scan_lanes, scan_words
from sim.streams import run_simulation, stream_recv, stream_send
from sim.token import run_topk, start

# -- golden model ---------------------------------------------------------------------------

def _reference_topk(scores, k):
    """Stable sort by descending score, first k, back to index order."""
    order = sorted(range(len(scores)), key=lambda i: (-int(scores[i]), i))
    return np.array(sorted(order[:k]), dtype=np.int64)


def test_golden_matches_sort_reference(rng):
    for _ in range(200):
        n = int(rng.integers(1, 40))
        k = int(rng.integers(1, n + 1))
        hi = int(rng.choice([2, 4, 256]))
        s = rng.integers(0, hi, n)
        idx, mask = topk_select(s, k)
        np.testing.assert_array_equal(idx, _reference_topk(s, k))
        assert mask.sum() == k and np.array_equal(np.flatnonzero(mask), idx)


def test_golden_hand_cases():
    idx, mask = topk_select([5, 7, 7, 1, 7], 2)
    assert idx.tolist() == [1, 2] and mask.tolist() == [False, True, True, False, False]
    assert topk_threshold([5, 7, 7, 1, 7], 2) == (7, 2)
    assert topk_select([3, 3, 3, 3], 3)[0].tolist() == [0, 1, 2]
    assert topk_select([9], 1)[0].tolist() == [0]
    assert topk_select([0, 1, 2, 3], 2)[0].tolist() == [2, 3]


@pytest.mark.parametrize("n, k, match", [
    (4, 0, r"k must be in the range \[1, 4\]"),
    (4, 5, r"k must be in the range \[1, 4\]"),
])
def test_golden_bad_args(n, k, match):
    with pytest.raises(ValueError, match=match):
        topk_select(np.zeros(n, dtype=np.int64), k)


def test_golden_bad_scores():
    with pytest.raises(ValueError, match=r"n must be in the range"):
        topk_select(np.zeros(0, dtype=np.int64), 1)
    with pytest.raises(ValueError, match=r"scores values must be in the range \[0, 255\]"):
        topk_select([1, 256], 1)


# -- RTL --------------------------------------------------------------------------------------

def _cfg(max_tokens=32, score_width=4):
    return AccelConfig(rows=4, cols=4, max_tokens=max_tokens, max_dim=32, max_hidden=64,
                       score_width=score_width)


def _check(cfg, scores, k, beats, bits, kept_only=False):
    idx, mask = topk_select(scores, k, cfg.score_width)
    n = len(scores)
    assert bits == mask.astype(int).tolist() + [0] * (cfg.max_tokens - n)
    if kept_only:
        assert [b["index"] for b in beats] == idx.tolist()
        assert [b["score"] for b in beats] == [int(scores[i]) for i in idx]
        assert all(b["keep"] == 1 for b in beats)
        assert [b["last"] for b in beats] == [0] * (k - 1) + [1]
    else:
        assert [b["index"] for b in beats] == list(range(n))
        assert [b["score"] for b in beats] == [int(s) for s in scores]
        assert [b["keep"] for b in beats] == mask.astype(int).tolist()
        assert [b["last"] for b in beats] == [0] * (n - 1) + [1]


def _beats(raw):
    return [{"index": b["index"], "score": b["score"], "keep": b["keep"], "last": b["last"]}
            for b in raw]


def test_cycle_formula_and_latency(rng):
    cfg = _cfg()
    for n, k, hi in [(1, 1, 16), (20, 7, 16), (32, 32, 16), (32, 9, 1)]:
        scores = rng.integers(0, hi, n)            # hi = 1: one bin hit every cycle
        beats, bits, cycles, err, dut = run_topk(cfg, scores, k)
        assert not err
        _check(cfg, scores, k, _beats(beats), bits)
        assert cycles == dut.cycles(n) == 2 * n + 16 // SCAN_LANES + 3


def test_latency_measured(rng):
    cfg = _cfg()
    dut = TopK(cfg)
    n = 10
    scores = rng.integers(0, 16, n)
    marks = {}

    async def control(ctx):
        await start(ctx, dut, n=n, k=3)
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, int(scores[0]))
        cycle = 1
        sent = 0
        while True:
            if ctx.get(dut.o.valid):
                marks["first_out"] = cycle
                return
            accepted = sent < n and ctx.get(dut.i.ready)
            await ctx.tick()
            cycle += 1
            if accepted:
                marks["last_in"] = cycle - 1
                sent += 1
                if sent == n:
                    ctx.set(dut.i.valid, 0)
                else:
                    ctx.set(dut.i.payload, int(scores[sent]))

    run_simulation(dut, [control], max_cycles=200)
    assert marks["first_out"] - marks["last_in"] == dut.latency == 16 // SCAN_LANES + 3


@pytest.mark.parametrize("case", ["equal", "increasing", "decreasing", "random"])
@pytest.mark.parametrize("k_kind", ["one", "mid", "all"])
def test_patterns_with_stalls(case, k_kind, rng):
    cfg = _cfg()
    n = 24
    scores = {
        "equal": np.full(n, 9),
        "increasing": np.minimum(np.arange(n), 15),
        "decreasing": np.minimum(np.arange(n)[::-1], 15),
        "random": rng.integers(0, 16, n),
    }[case]
    k = {"one": 1, "mid": 11, "all": n}[k_kind]
    beats, bits, _, err, _ = run_topk(cfg, scores, k, rng=rng, stall=0.3)
    assert not err
    _check(cfg, scores, k, _beats(beats), bits)


def test_kept_only_with_stalls(rng):
    cfg = _cfg()
    for n, k in [(24, 5), (7, 7), (1, 1)]:
        scores = rng.integers(0, 4, n)
        beats, bits, _, err, _ = run_topk(cfg, scores, k, rng=rng, stall=0.3, kept_only=True)
        assert not err
        _check(cfg, scores, k, _beats(beats), bits, kept_only=True)


def test_max_tokens_8bit_and_back_to_back(rng):
    """N = max_tokens with 8-bit scores; two runs in a row (histogram is cleared by the scan)."""
    cfg = _cfg(max_tokens=40, score_width=8)
    dut = TopK(cfg)
    runs = [(rng.integers(0, 256, 40), 13), (rng.integers(100, 104, 40), 40),
            (rng.integers(0, 3, 17), 2)]
    results = []

    async def bench(ctx):
        for scores, k in runs:
            await start(ctx, dut, n=len(scores), k=k)
            await stream_send(ctx, dut.i, [int(s) for s in scores], rng=rng, stall=0.2)
            beats = await stream_recv(ctx, dut.o, len(scores), rng=rng, stall=0.2)
            while not ctx.get(dut.done):
                await ctx.tick()
            results.append((beats, ctx.get(dut.mask)))
            await ctx.tick()

    run_simulation(dut, [bench], max_cycles=4000)
    for (scores, k), (beats, mask) in zip(runs, results):
        bits = [(mask >> i) & 1 for i in range(cfg.max_tokens)]
        _check(cfg, scores, k, _beats(beats), bits)


def test_scan_geometry():
    assert SCAN_LANES == 8
    assert [scan_lanes(w) for w in (1, 2, 3, 4, 8, 12)] == [2, 4, 8, 8, 8, 8]
    assert [scan_words(w) for w in (1, 2, 3, 4, 8, 12)] == [1, 1, 1, 2, 32, 512]
    _, _, cycles, _, dut = run_topk(_cfg(score_width=8), [200], 1)
    assert (dut.scan_lanes, dut.scan_words, dut.latency, dut.cycles(196)) == (8, 32, 35, 427)
    assert cycles == dut.cycles(1) == 37


def _edge_runs(sw, max_tokens, rng):
    """Selections exercising the word-wise scan: ties across and at word boundaries, the
    threshold in the first and the last word, extreme k and n, scores at 0 and the top bin."""
    top = (1 << sw) - 1
    lanes = scan_lanes(sw)
    mt = max_tokens
    runs = [
        (np.full(mt, top), 1), (np.full(mt, top), mt), (np.zeros(mt, dtype=int), mt - 1),
        (np.zeros(mt, dtype=int), 1), (np.array([0]), 1), (np.array([top]), 1),
        (np.array([top, 0]), 1), (np.array([0, top]), 1), (np.array([0, top]), 2),
        (rng.integers(0, top + 1, mt), 1), (rng.integers(0, top + 1, mt), mt - 1),
        (rng.integers(0, top + 1, mt), mt), (rng.integers(0, top + 1, mt), mt // 2),
        (rng.integers(0, top + 1, 5), 3),
    ]
    if lanes <= top:                                 # scores on both sides of a word boundary
        lo, hi = lanes - 1, lanes                    # last lane of word 0, first of word 1
        runs += [
            (rng.choice([lo, hi], mt), mt // 2),
            (np.array([lo, hi, lo, hi, hi, lo, lo]), 4),     # all of hi plus one lo
            (np.array([lo, hi, lo, hi, hi, lo, lo]), 3),     # exactly the hi ones
            (np.array([lo, hi, lo, hi, hi, lo, lo]), 2),     # ties within hi
            (np.array([hi - 1 + (i % 3) for i in range(mt)]), mt // 3),
        ]
    # the running count reaches k exactly at a lane / word end
    s = rng.integers(0, top + 1, mt)
    for k in sorted({1, int((s >= top).sum()) or 1, int((s >= lanes).sum()) or 1, mt}):
        runs.append((s, k))
    return runs


@pytest.mark.parametrize("sw, max_tokens", [(1, 9), (2, 12), (3, 16), (4, 32), (5, 20),
                                            (8, 40), (12, 24)])
def test_word_scan_edges_back_to_back(sw, max_tokens, rng):
    """Many selections in a row on one unit (the scan must leave the histogram empty), with
    random valid/ready stalls on both streams, against golden.topk."""
    cfg = _cfg(max_tokens=max_tokens, score_width=sw)
    runs = _edge_runs(sw, max_tokens, rng)
    for kept_only in (False, True):
        dut = TopK(cfg, kept_only=kept_only)
        results = []

        async def bench(ctx, dut=dut, kept_only=kept_only, results=results):
            for scores, k in runs:
                await start(ctx, dut, n=len(scores), k=k)
                await stream_send(ctx, dut.i, [int(x) for x in scores], rng=rng, stall=0.3)
                beats = await stream_recv(ctx, dut.o, k if kept_only else len(scores),
                                          rng=rng, stall=0.3)
                while not ctx.get(dut.done):
                    await ctx.tick()
                results.append((beats, ctx.get(dut.mask)))
                await ctx.tick()

        run_simulation(dut, [bench], max_cycles=len(runs) * (4 * max_tokens + 600) * 3)
        for (scores, k), (beats, mask) in zip(runs, results):
            bits = [(mask >> i) & 1 for i in range(cfg.max_tokens)]
            _check(cfg, scores, k, _beats(beats), bits, kept_only=kept_only)


@pytest.mark.parametrize("sw", [1, 2, 3, 4, 8, 12])
def test_cycles_exact_every_width(sw, rng):
    cfg = _cfg(max_tokens=24, score_width=sw)
    top = (1 << sw) - 1
    for scores, k in [(rng.integers(0, top + 1, 24), 7), (np.full(24, top), 24),
                      (np.array([0]), 1), (rng.integers(0, top + 1, 13), 13)]:
        beats, bits, cycles, err, dut = run_topk(cfg, scores, k)
        assert not err
        _check(cfg, scores, k, _beats(beats), bits)
        n = len(scores)
        assert cycles == dut.cycles(n) == 2 * n + scan_words(sw) + 3


def test_golden_fixed_seed_random_8bit(rng):
    """Random 8-bit selections over narrow and wide score ranges (thresholds in many words)."""
    cfg = _cfg(max_tokens=40, score_width=8)
    for _ in range(24):
        n = int(rng.integers(1, 41))
        k = int(rng.integers(1, n + 1))
        lo = int(rng.integers(0, 256))
        scores = rng.integers(lo, min(256, lo + int(rng.choice([2, 9, 64, 256]))), n)
        beats, bits, cycles, err, dut = run_topk(cfg, scores, k)
        assert not err and cycles == dut.cycles(n)
        _check(cfg, scores, k, _beats(beats), bits)


@pytest.mark.parametrize("n, k", [(5, 0), (5, 6), (0, 1), (0, 0), (33, 3)])
def test_bad_runtime_args_raise_error(n, k):
    cfg = _cfg(max_tokens=32)          # the n port is 6 bits wide: n = 33 is representable
    _, _, cycles, err, _ = run_topk(cfg, [0] * max(n, 0), k, n=n)
    assert err == 1 and cycles <= 2
    with pytest.raises(ValueError, match=r"(n|k) must be in the range"):
        topk_select(np.zeros(n, dtype=np.int64), k) if n <= 32 else \
            check_topk_args(n, k, cfg.max_tokens)


def test_error_cleared_by_next_start(rng):
    cfg = _cfg()
    dut = TopK(cfg)
    scores = rng.integers(0, 16, 6)
    out = {}

    async def bench(ctx):
        await start(ctx, dut, n=6, k=9)
        out["err1"] = ctx.get(dut.error)
        out["busy1"] = ctx.get(dut.busy)
        await start(ctx, dut, k=2)
        out["err2"] = ctx.get(dut.error)
        await stream_send(ctx, dut.i, [int(s) for s in scores])
        out["beats"] = await stream_recv(ctx, dut.o, 6)

    run_simulation(dut, [bench], max_cycles=200)
    assert out["err1"] == 1 and out["busy1"] == 0 and out["err2"] == 0
    assert [b["keep"] for b in out["beats"]] == topk_select(scores, 2, 4)[1].astype(int).tolist()


def test_bad_elaboration_parameters():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig"):
        TopK("tiny")
    with pytest.raises(TypeError, match="kept_only must be a bool"):
        TopK(_cfg(), kept_only=1)
    with pytest.raises(ValueError, match=r"score_width must be in the range \[1, 12\]"):
        _cfg(score_width=13)
    with pytest.raises(ValueError, match=r"heads must be in the range \[1, 64\]"):
        ClsScore(_cfg(), 0)


# -- ClsScore ---------------------------------------------------------------------------------

@pytest.mark.parametrize("heads, score_width", [(3, 8), (4, 8), (1, 8), (3, 4), (2, 10)])
def test_cls_score(heads, score_width, rng):
    cfg = _cfg(score_width=score_width)
    dut = ClsScore(cfg, heads)
    n = 30
    probs = rng.integers(0, 256, (heads, n + 1))
    probs[:, 1] = 255                                          # the largest sums
    probs[:, 2] = 0
    expect = cls_scores(probs, score_width).tolist()

    async def send(ctx):
        await stream_send(ctx, dut.i, [probs[:, 1 + i].tolist() for i in range(n)],
                          rng=rng, stall=0.3)

    async def recv(ctx):
        return await stream_recv(ctx, dut.o, n, rng=rng, stall=0.3)

    _, got = run_simulation(dut, [send, recv], max_cycles=400)
    assert got == expect


def test_cls_score_latency():
    dut = ClsScore(_cfg(score_width=8), 2)
    seen = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.payload, [3, 4])
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for cycle in range(1, 5):
            if ctx.get(dut.o.valid):
                seen["cycle"] = cycle
                seen["score"] = ctx.get(dut.o.payload)
                return
            await ctx.tick()

    run_simulation(dut, [bench], max_cycles=10)
    assert seen == {"cycle": dut.latency, "score": 7} and dut.latency == 1
