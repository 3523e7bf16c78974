"""``python -m sim.bench topk``: exact top-k token selection on the RTL selector vs golden."""

from __future__ import annotations

import numpy as np

from golden.topk import check_topk_args, topk_select

from .token import run_topk

HELP = "exact top-k of N streamed scores (histogram select + filter pass)"


def add_arguments(parser):
    parser.add_argument("--n", type=int, default=None,
                        help="number of scores (default: the config's max_tokens)")
    parser.add_argument("--k", type=int, default=None, help="scores to keep (default: N / 2)")
    parser.add_argument("--stall", type=float, default=0.0,
                        help="probability of a random stall per beat on both streams")


def run(args) -> dict:
    cfg = args.cfg
    n = cfg.max_tokens if args.n is None else args.n
    k = max(1, n // 2) if args.k is None else args.k
    check_topk_args(n, k, cfg.max_tokens)
    if not 0.0 <= args.stall < 1.0:
        raise ValueError(f"--stall must be in the range [0, 1), not {args.stall}")
    rng = np.random.default_rng(args.seed)
    scores = rng.integers(0, 1 << cfg.score_width, n)
    idx, mask = topk_select(scores, k, cfg.score_width)
    beats, bits, cycles, err, dut = run_topk(cfg, scores, k, rng=rng, stall=args.stall)
    exact = (not err and bits[:n] == mask.astype(int).tolist()
             and [b["index"] for b in beats if b["keep"]] == idx.tolist()
             and [b["index"] for b in beats] == list(range(n)))
    return {
        "kernel": "topk", "config": cfg.name, "score_width": cfg.score_width,
        "n": n, "k": k,
        "bit_exact": bool(exact),
        "cycles": int(cycles),
        "cycles_per_token": round(cycles / n, 3),
        "ideal_cycles": n,
        "utilization": round(n / cycles, 4),
        "formula_cycles": dut.cycles(n),
        "target_cycles": 2 * n + 300,
        "meets_target": bool(cycles <= 2 * n + 300),
    }
