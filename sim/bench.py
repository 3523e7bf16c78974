"""Benchmarks: ``python -m sim.bench KERNEL [options] [--json]``.

Every kernel runs the RTL in simulation against its golden model and reports ``bit_exact``,
measured ``cycles``, the ``ideal_cycles`` of the work and ``utilization`` (ideal / measured).

Each kernel is a module ``sim/bench_<name>.py`` defining ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> dict``; it is listed in :data:`KERNELS`. Kernels
whose module is absent are not offered. Common options: ``--config`` (preset name or JSON file),
``--seed``, ``--json``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time

from golden.cli import ArgumentParser, fail
from golden.config import get_config, preset_names

__all__ = ["KERNELS", "main", "format_result"]

#: kernel name -> module implementing it
KERNELS = {
    "accel": "sim.bench_accel",
    "add": "sim.bench_add",
    "gemm": "sim.bench_gemm",
    "nonlinear": "sim.bench_nonlinear",
    "sparse-gemm": "sim.bench_sparse",
    "topk": "sim.bench_topk",
    "token-prune": "sim.bench_token",
}


def _available():
    return {name: mod for name, mod in KERNELS.items() if importlib.util.find_spec(mod)}


def format_result(result: dict) -> str:
    width = max(len(k) for k in result) if result else 0
    lines = []
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)


def main(argv=None):
    kernels = _available()
    parser = ArgumentParser(prog="python -m sim.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kernel", required=True, metavar="KERNEL",
                                parser_class=ArgumentParser)
    modules = {}
    for name, modname in kernels.items():
        mod = importlib.import_module(modname)
        modules[name] = mod
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        p.add_argument("--config", default="default",
                       help=f"preset ({', '.join(preset_names())}) or JSON file")
        p.add_argument("--seed", type=int, default=0, help="random seed for the operands")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        mod.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        args.cfg = get_config(args.config)
        start = time.monotonic()
        result = modules[args.kernel].run(args)
        result.setdefault("sim_seconds", round(time.monotonic() - start, 2))
    except (ValueError, TypeError) as exc:
        return fail(f"python -m sim.bench {args.kernel}", exc)
    print(json.dumps(result) if args.json else format_result(result))
    return 0 if result.get("bit_exact", True) else 1


if __name__ == "__main__":
    sys.exit(main())
