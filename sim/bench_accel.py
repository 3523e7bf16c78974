"""``python -m sim.bench accel``: a whole ViT end to end on the RTL accelerator.

Runs :func:`sim.run.run_model` (the tiny model: build, compile, run on
:class:`rtl.accel.Accelerator` in Amaranth's simulator and on the golden executor) and reports
``bit_exact``, ``cycles``, ``ideal_cycles`` (useful MACs / PEs) and ``utilization``, plus the
cycles of every category (GEMM, nonlinear units, token selection, data movement, control).
``--config`` must be ``tiny`` (the preset the model is built for); ``python -m sim.run`` prints
the full breakdown.
"""

from __future__ import annotations

__all__ = ["HELP", "add_arguments", "run"]

HELP = "a whole pruned ViT on the RTL accelerator: logits vs golden, cycles vs MACs / PEs"


def add_arguments(parser):
    from .run import MODELS, VARIANTS
    parser.add_argument("--model", default="tiny", choices=list(MODELS))
    parser.add_argument("--variant", default="pruned+sparse", choices=list(VARIANTS))
    parser.add_argument("--images", type=int, default=1, help="images to run (default 1)")
    parser.add_argument("--latency", type=int, default=2, help="memory latency (default 2)")


def run(args) -> dict:
    from .run import run_model
    if args.cfg.name != "tiny":
        raise ValueError(f"config must be tiny for --model {args.model}, not {args.cfg.name}")
    rep = run_model(args.model, args.images, args.seed, variant=args.variant,
                    latency=args.latency)
    out = {"bit_exact": rep["bit_exact"], "cycles": rep["cycles"],
           "ideal_cycles": rep["ideal_cycles"], "utilization": rep["utilization"],
           "macs": rep["macs"], "gemm_cycles": rep["gemm_cycles"],
           "gemm_utilization": rep["gemm_utilization"]}
    for name, row in rep["by_category"].items():
        out[f"cycles_{name.split(' (')[0].replace(' ', '_')}"] = row["exec"]
    return out
