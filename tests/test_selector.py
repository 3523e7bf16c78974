"""golden.selector: the integer HeatViT selector head against its float torch reference, and
the keep/prune decision (threshold, keep bounds, package token) against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from golden.config import PRESETS, AccelConfig
from golden.fixedpoint import quantize
from golden.gemm import EpilogueParams, gemm
from golden.selector import (
    DEFAULT_THRESHOLD,
    SelectorHead,
    combine_heads,
    logit_frac,
    prune_tokens_learned,
    quantize_selector,
    select_learned,
    selector_int,
)
from golden.sigmoid import plan_float
from golden.token_prune import merge_package

# -- helpers --------------------------------------------------------------------------------


def make_head(dim, heads, hidden, seed, gain=3.0):
    """A float selector head whose keep probabilities spread over (0, 1) on N(0, 1) tokens.

    PyTorch's default initialization gives logits near 0 (every probability near 0.5); the
    score and importance weights are scaled by ``gain`` and the score biases drawn from
    U(-1, 1), as a trained selector's would be spread.
    """
    torch.manual_seed(seed)
    m = SelectorHead(dim, heads, hidden)
    with torch.no_grad():
        for s in m.score:
            s.weight.mul_(gain)
            s.bias.uniform_(-1.0, 1.0)
        m.importance.weight.mul_(gain)
    return m.double()


def float_probs(m, x, x_scale, intermediates=False):
    with torch.no_grad():
        out = m(torch.tensor(x * x_scale, dtype=torch.float64), intermediates=intermediates)
    if intermediates:
        return out[0].numpy(), out[1]
    return out.numpy()


def setup_head(cfg, dim, heads, hidden, n, seed, rng):
    m = make_head(dim, heads, hidden, seed)
    params = quantize_selector(m, rng.normal(0.0, 1.0, (max(4, 512 // n), n, dim)), cfg)
    return m, params


# Cases (preset, D, H, f, N): the tiny preset and DeiT-Tiny shapes (D = 192, 3 heads).
CASES = [("tiny", 32, 2, 16, 32), ("tiny", 32, 4, 8, 17), ("default", 192, 3, 32, 197)]

# -- float reference ------------------------------------------------------------------------


def test_float_head_structure():
    """The float head is the documented formula (checked by hand-written torch ops)."""
    torch.manual_seed(0)
    m = SelectorHead(8, 2, 3).double()
    x = torch.randn(5, 8, dtype=torch.float64)
    p, mid = m(x, intermediates=True)
    t = x[1:]
    keeps = []
    for h in range(2):
        loc = torch.nn.functional.gelu(t[:, 4 * h:4 * h + 4] @ m.local[h].weight.T
                                       + m.local[h].bias)
        z = torch.cat([loc, loc.mean(0, keepdim=True).expand(4, 3)], 1)
        logits = z @ m.score[h].weight.T + m.score[h].bias
        k = torch.exp(logits[:, 0]) / torch.exp(logits).sum(1)
        # softmax([a, b])[0] = sigmoid(a - b): the identity the integer head relies on
        torch.testing.assert_close(k, torch.sigmoid(logits[:, 0] - logits[:, 1]))
        keeps.append(k)
    imp = torch.softmax(t @ m.importance.weight.T + m.importance.bias, 1)
    ref = (imp * torch.stack(keeps, 1)).sum(1)
    torch.testing.assert_close(p, ref)
    assert p.shape == (4,) and mid["keep"].shape == (4, 2)
    # batched input gives the same per-set result
    torch.testing.assert_close(m(torch.stack([x, x]))[1], p)


# -- integer head vs float ------------------------------------------------------------------


def test_selector_int_vs_float(rng):
    """Keep probability of the integer head against the float head, in LSBs of 2**-8.

    Error budget (per token): the PLAN sigmoid itself is up to 4.9 LSB off the true sigmoid
    (golden.sigmoid); the logit difference carries the int8 rounding of the local features
    through a 2f-term dot product plus its own 2**-5 rounding (measured <= 0.1 in logit
    units, i.e. <= 6.4 LSB through the sigmoid's slope 1/4, mostly where PLAN's error is
    small); the head importance (I-BERT exp, int8 logits at 2**-4) is within 4 LSB per head,
    and since the weights sum to one their error moves ``p`` by at most that times the
    spread of the heads' keep probabilities. Measured over 12 further seeds and the three
    shapes: max 7.5 LSB, mean 1.5 LSB (at most 2.4 for one 16-token set). The asserted bounds
    (max 12, mean 3) leave margin without hiding a broken stage (a wrong scale or a missing
    rounding costs tens of LSBs). Calibration uses the same token distribution; tokens
    beyond the calibrated ranges saturate, which the float head does not model.
    """
    report = []
    for preset, dim, heads, hidden, n in CASES:
        cfg = PRESETS[preset]
        errs, agree, near = [], [], []
        for seed in range(2):
            m, params = setup_head(cfg, dim, heads, hidden, n, seed, rng)
            for _ in range(2 if n > 100 else 4):
                x = quantize(rng.normal(0.0, 1.0, (n, dim)), params.x_scale, cfg.act_width)
                p = selector_int(x, params, cfg)
                pf = float_probs(m, x, params.x_scale) * 256
                assert p.dtype == np.int64 and p.shape == (n - 1,)
                assert p.min() >= 0 and p.max() <= 255
                errs.append(p - pf)
                dec = (p >= DEFAULT_THRESHOLD) == (pf >= DEFAULT_THRESHOLD)
                agree.append(dec.mean())
                near.append(np.abs(pf[~dec] - DEFAULT_THRESHOLD).max(initial=0.0))
        e = np.concatenate(errs)
        report.append(f"{preset} D={dim} H={heads} f={hidden} N={n}: max {np.abs(e).max():.2f} "
                      f"mean {np.abs(e).mean():.2f} bias {e.mean():+.2f} LSB, decisions agree "
                      f"{np.mean(agree):.3f}, disagreements within {max(near):.2f} LSB of 0.5")
        assert np.abs(e).max() <= 12, report[-1]
        assert np.abs(e).mean() <= 3.0, report[-1]
        # a different decision only where the float probability is within the error of 0.5
        assert max(near) <= 12, report[-1]
    print("\n".join(report))


def test_selector_int_stages(rng):
    """Each integer stage against its float counterpart, and the exact format conversions."""
    cfg = PRESETS["tiny"]
    m, params = setup_head(cfg, 32, 2, 16, 32, 0, rng)
    x = quantize(rng.normal(0.0, 1.0, (32, 32)), params.x_scale, cfg.act_width)
    p, mid = selector_int(x, params, cfg, intermediates=True)
    _, fm = float_probs(m, x, params.x_scale, intermediates=True)
    assert params.frac_i <= 8 and all(hp.frac_d == logit_frac(8) == 4 for hp in params.head)
    for h, hp in enumerate(params.head):
        # local features within ~2 LSB of their scale (weight + output rounding, GELU poly),
        # where the float value is inside the calibrated int8 range (outside it saturates)
        l_float = np.clip(fm["l"][h].numpy(), -128 * hp.s_l, 127 * hp.s_l)
        assert np.abs(mid["l"][h] * hp.s_l - l_float).max() <= 2.5 * hp.s_l
        # logit difference within 0.15 (of a 2**-4 LSB), on the tokens whose local features
        # did not saturate
        inside = (l_float == fm["l"][h].numpy()).all(axis=1)
        d_float = np.clip(fm["d"][h].numpy(), -8, 127 / 16)
        assert inside.mean() > 0.8
        assert np.abs(mid["d"][h] / 16 - d_float)[inside].max() <= 0.15
        # the sigmoid stage is PLAN of the int logit difference, to its rounding
        assert np.abs(mid["keep"][:, h] - plan_float(mid["d"][h] / 16) * 256).max() <= 1
        # the global feature is the rounded mean of the local features
        np.testing.assert_allclose(mid["g"][h], np.rint(mid["l"][h].mean(0)), atol=1)
    # importance logits: power-of-two scale, converted to the softmax input by a left shift
    assert (mid["u16"] == mid["u"] << (8 - params.frac_i)).all()
    assert np.abs(mid["imp"] - fm["imp"].numpy() * 256).max() <= 5
    assert (p == combine_heads(mid["imp"], mid["keep"])).all()


def test_score_layer_global_half_folds_into_bias(rng):
    """[l, g] @ W2 = l @ W2_top + (g @ W2_bottom): the global half can be a per-run bias, so
    the GEMM engine runs the score layer with K = f instead of 2f, bit-exactly."""
    cfg = PRESETS["tiny"]
    _, params = setup_head(cfg, 32, 2, 16, 32, 1, rng)
    x = quantize(rng.normal(0.0, 1.0, (32, 32)), params.x_scale, cfg.act_width)
    _, mid = selector_int(x, params, cfg, intermediates=True)
    for h, hp in enumerate(params.head):
        f = params.hidden
        folded = EpilogueParams(cfg, 1, hp.ep2.bias + mid["g"][h] @ hp.w2[f:],
                                hp.ep2.mult, hp.ep2.shift)
        assert (gemm(cfg, mid["l"][h], hp.w2[:f], folded)[:, 0] == mid["d"][h]).all()
    shapes = params.gemm_shapes(32)
    assert shapes[:2] == [("local[0]", 31, 16, 16), ("score[0]", 31, 32, 1)]
    assert shapes[-1] == ("importance", 31, 32, 2)


def test_combine_heads_hand_cases():
    # 128 * 255 / 256 = 127.5 rounds half up to 128; one head of weight ~1 passes through
    assert combine_heads([[128, 128]], [[255, 0]]).tolist() == [128]
    assert combine_heads([[255]], [[200]]).tolist() == [199]          # 199.2 -> 199
    assert combine_heads([[255, 2]], [[255, 255]]).tolist() == [255]  # 256.0 saturates
    assert combine_heads([[86, 85, 85]], [[10, 20, 30]]).tolist() == [20]   # 19.97 -> 20
    with pytest.raises(ValueError, match=r"keep must have shape \(1, 2\)"):
        combine_heads([[1, 2]], [[1, 2, 3]])


def test_quantize_selector_keeps_module_and_validates(rng):
    m = make_head(16, 2, 4, 0).float()
    calib = rng.normal(0.0, 1.0, (10, 16))
    params = quantize_selector(m, calib, PRESETS["tiny"])
    assert next(m.parameters()).dtype == torch.float32          # the caller's module unchanged
    assert params.x_scale == pytest.approx(np.abs(calib).max() / 127)
    assert quantize_selector(m, calib, PRESETS["tiny"], x_scale=0.05).x_scale == 0.05
    for hp in params.head:
        assert hp.w1.shape == (8, 4) and hp.w2.shape == (8, 1)
        assert np.abs(hp.w1).max() == 127                        # per-column full range
    with pytest.raises(ValueError, match=r"calib_tokens must have shape"):
        quantize_selector(m, calib[:, :8], PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"calib_tokens must have shape"):
        quantize_selector(m, calib[:1], PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"x_scale must be a positive finite number"):
        quantize_selector(m, calib, PRESETS["tiny"], x_scale=0.0)
    with pytest.raises(TypeError, match=r"module must be a SelectorHead"):
        quantize_selector(torch.nn.Linear(2, 2), calib, PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"dim must be a multiple of heads \(3\), not 16"):
        SelectorHead(16, 3, 4)
    with pytest.raises(ValueError, match=r"hidden must be a positive integer"):
        SelectorHead(16, 2, 0)
    with pytest.raises(ValueError, match=r"x must have shape \(N >= 1, 16\)"):
        selector_int(np.zeros((4, 8), np.int64), params, PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"N must be in the range \[1, 32\], not 33"):
        selector_int(np.zeros((33, 16), np.int64), params, PRESETS["tiny"])
    assert selector_int(np.zeros((1, 16), np.int64), params, PRESETS["tiny"]).shape == (0,)


# -- decision: select_learned ---------------------------------------------------------------

CFG = PRESETS["tiny"]


def rows(n, d=4, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, (n, d))


def test_threshold_exactly_at_a_probability():
    x = rows(5)
    r = select_learned(x, [128, 127, 200, 128], threshold=128, cfg=CFG)
    assert r.k == 3 and r.kept.tolist() == [0, 1, 3, 4]
    assert r.mask.tolist() == [True, False, True, True]
    # one pruned row of weight 127: the package token is that row
    assert (r.out[:4] == x[[0, 1, 3, 4]]).all() and (r.out[4] == x[2]).all()
    assert r.package_weight == 127 and r.out.shape == (5, 4)
    # one more LSB of threshold drops the two tokens at exactly 128
    r = select_learned(x, [128, 127, 200, 128], threshold=129, cfg=CFG)
    assert r.kept.tolist() == [0, 3] and r.package_weight == 128 + 127 + 128


def test_all_kept():
    x = rows(4)
    r = select_learned(x, [0, 5, 255], threshold=0, cfg=CFG)
    assert r.k == 3 and (r.out == x).all() and r.package_weight == 0
    r = select_learned(x, [130, 140, 255], cfg=CFG)                 # default threshold 0.5
    assert (r.out == x).all() and r.mask.all()


def test_none_above_threshold_gives_min_keep():
    x = rows(6)
    probs = [10, 90, 3, 90, 50]
    r = select_learned(x, probs, threshold=128, min_keep=2, cfg=CFG)
    # the two most probable of those below the threshold; tie at 90: both kept
    assert r.k == 2 and r.kept.tolist() == [0, 2, 4]
    r = select_learned(x, probs, threshold=128, min_keep=1, cfg=CFG)
    assert r.kept.tolist() == [0, 2]                                # tie: lower index wins
    r = select_learned(x, probs, threshold=128, min_keep=0, cfg=CFG)
    assert r.k == 0 and r.kept.tolist() == [0] and r.out.shape == (2, 4)
    assert r.package_weight == sum(probs)
    # threshold 256 keeps none before the bounds apply
    r = select_learned(x, [255] * 5, threshold=256, min_keep=3, cfg=CFG)
    assert r.kept.tolist() == [0, 1, 2, 3]


def test_more_than_max_keep():
    x = rows(6)
    r = select_learned(x, [200, 130, 250, 129, 240], max_keep=2, cfg=CFG)
    assert r.k == 2 and r.kept.tolist() == [0, 3, 5]
    # the dropped tokens above the threshold join the package token with their weights
    ref, w = merge_package(x[[1, 2, 4]], [200, 130, 129])
    assert (r.out[-1] == ref).all() and r.package_weight == w == 459
    # bounds larger than the number of tokens are limited to it
    r = select_learned(x, [0] * 5, min_keep=20, max_keep=31, cfg=CFG)
    assert r.k == 5 and (r.out == x).all()


def test_ties_lower_index_wins():
    x = rows(7)
    r = select_learned(x, [150, 150, 90, 150, 150, 150], max_keep=3, cfg=CFG)
    assert r.kept.tolist() == [0, 1, 2, 4]
    r = select_learned(x, [100, 100, 100, 100, 100, 100], min_keep=2, cfg=CFG)
    assert r.kept.tolist() == [0, 1, 2]


def test_only_cls():
    x = rows(1)
    r = select_learned(x, np.zeros(0, np.int64), cfg=CFG)
    assert r.k == 0 and (r.out == x).all() and r.package_weight == 0
    assert r.kept.tolist() == [0] and r.mask.shape == (0,)
    # an earlier package token is passed through unchanged when nothing is pruned
    pkg = np.array([1, -2, 3, -4])
    r = select_learned(x, np.zeros(0, np.int64), cfg=CFG, prev_package=pkg, prev_weight=77)
    assert (r.out == np.vstack([x, pkg])).all() and r.package_weight == 77


def test_remerge_previous_package_hand_computed():
    x = np.array([[1, 1, 1, 1],
                  [10, -20, 0, 100],         # pruned, p = 10
                  [5, 5, 5, 5],              # kept
                  [30, 20, -40, -100]])      # pruned, p = 30
    prev = np.array([50, 0, 40, 1])          # weight 60
    r = select_learned(x, [10, 200, 30], cfg=CFG, prev_package=prev, prev_weight=60)
    # (10 x1 + 30 x3 + 60 prev) / 100 = [40, 4, 12, -19.4]
    assert r.out.tolist() == [[1, 1, 1, 1], [5, 5, 5, 5], [40, 4, 12, -19]]
    assert r.package_weight == 100
    # a second stage re-merges it again: (100 * pkg + 100 * row) / 200
    x2 = np.array([[1, 1, 1, 1], [0, 0, 0, 1], [5, 5, 5, 5]])
    r2 = select_learned(x2, [100, 250], cfg=CFG, prev_package=r.out[-1],
                        prev_weight=r.package_weight)
    assert r2.out[-1].tolist() == [20, 2, 6, -9] and r2.package_weight == 200


def test_package_vs_float_weighted_average(rng):
    for _ in range(50):
        n = int(rng.integers(3, 32))
        x = rng.integers(-128, 128, (n, 8))
        probs = rng.integers(0, 256, n - 1)
        prev = rng.integers(-128, 128, 8)
        pw = int(rng.integers(0, 2000))
        r = select_learned(x, probs, cfg=CFG, prev_package=prev, prev_weight=pw)
        pruned = ~r.mask
        if not pruned.any():
            continue
        w = probs[pruned].astype(float)
        total = w.sum() + pw
        ref = (w @ x[1:][pruned] + pw * prev) / total if total else np.zeros(8)
        assert np.abs(r.out[-1] - ref).max() <= 1.0
        assert r.package_weight == total


def test_select_learned_bad_parameters():
    x = rows(5)
    p = [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"threshold must be in the range \[0, 256\], not -1"):
        select_learned(x, p, threshold=-1, cfg=CFG)
    with pytest.raises(ValueError, match=r"threshold must be in the range \[0, 256\], not 257"):
        select_learned(x, p, threshold=257, cfg=CFG)
    with pytest.raises(TypeError, match=r"threshold must be an integer"):
        select_learned(x, p, threshold=0.5, cfg=CFG)
    with pytest.raises(ValueError, match=r"min_keep must be in the range \[0, max_keep = 2\]"):
        select_learned(x, p, min_keep=3, max_keep=2, cfg=CFG)
    with pytest.raises(ValueError, match=r"max_keep must be in the range \[0, 31\], not 32"):
        select_learned(x, p, max_keep=32, cfg=CFG)
    with pytest.raises(ValueError, match=r"min_keep must be in the range \[0, 31\], not -1"):
        select_learned(x, p, min_keep=-1, cfg=CFG)
    with pytest.raises(ValueError, match=r"probs must have shape \(4,\), not \(3,\)"):
        select_learned(x, p[:3], cfg=CFG)
    with pytest.raises(ValueError, match=r"probs values must be in the range \[0, 255\]"):
        select_learned(x, [1, 2, 3, 256], cfg=CFG)
    with pytest.raises(ValueError, match=r"x must have shape \(N >= 1, D\)"):
        select_learned(x[0], p, cfg=CFG)
    with pytest.raises(ValueError, match=r"N must be in the range \[1, 32\], not 33"):
        select_learned(rows(33), [0] * 32, cfg=CFG)
    with pytest.raises(ValueError, match=r"prev_package must have shape \(4,\)"):
        select_learned(x, p, cfg=CFG, prev_package=[1, 2, 3])
    with pytest.raises(ValueError, match=r"prev_weight must be a non-negative integer"):
        select_learned(x, p, cfg=CFG, prev_package=[1, 2, 3, 4], prev_weight=-1)
    with pytest.raises(ValueError, match=r"prev_weight must be 0 without prev_package"):
        select_learned(x, p, cfg=CFG, prev_weight=5)


# -- end to end -----------------------------------------------------------------------------


def test_prune_tokens_learned_two_stages(rng):
    """Two pruning stages: the second re-merges the first stage's package token."""
    cfg = PRESETS["tiny"]
    m, params = setup_head(cfg, 32, 2, 16, 32, 0, rng)
    x = quantize(rng.normal(0.0, 1.0, (32, 32)), params.x_scale, cfg.act_width)
    r1 = prune_tokens_learned(x, params, min_keep=4, max_keep=24, cfg=cfg)
    probs = selector_int(x, params, cfg)
    ref = select_learned(x, probs, min_keep=4, max_keep=24, cfg=cfg)
    assert (r1.out == ref.out).all() and (r1.scores == probs).all() and r1.k == ref.k
    assert 4 <= r1.k <= 24 and r1.k == min(max((probs >= 128).sum(), 4), 24)
    assert r1.out.shape[0] == r1.k + 2 and r1.package_weight == probs[~r1.mask].sum()
    # stage 2 on the kept rows (the package token is split off and re-merged)
    x2 = r1.out[:-1]
    r2 = prune_tokens_learned(x2, params, threshold=160, min_keep=2, cfg=cfg,
                              prev_package=r1.out[-1], prev_weight=r1.package_weight)
    p2 = selector_int(x2, params, cfg)
    w = np.concatenate([p2[~r2.mask], [r1.package_weight]]).astype(float)
    fused = np.vstack([x2[1:][~r2.mask], r1.out[-1]])
    if r2.mask.all():
        assert (r2.out[-1] == r1.out[-1]).all()
    else:
        assert np.abs(r2.out[-1] - w @ fused / w.sum()).max() <= 1.0
    assert r2.package_weight == int(w.sum())
    assert r2.kept.tolist() == [0] + (np.flatnonzero(r2.mask) + 1).tolist()


def test_default_config_deit_tiny_shapes(rng):
    """DeiT-Tiny shapes on the default preset: the GEMMs fit the engine's limits."""
    cfg = AccelConfig()
    _, params = setup_head(cfg, 192, 3, 32, 197, 2, rng)
    for _, mm, k, nn in params.gemm_shapes(197):
        assert mm == 196 and k <= cfg.max_gemm_dim and nn <= cfg.max_gemm_dim
    macs = sum(mm * k * nn for _, mm, k, nn in params.gemm_shapes(197))
    assert macs == 196 * (3 * (64 * 32 + 64) + 192 * 3)
    # against the linear layers of one DeiT-Tiny block (QKV, proj, FC1, FC2): 1.6%
    block = 196 * 192 * (3 * 192 + 192 + 2 * 768)
    assert math.isclose(macs / block, 0.0156, abs_tol=0.0005)
