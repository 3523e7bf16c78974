"""``python -m sim.bench gemm``: dense GEMM on the RTL engine vs the golden model."""

from __future__ import annotations

import numpy as np

from golden.gemm import OUT16_BITS, EpilogueParams, gemm

from .gemm import run_gemm
from .perf import gemm_cycles

HELP = "dense int8 GEMM (M x K x N) on the systolic GEMM engine"


def add_shape_arguments(parser):
    """``--m --k --n``: the GEMM shape (DeiT-Tiny's 197 x 192 x 192 by default)."""
    parser.add_argument("--m", type=int, default=197, help="rows of A (tokens)")
    parser.add_argument("--k", type=int, default=192, help="reduction dimension (in_features)")
    parser.add_argument("--n", type=int, default=192, help="columns of B (out_features)")


def add_arguments(parser):
    add_shape_arguments(parser)
    parser.add_argument("--stall", type=float, default=0.0,
                        help="probability of a random stall per beat on every stream")
    parser.add_argument("--a-unsigned", action="store_true",
                        help="unsigned activations (0..255, as softmax probabilities)")
    parser.add_argument("--out16", action="store_true",
                        help=f"saturate the outputs to {OUT16_BITS} bits instead of act_width")


def run(args) -> dict:
    cfg = args.cfg
    m, k, n = args.m, args.k, args.n
    if not 0.0 <= args.stall < 1.0:
        raise ValueError(f"--stall must be in the range [0, 1), not {args.stall}")
    a_unsigned, out16 = args.a_unsigned, args.out16
    rng = np.random.default_rng(args.seed)
    half = 1 << (cfg.act_width - 1)
    a = rng.integers(0, 2 * half, size=(m, k)) if a_unsigned else \
        rng.integers(-half, half, size=(m, k))
    b = rng.integers(-128, 128, size=(k, n))
    ep = EpilogueParams.random(cfg, n, rng, k)
    if out16:     # the same scales 2^8 times finer: results over the int16 range
        ep = EpilogueParams(cfg, n, ep.bias, ep.mult, np.maximum(ep.shift - 8, 0))
    opts = {"a_unsigned": a_unsigned, "out_bits": OUT16_BITS if out16 else None}
    expected = gemm(cfg, a, b, ep, **opts)     # validates shapes against the config
    out, result = run_gemm(cfg, a, b, ep, a_unsigned=a_unsigned, out16=out16, rng=rng,
                           stall=args.stall)
    cycles = result.cycles[0]
    ideal = m * k * n / cfg.pes
    model = gemm_cycles(cfg, m, k, n)
    return {
        "kernel": "gemm", "config": cfg.name, "rows": cfg.rows, "cols": cfg.cols,
        "m": m, "k": k, "n": n, "a_unsigned": bool(a_unsigned), "out16": bool(out16),
        "bit_exact": bool(np.array_equal(out, expected)),
        "cycles": int(cycles),
        "ideal_cycles": round(ideal, 2),
        "utilization": round(ideal / cycles, 4),
        "compute_cycles": model.compute,
        "compute_utilization": round(ideal / model.compute, 4),
        "model_cycles": model.total,
    }
