"""Run a quantized, pruned ViT end to end on the RTL accelerator.

``python -m sim.run --model tiny [--images N] [--variants] [--vcd FILE] [--json]`` builds the
model (``golden.compiler.build_tiny``: random weights, calibrated, pruned, compiled), runs each
image's program on :class:`rtl.accel.Accelerator` in Amaranth's simulator and on the golden
executor, and reports:

* whether the logits are bit-exact; on a mismatch, the first instruction whose output differs
  and its first differing element (exit status 1);
* cycles per layer and per instruction type, split into ``exec`` (the execution unit) and
  ``fetch`` (instruction fetch and checks), with the useful MACs of each;
* the useful MACs (kept weights only), the ideal cycles ``MACs / (rows * cols)`` and the
  end-to-end utilization ``ideal / cycles``; the same for the GEMM instructions alone.

``--variants`` also runs the model without token pruning, without weight sparsity and without
either, on the first image, and tabulates cycles and MACs against the dense model.
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict

import numpy as np

from golden.cli import ArgumentParser, fail

__all__ = ["MODELS", "VARIANTS", "main", "run_model", "summarize"]

#: ``--model`` name -> keyword arguments of :func:`golden.compiler.build_tiny`
MODELS = {"tiny": {}}
#: variant name -> model keyword arguments (``golden.vit.tiny_vit_config``)
VARIANTS = OrderedDict([
    ("pruned+sparse", {}),
    ("sparse only", {"prune_layers": ()}),
    ("pruned only", {"weight_density": 1.0}),
    ("dense", {"prune_layers": (), "weight_density": 1.0}),
])

CATEGORY = {"GEMM": "gemm", "SOFTMAX": "nonlinear", "GELU": "nonlinear",
            "LAYERNORM": "nonlinear", "ADD": "nonlinear", "TOKEN_SELECT": "token select",
            "LOAD": "data movement", "STORE": "data movement"}


def _images(q, count: int, seed: int):
    import torch

    from golden.vit import quantize_input
    cfg = q.cfg
    g = torch.Generator().manual_seed(seed + 1000)
    imgs = torch.randn(count, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    return quantize_input(q, imgs)


def summarize(compiled, run, trace) -> dict:
    """Cycle and MAC breakdown of one RTL program run (``sim.accel.ProgramRun``) with the
    golden ``trace`` of the same program."""
    acfg = compiled.quant.acfg
    macs = {t.index: t.macs for t in trace}
    by_op: dict = OrderedDict()
    by_layer: dict = OrderedDict()
    by_cat: dict = OrderedDict()
    for t in run.timings:
        name = t.instr.name
        layer = compiled.labels[t.index].split(".")[0]
        for table, key in ((by_op, name), (by_layer, layer),
                           (by_cat, CATEGORY.get(name, "other"))):
            row = table.setdefault(key, {"count": 0, "exec": 0, "fetch": 0, "macs": 0})
            row["count"] += 1
            row["exec"] += t.exec
            row["fetch"] += t.fetch if table is not by_cat else 0
            row["macs"] += macs.get(t.index, 0)
    fetch = run.cycles - sum(t.exec for t in run.timings)
    # Categories count execution only; every fetch (HALT's included) is control.
    by_cat["control (fetch, checks)"] = {"count": len(run.timings) + 1, "exec": fetch,
                                         "fetch": 0, "macs": 0}
    total_macs = sum(macs.values())
    ideal = total_macs / acfg.pes
    gemm = by_op.get("GEMM", {"exec": 0, "macs": 0})
    return {
        "cycles": run.cycles,
        "macs": total_macs,
        "ideal_cycles": round(ideal, 1),
        "utilization": round(ideal / run.cycles, 6) if run.cycles else 0.0,
        "gemm_cycles": gemm["exec"],
        "gemm_utilization": round(gemm["macs"] / acfg.pes / gemm["exec"], 6)
        if gemm["exec"] else 0.0,
        "by_category": by_cat, "by_op": by_op, "by_layer": by_layer,
        "memory_read_bytes": run.read_bytes, "memory_write_bytes": run.write_bytes,
    }


def run_model(model: str = "tiny", images: int = 1, seed: int = 0, *, variant: str =
              "pruned+sparse", vcd: str | None = None, stall: float = 0.0, latency: int = 2,
              snapshot: bool = True) -> dict:
    """Build, compile and run ``images`` images of ``model`` on the RTL; returns the report
    (``bit_exact``, per-image results, the breakdown of the first image)."""
    from golden.compiler import build_tiny
    from golden.executor import execute, first_mismatch
    from golden.vit import forward_int

    from .accel import run_program
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; not {model!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; not {variant!r}")
    if not 1 <= images <= 1000:
        raise ValueError(f"images must be in the range [1, 1000], not {images}")
    if not 0.0 <= stall < 1.0:
        raise ValueError(f"stall must be in the range [0, 1), not {stall}")
    if not 1 <= latency <= 64:
        raise ValueError(f"latency must be in the range [1, 64], not {latency}")
    _, q, compiled = build_tiny(seed=seed, **MODELS[model], **VARIANTS[variant])
    acfg = q.acfg
    rng = np.random.default_rng(seed)
    out = {"model": model, "preset": acfg.name, "array": f"{acfg.rows}x{acfg.cols}",
           "variant": variant, "instructions": len(compiled.program), "images": []}
    summary = None
    for i, patches in enumerate(_images(q, images, seed)):
        mem = compiled.memory_with_input(patches)
        gold = execute(compiled.program, mem, acfg)
        want = compiled.read_logits(gold.memory)
        assert np.array_equal(want, forward_int(q, patches)), "golden executor != model"
        t0 = time.monotonic()
        run = run_program(acfg, compiled.program, mem, rng=rng if stall else None, stall=stall,
                          latency=latency, snapshot=snapshot,
                          vcd=vcd if i == 0 else None)
        got = compiled.read_logits(run.memory)
        exact = bool(np.array_equal(got, want)) and not run.error
        res = {"image": i, "bit_exact": exact, "cycles": run.cycles,
               "sim_seconds": round(time.monotonic() - t0, 1),
               "top1": int(np.argmax(got)), "golden_top1": int(np.argmax(want))}
        if run.error:
            res["error"] = {"index": run.error_index, "code": run.error_code}
        if not exact:
            mm = first_mismatch(gold.trace, run.outputs)
            res["first_mismatch"] = str(mm) if mm is not None else \
                "logits differ, every instruction output matched"
            if mm is not None:
                res["first_mismatch_label"] = compiled.labels[mm.index]
        out["images"].append(res)
        if summary is None:
            summary = summarize(compiled, run, gold.trace)
    out["bit_exact"] = all(r["bit_exact"] for r in out["images"])
    out.update(summary)
    return out


def run_variants(model: str = "tiny", seed: int = 0, **kw) -> dict:
    """Cycles and MACs of every :data:`VARIANTS` entry on one image."""
    rows = OrderedDict()
    for name in VARIANTS:
        r = run_model(model, 1, seed, variant=name, **kw)
        rows[name] = {"bit_exact": r["bit_exact"], "cycles": r["cycles"], "macs": r["macs"],
                      "gemm_cycles": r["gemm_cycles"], "utilization": r["utilization"]}
    dense = rows["dense"]["cycles"]
    for row in rows.values():
        row["speedup_vs_dense"] = round(dense / row["cycles"], 3)
    return rows


def _table(title, table, total_cycles):
    lines = [f"{title:26s} {'count':>5s} {'exec':>8s} {'fetch':>7s} {'share':>6s} "
             f"{'useful MACs':>11s}"]
    for key, r in table.items():
        cyc = r["exec"] + r["fetch"]
        lines.append(f"  {key:24s} {r['count']:5d} {r['exec']:8d} {r['fetch']:7d} "
                     f"{100 * cyc / total_cycles:5.1f}% {r['macs']:11d}")
    return "\n".join(lines)


def format_report(rep: dict) -> str:
    lines = [f"model {rep['model']} on preset {rep['preset']} ({rep['array']} array), variant "
             f"{rep['variant']}, {rep['instructions']} instructions"]
    for r in rep["images"]:
        line = (f"image {r['image']}: logits {'bit-exact' if r['bit_exact'] else 'DIFFER'}, "
                f"{r['cycles']} cycles, top-1 {r['top1']} ({r['sim_seconds']} s simulated)")
        if "first_mismatch" in r:
            line += f"\n  first mismatch: {r['first_mismatch']}"
            if "first_mismatch_label" in r:
                line += f" [{r['first_mismatch_label']}]"
        if "error" in r:
            line += f"\n  error status: instruction {r['error']['index']}, code " \
                    f"{r['error']['code']}"
        lines.append(line)
    c = rep["cycles"]
    lines += ["", _table("cycles by category", rep["by_category"], c), "",
              _table("cycles by instruction type", rep["by_op"], c), "",
              _table("cycles by layer", rep["by_layer"], c), "",
              f"useful MACs {rep['macs']}, ideal cycles {rep['ideal_cycles']} "
              f"(MACs / {rep['array']} PEs), measured {c}: utilization "
              f"{100 * rep['utilization']:.1f}%",
              f"GEMM instructions alone: {rep['gemm_cycles']} cycles, utilization "
              f"{100 * rep['gemm_utilization']:.1f}%",
              f"external memory: {rep['memory_read_bytes']} bytes read, "
              f"{rep['memory_write_bytes']} written"]
    if "variants" in rep:
        lines += ["", f"{'variant':16s} {'cycles':>8s} {'MACs':>8s} {'GEMM cyc':>9s} "
                      f"{'util':>6s} {'speedup':>8s} bit-exact"]
        for name, r in rep["variants"].items():
            lines.append(f"{name:16s} {r['cycles']:8d} {r['macs']:8d} {r['gemm_cycles']:9d} "
                         f"{100 * r['utilization']:5.1f}% {r['speedup_vs_dense']:7.2f}x "
                         f"{r['bit_exact']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    prog = "python -m sim.run"
    ap = ArgumentParser(prog=prog, description="Run a ViT end to end on the RTL accelerator.")
    ap.add_argument("--model", default="tiny", choices=list(MODELS), help="model to build")
    ap.add_argument("--images", type=int, default=1, help="images to run (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="weights and images seed")
    ap.add_argument("--variant", default="pruned+sparse", choices=list(VARIANTS),
                    help="which techniques the model uses (default: both)")
    ap.add_argument("--variants", action="store_true",
                    help="also run every variant on the first image and compare cycles")
    ap.add_argument("--stall", type=float, default=0.0,
                    help="random stall probability on the memory port (default 0)")
    ap.add_argument("--latency", type=int, default=2,
                    help="memory read latency in cycles (default 2)")
    ap.add_argument("--vcd", metavar="FILE", help="write a waveform of the first image")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    try:
        rep = run_model(args.model, args.images, args.seed, variant=args.variant,
                        vcd=args.vcd, stall=args.stall, latency=args.latency)
        if args.variants:
            rep["variants"] = run_variants(args.model, args.seed, stall=args.stall,
                                           latency=args.latency, snapshot=False)
    except (ValueError, TypeError) as exc:
        return fail(prog, exc)
    print(json.dumps(rep) if args.json else format_report(rep))
    return 0 if rep["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
