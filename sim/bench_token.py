"""``python -m sim.bench token-prune``: attention-score token pruning on the RTL chain.

Runs CLS score -> top-k -> compaction -> package token (``rtl.compaction.TokenPrune``) on
random activations and on CLS-row probabilities from a softmax of random logits, quantized to
8 bits as the softmax unit outputs them. Reports bit-exactness against
``golden.token_prune.prune_tokens_attention``, cycles against the ideal (one score per cycle,
then one row segment per cycle through the buffer port), and the accuracy of the integer
pipeline against float references: the fraction of the kept tokens that a float top-k of the
head-mean score also keeps (from the unquantized softmax and from the 8-bit probabilities), and
the largest error of the package token against the float weighted average, in LSBs.
"""

from __future__ import annotations

import numpy as np

from golden.token_prune import keep_count, prune_tokens_attention

from .token import run_prune

HELP = "attention-score token pruning: top-k selection, compaction and package token"


def add_arguments(parser):
    parser.add_argument("--n", type=int, default=None,
                        help="tokens including CLS (default: the config's max_tokens)")
    parser.add_argument("--d", type=int, default=None,
                        help="embedding dimension (default: the config's max_dim)")
    parser.add_argument("--keep", type=float, default=0.7, help="keep rate in (0, 1]")
    parser.add_argument("--heads", type=int, default=3, help="attention heads")
    parser.add_argument("--stall", type=float, default=0.0,
                        help="probability of a random stall per beat on the probability stream")


def _softmax_probs(rng, heads, n_tokens):
    logits = rng.normal(0.0, 2.0, (heads, n_tokens))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p, np.clip(np.rint(p * 256), 0, 255).astype(np.int64)


def run(args) -> dict:
    cfg = args.cfg
    n_tokens = cfg.max_tokens if args.n is None else args.n
    d = cfg.max_dim if args.d is None else args.d
    if not 2 <= n_tokens <= cfg.max_tokens:
        raise ValueError(f"--n must be in the range [2, {cfg.max_tokens}], not {n_tokens}")
    if not 1 <= d <= cfg.max_dim:
        raise ValueError(f"--d must be in the range [1, {cfg.max_dim}], not {d}")
    if not 1 <= args.heads <= 64:
        raise ValueError(f"--heads must be in the range [1, 64], not {args.heads}")
    if not 0.0 <= args.stall < 1.0:
        raise ValueError(f"--stall must be in the range [0, 1), not {args.stall}")
    k = keep_count(n_tokens, args.keep)
    rng = np.random.default_rng(args.seed)
    x = rng.integers(-128, 128, (n_tokens, d))
    p_float, probs = _softmax_probs(rng, args.heads, n_tokens)
    golden = prune_tokens_attention(x, probs, cfg=cfg, k=k)
    res, dut = run_prune(cfg, x, probs, k, rng=rng, stall=args.stall)
    expect = np.zeros((golden.out.shape[0], res["segs"] * cfg.cols), dtype=np.int64)
    expect[:, :d] = golden.out
    exact = (not res["error"] and res["out"].shape == expect.shape
             and bool(np.array_equal(res["out"], expect))
             and res["weight"] == golden.package_weight)

    # accuracy of the integer pipeline against float references
    kept = set(np.flatnonzero(golden.mask).tolist())

    def agreement(score):
        return len(set(np.argsort(-score, kind="stable")[:k].tolist()) & kept) / k

    pruned = ~golden.mask
    pkg_err = 0.0
    if pruned.any():
        w = golden.scores[pruned].astype(np.float64)
        if w.sum() > 0:
            ref = (w[:, None] * x[1:][pruned]).sum(axis=0) / w.sum()
            pkg_err = float(np.abs(golden.out[-1] - ref).max())
    cycles = res["cycles"]
    n_pruned = n_tokens - 1 - k
    ideal = dut.ideal_cycles(n_tokens, res["segs"], n_pruned)
    return {
        "kernel": "token-prune", "config": cfg.name, "cols": cfg.cols,
        "score_width": cfg.score_width, "n": n_tokens, "d": d, "heads": args.heads,
        "keep_rate": args.keep, "k": k, "pruned": int(pruned.sum()),
        "rows_out": int(res["rows"]), "segs": res["segs"],
        "bit_exact": bool(exact),
        "cycles": int(cycles),
        "ideal_cycles": ideal,
        "utilization": round(ideal / cycles, 4),
        "formula_cycles": dut.cycles(n_tokens, res["segs"], n_pruned),
        "selection_agreement_vs_float": round(agreement(p_float[:, 1:].mean(axis=0)), 4),
        "selection_agreement_vs_8bit_probs": round(agreement(probs[:, 1:].mean(axis=0)), 4),
        "package_weight": int(golden.package_weight),
        "package_max_abs_err_lsb": round(pkg_err, 4),
    }
