"""golden.token_prune against float/torch references; rtl.compaction.TokenPrune against it."""

import math

import numpy as np
import pytest
import torch

from golden.config import AccelConfig
from golden.token_prune import (
    cls_scores,
    keep_count,
    merge_package,
    package_reciprocal,
    prune_tokens_attention,
    score_shift,
)
from rtl.compaction import TokenPrune
from sim.streams import run_simulation
from sim.token import BufferHarness, marker_words, pad_rows, run_prune, start

# -- golden model ---------------------------------------------------------------------------


def test_cls_scores_hand_cases():
    probs = np.array([[10, 255, 0, 3], [20, 255, 1, 3], [30, 3, 2, 3]])     # H = 3, N = 4
    # head sums 513, 3, 9: saturate to 8 bits
    assert cls_scores(probs).tolist() == [255, 3, 9]
    assert score_shift(3, 8) == 0 and score_shift(1, 4) == 4 and score_shift(4, 10) == 0
    assert cls_scores(probs, score_width=10).tolist() == [513, 3, 9]
    # 4-bit scores: round_shift by 4 (half up), then saturate: 255 -> 16 -> 15, 8 -> 1, 7 -> 0
    assert cls_scores(np.array([[0, 255, 8, 7]]), score_width=4).tolist() == [15, 1, 0]


def test_cls_scores_rank_like_float_head_mean(rng):
    """Below saturation the score is the head mean times H: the float ranking is kept."""
    for heads in (1, 3, 4, 6):
        probs = rng.integers(0, 100, (heads, 60))
        s = cls_scores(probs).astype(float)
        ref = torch.tensor(probs[:, 1:], dtype=torch.float64).mean(0).numpy()
        unsat = s < 255
        np.testing.assert_allclose(s[unsat], ref[unsat] * heads)
        for i in range(59):
            for j in range(59):
                if ref[i] > ref[j]:
                    assert s[i] >= s[j]


def test_keep_count():
    assert keep_count(197, 0.7) == 138 and keep_count(197, 0.5) == 98
    assert keep_count(11, 0.7) == 7               # 0.7 * 10 is 7.000000000000001 in binary
    assert keep_count(2, 0.01) == 1 and keep_count(197, 1.0) == 196
    with pytest.raises(ValueError, match=r"keep_rate must be in the range \(0, 1\]"):
        keep_count(10, 0)
    with pytest.raises(ValueError, match=r"keep_rate must be in the range \(0, 1\]"):
        keep_count(10, 1.5)
    with pytest.raises(ValueError, match="n_tokens must be at least 2"):
        keep_count(1, 0.5)


def test_package_reciprocal():
    assert package_reciprocal(1) == (1 << 15, 15)
    assert package_reciprocal(3) == (21845, 16)
    assert package_reciprocal(0) == (0, 0)
    for w in (1, 2, 3, 7, 255, 256, 50000):
        mult, shift = package_reciprocal(w)
        assert 1 << 14 <= mult <= 1 << 15
        assert abs(mult / 2 ** shift - 1 / w) * w < 2 ** -14
    with pytest.raises(ValueError, match="total_weight must be non-negative"):
        package_reciprocal(-1)


def test_merge_package_vs_float(rng):
    exact = total = 0
    for _ in range(300):
        m = int(rng.integers(1, 30))
        x = rng.integers(-128, 128, (m, 8))
        w = rng.integers(0, 256, m)
        if w.sum() == 0:
            w[0] = 1
        got, weight = merge_package(x, w)
        ref = (torch.tensor(w, dtype=torch.float64)[:, None]
               * torch.tensor(x, dtype=torch.float64)).sum(0) / float(w.sum())
        ref = np.floor(ref.numpy() + 0.5)
        assert weight == w.sum()
        assert np.abs(got - ref).max() <= 1
        exact += int((got == ref).sum())
        total += ref.size
    assert exact / total > 0.99


