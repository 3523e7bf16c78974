"""``python -m sim.bench sparse-gemm``: block-sparse GEMM on the RTL engine vs the golden model.

Prunes a random int8 weight matrix ``W[N, K]`` (block or hierarchical pruning, balanced or
unbalanced), encodes it in the compressed format, streams it through the RTL decoder into the
GEMM engine and runs ``A[M, K] @ W^T`` with the requantize epilogue. Reports whether the output
equals the golden dense GEMM on the pruned weights (``bit_exact``), the engine's busy
``cycles`` (decode, epilogue parameters, compute, drain), ``dense_cycles`` (the same shape on the
dense engine, :func:`sim.perf.gemm_cycles`, itself cycle-exact), ``ideal_cycles`` (kept MACs /
PEs), ``speedup`` and ``utilization`` (ideal / cycles), and the imbalance of the pattern:
``imbalance`` (max / mean ``k`` steps per output tile), ``block_imbalance`` (max / mean kept
blocks per block-row) and ``compute_cycles - schedule_cycles``, the cycles the array loses to
tiles shorter than ``max(rows, cols)`` steps (the only cost of imbalance on this engine, which
gives the whole array to one output tile at a time).
"""

from __future__ import annotations

import numpy as np

from golden.gemm import EpilogueParams, gemm
from golden.pruning import block_prune, hierarchical_prune
from golden.sparse_format import (
    compressed_bytes,
    encode,
    schedule_cycles,
    schedule_imbalance,
    tile_schedule,
)

from .bench_gemm import add_shape_arguments
from .gemm import run_sparse_gemm
from .perf import decode_cycles, gemm_cycles, sparse_gemm_cycles

HELP = "block-sparse int8 GEMM (M x K x N, pruned weights) through the sparse decoder"


def add_arguments(parser):
    add_shape_arguments(parser)
    parser.add_argument("--density", type=float, default=0.5,
                        help="fraction of weights kept, in (0, 1]")
    parser.add_argument("--block", type=int, default=16,
                        help="square block size; a multiple of the array's cols")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--balanced", dest="balanced", action="store_true", default=True,
                      help="every block-row keeps the same number of blocks (default)")
    mode.add_argument("--unbalanced", dest="balanced", action="store_false",
                      help="keep the largest blocks of the whole matrix")
    parser.add_argument("--hierarchical", action="store_true",
                        help="block pruning plus column masks inside kept blocks")
    parser.add_argument("--stall", type=float, default=0.0,
                        help="probability of a random stall per beat on every stream")


def run(args) -> dict:
    cfg = args.cfg
    m, k, n = args.m, args.k, args.n
    if not 0.0 <= args.stall < 1.0:
        raise ValueError(f"--stall must be in the range [0, 1), not {args.stall}")
    if not 0.0 < args.density <= 1.0:
        raise ValueError(f"--density must be in the range (0, 1], not {args.density}")
    if args.block < 1 or args.block % cfg.cols:
        raise ValueError(f"--block must be a positive multiple of cols ({cfg.cols}), "
                         f"not {args.block}")
    rng = np.random.default_rng(args.seed)
    a = rng.integers(-128, 128, size=(m, k))
    w = rng.integers(-128, 128, size=(n, k))
    block = (args.block, args.block)
    if args.hierarchical:
        pattern = hierarchical_prune(w, args.density, block, balanced=args.balanced)
    else:
        pattern = block_prune(w, args.density, block, balanced=args.balanced)
    wp = pattern.apply(w)
    ep = EpilogueParams.random(cfg, n, rng, k)
    expected = gemm(cfg, a, wp.T, ep)          # validates shapes against the config
    stream = encode(w, pattern)
    out, result = run_sparse_gemm(cfg, a, stream, ep, rng=rng, stall=args.stall)
    cycles = result.cycles[0]
    dense = gemm_cycles(cfg, m, k, n)
    model = sparse_gemm_cycles(cfg, m, pattern)
    ideal = m * pattern.kept_weights / cfg.pes
    sched = tile_schedule(pattern, cfg)
    return {
        "kernel": "sparse-gemm", "config": cfg.name, "rows": cfg.rows, "cols": cfg.cols,
        "m": m, "k": k, "n": n, "block": args.block,
        "mode": ("hierarchical " if args.hierarchical else "block ")
        + ("balanced" if args.balanced else "unbalanced"),
        "density": round(pattern.density, 4),
        "bit_exact": bool(np.array_equal(out, expected)) and not result.errors[0],
        "cycles": int(cycles),
        "dense_cycles": dense.total,
        "ideal_cycles": round(ideal, 2),
        "speedup": round(dense.total / cycles, 4),
        "utilization": round(ideal / cycles, 4),
        "compute_cycles": model.compute,
        "schedule_cycles": schedule_cycles(sched, cfg, m),
        "compute_utilization": round(ideal / model.compute, 4),
        "decode_cycles": decode_cycles(cfg, pattern),
        "model_cycles": model.total,
        "compressed_bytes": compressed_bytes(pattern),
        "dense_bytes": n * k,
        "block_imbalance": round(pattern.imbalance(), 4),
        "imbalance": round(schedule_imbalance(sched), 4),
        "tile_steps_min_max": [min(len(s) for s in sched), max(len(s) for s in sched)],
    }