def test_merge_package_remerge_and_edges(rng):
    x = rng.integers(-128, 128, (5, 8))
    w = rng.integers(1, 256, 5)
    prev = rng.integers(-128, 128, 8)
    got, weight = merge_package(x, w, prev=prev, prev_weight=700)
    ref, ref_w = merge_package(np.vstack([x, prev]), np.append(w, 700))
    np.testing.assert_array_equal(got, ref)
    assert weight == ref_w == w.sum() + 700
    # re-merging a package token alone returns it unchanged
    for pw in (1, 3, 700, 65535):
        alone, _ = merge_package(np.zeros((0, 8), int), np.zeros(0, int), prev=prev,
                                  prev_weight=pw)
        np.testing.assert_array_equal(alone, prev)
    # equal rows average to themselves; zero weights give a zero row
    np.testing.assert_array_equal(merge_package(np.tile(prev, (4, 1)), [9, 1, 0, 200])[0], prev)
    assert merge_package(x, [0] * 5)[0].tolist() == [0] * 8
    with pytest.raises(ValueError, match=r"weights must have shape \(5,\)"):
        merge_package(x, [1, 2])


def _float_reference(x, probs, k):
    """EViT-style selection on the hardware score, in torch; float package token."""
    scores = torch.tensor(cls_scores(probs), dtype=torch.float64)
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = sorted(order[:k])
    drop = sorted(order[k:])
    xt = torch.tensor(x, dtype=torch.float64)
    rows = [xt[:1], xt[1:][keep]]
    if drop:
        w = scores[drop]
        pkg = (w[:, None] * xt[1:][drop]).sum(0) / w.sum() if w.sum() > 0 else xt[0] * 0
        rows.append(torch.floor(pkg + 0.5)[None, :])
    return torch.cat(rows).numpy()


def test_prune_tokens_vs_float_reference(rng):
    cfg = AccelConfig()
    for n_tokens, rate in [(197, 0.7), (197, 0.5), (50, 0.3), (2, 1.0), (9, 1.0)]:
        x = rng.integers(-128, 128, (n_tokens, 192))
        probs = rng.integers(0, 256, (3, n_tokens))
        res = prune_tokens_attention(x, probs, rate, cfg)
        k = math.ceil(round(rate * (n_tokens - 1), 9))
        assert res.k == k and res.mask.sum() == k
        assert res.out.shape == (1 + k + (k < n_tokens - 1), 192)
        ref = _float_reference(x, probs, k)
        np.testing.assert_array_equal(res.out[:k + 1], ref[:k + 1])
        assert np.abs(res.out - ref).max() <= 1
        assert res.kept[0] == 0 and np.all(np.diff(res.kept) > 0)


def test_prune_tokens_bad_args(rng):
    cfg = AccelConfig(max_tokens=16)
    x = rng.integers(-128, 128, (10, 8))
    probs = rng.integers(0, 256, (3, 10))
    with pytest.raises(ValueError, match=r"k must be in the range \[1, 9\]"):
        prune_tokens_attention(x, probs, cfg=cfg, k=10)
    with pytest.raises(ValueError, match=r"k must be in the range \[1, 9\]"):
        prune_tokens_attention(x, probs, cfg=cfg, k=0)
    with pytest.raises(ValueError, match="give exactly one of keep_rate and k"):
        prune_tokens_attention(x, probs, 0.5, cfg, k=3)
    with pytest.raises(ValueError, match=r"cls_probs must have shape \(heads, 10\)"):
        prune_tokens_attention(x, probs[:, :5], 0.5, cfg)
    with pytest.raises(ValueError, match=r"N must be in the range \[2, 16\]"):
        prune_tokens_attention(rng.integers(-128, 128, (17, 8)),
                               rng.integers(0, 256, (3, 17)), 0.5, cfg)
    with pytest.raises(ValueError, match=r"x must have shape \(N >= 2, D\)"):
        prune_tokens_attention(x[:1], probs[:, :1], 0.5, cfg)


# -- RTL: score -> top-k -> compaction -> package token ----------------------------------------

def _cfg(**kw):
    base = {"rows": 4, "cols": 4, "max_tokens": 24, "max_dim": 16, "max_hidden": 64,
            "score_width": 6}
    base.update(kw)
    return AccelConfig(**base)


def _golden_padded(cfg, x, probs, k):
    g = prune_tokens_attention(x, probs, cfg=cfg, k=k)
    return g, pad_rows(g.out, cfg.cols)[0]


@pytest.mark.parametrize("n_tokens, k, d, heads, stall", [
    (17, 8, 16, 3, 0.0),        # cycle formula
    (17, 8, 16, 3, 0.3),        # random stalls on the probability stream
    (24, 1, 10, 4, 0.3),        # N = max_tokens, keep one, D not a multiple of cols
    (12, 11, 8, 2, 0.0),        # keep all: no package token
    (2, 1, 4, 1, 0.0),          # N = 2
])
def test_rtl_matches_golden(n_tokens, k, d, heads, stall, rng):
    cfg = _cfg()
    x = rng.integers(-128, 128, (n_tokens, d))
    probs = rng.integers(0, 256, (heads, n_tokens))
    res, dut = run_prune(cfg, x, probs, k, rng=rng, stall=stall)
    g, out = _golden_padded(cfg, x, probs, k)
    assert not res["error"]
    assert res["rows"] == len(out) and res["weight"] == g.package_weight
    np.testing.assert_array_equal(res["out"], out)
    if stall == 0:
        segs = -(-d // cfg.cols)
        pruned = n_tokens - 1 - k
        assert res["cycles"] == dut.cycles(n_tokens, segs, pruned)
        assert dut.ideal_cycles(n_tokens, segs, pruned) <= res["cycles"]


@pytest.mark.parametrize("n_tokens, k, d, stall", [(17, 6, 16, 0.0), (20, 9, 6, 0.3)])
def test_rtl_bank_stride(n_tokens, k, d, stall, rng):
    """With the activation banks' row pitch the rows land at ``r * stride`` and the words past
    each row (and every row not written) keep their contents."""
    from rtl.compaction import bank_stride
    cfg = _cfg()
    stride = bank_stride(cfg)                       # 16 words, rows of at most 4
    x = rng.integers(-128, 128, (n_tokens, d))
    probs = rng.integers(0, 256, (3, n_tokens))
    marker = marker_words(cfg.max_tokens * stride, cfg.cols)
    res, dut = run_prune(cfg, x, probs, k, rng=rng, stall=stall, stride=stride, gap=-77,
                         dst_init=marker, dump=True)
    g, out = _golden_padded(cfg, x, probs, k)
    assert dut.compaction.stride == stride and not res["error"]
    assert res["rows"] == len(out) and res["weight"] == g.package_weight
    np.testing.assert_array_equal(res["out"], out)
    segs = res["segs"]
    written = {r * stride + j for r in range(res["rows"]) for j in range(segs)}
    assert all(res["words"][a] == marker[a] for a in range(len(marker)) if a not in written)
    if stall == 0:
        assert res["cycles"] == dut.cycles(n_tokens, segs, n_tokens - 1 - k)


@pytest.mark.parametrize("pattern", ["equal", "increasing", "decreasing"])
def test_rtl_tie_patterns(pattern, rng):
    cfg = _cfg()
    n_tokens, k = 14, 5
    x = rng.integers(-128, 128, (n_tokens, 8))
    base = {"equal": np.full(n_tokens, 40), "increasing": np.arange(n_tokens) * 9,
            "decreasing": (n_tokens - np.arange(n_tokens)) * 9}[pattern]
    probs = np.stack([base, base])
    res, _ = run_prune(cfg, x, probs, k, rng=rng, stall=0.2)
    g, out = _golden_padded(cfg, x, probs, k)
    np.testing.assert_array_equal(res["out"], out)
    if pattern == "equal":
        assert g.kept.tolist() == list(range(k + 1))


@pytest.mark.parametrize("n_tokens, k, segs", [
    (10, 0, 2), (10, 10, 2), (1, 1, 2), (0, 0, 2), (25, 3, 2), (10, 3, 0), (10, 3, 5)])
def test_rtl_bad_runtime_args_raise_error(n_tokens, k, segs, rng):
    cfg = _cfg()          # max_tokens 24, stride 4
    x = rng.integers(-128, 128, (10, 16))
    h = BufferHarness(cfg, x, 3)
    dut = h.dut
    seen = {}

    async def control(ctx):
        await start(ctx, dut, n_tokens=n_tokens, k=k, segs=segs)
        seen["error"] = ctx.get(dut.error)
        seen["busy"] = ctx.get(dut.busy)

    run_simulation(h, [control], max_cycles=10)
    assert seen == {"error": 1, "busy": 0}


def test_rtl_elaboration_errors():
    with pytest.raises(ValueError, match=r"heads must be in the range \[1, 64\]"):
        TokenPrune(_cfg(), 65)
