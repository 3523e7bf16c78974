"""Benchmark of the nonlinear units: accuracy of the golden integer models against torch's float
functions, and the RTL's bit-exactness and cycles against the ideal of one element per cycle.

Accuracy (no RTL): each function's golden model runs on a dense sweep of its input range and is
compared with the float function in output LSBs and in real units:

* softmax: random rows of ``max(64, max_tokens)`` logits (normal, sigma 0.25..16, plus
  one-hot-like rows), scale ``2**-8`` in, ``2**-8`` out;
* GELU: every int8 input at the scales 1/8, 1/16, 1/32 (output scale half the input's) and
  every 12-bit input at 1/256; the I-BERT polynomial's own float error is reported next to it;
* LayerNorm: random rows of ``max_dim`` int8 channels (means and sigmas varied), random
  ``gamma`` ~ N(1, 0.3), ``beta`` ~ N(0, 0.5), eps 1e-5, output scale 1/32;
* sigmoid: every 16-bit input at ``frac = 8`` (x in [-128, 128)); the PLAN float error too.

Throughput (RTL, Amaranth simulator): ``--rows`` back-to-back rows (softmax: rows of
``min(max_tokens, 256)`` logits; LayerNorm: rows of ``max_dim`` channels) or ``--elements``
elements (GELU, sigmoid), output always ready. ``cycles`` runs from the first
input handshake to the last output beat; ``ideal_cycles`` is the beat count (one word of
``cols`` values per cycle for the word-wide softmax and LayerNorm, one element for GELU and
sigmoid); the per-row
figures are the steady-state spacing of row starts at the output.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from golden.gelu import gelu_int, gelu_params, gelu_poly_float
from golden.layernorm import layernorm_row, ln_params
from golden.sigmoid import plan_float, sigmoid_int
from golden.softmax import softmax_row
from rtl.gelu import Gelu
from rtl.layernorm import LayerNorm
from rtl.sigmoid import Sigmoid
from rtl.softmax import Softmax

from .nonlinear import lane_beats, load_ln_params, run_timed, word_beats

HELP = "softmax / GELU / LayerNorm / sigmoid: accuracy vs torch and RTL cycles vs ideal"
FUNCTIONS = ("softmax", "gelu", "layernorm", "sigmoid")


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=6,
                        help="rows per row-wise unit in the RTL run (default 6)")
    parser.add_argument("--elements", type=int, default=512,
                        help="elements per elementwise unit in the RTL run (default 512)")
    parser.add_argument("--only", choices=FUNCTIONS, action="append",
                        help="benchmark only this function (repeatable)")
    parser.add_argument("--no-rtl", action="store_true", help="accuracy only")


def _stats(err_lsb, lsb):
    err_lsb = np.asarray(err_lsb, dtype=np.float64).ravel()
    return {
        "max_abs_err_lsb": round(float(err_lsb.max()), 4),
        "mean_abs_err_lsb": round(float(err_lsb.mean()), 4),
        "max_abs_err_real": float(f"{err_lsb.max() * lsb:.4g}"),
        "mean_abs_err_real": float(f"{err_lsb.mean() * lsb:.4g}"),
        "within_1_lsb_pct": round(100.0 * float((err_lsb <= 1.0).mean()), 3),
        "points": int(err_lsb.size),
    }


# -- accuracy ------------------------------------------------------------------------------------

def _softmax_rows(rng, n, count):
    rows = []
    for k in range(count):
        sigma = [0.25, 1.0, 4.0, 16.0][k % 4]
        x = rng.normal(0.0, sigma, n)
        if k % 10 == 9:
            x[rng.integers(n)] += 20.0
        rows.append(np.clip(np.round(x * 256), -32768, 32767).astype(np.int64))
    return rows


def softmax_accuracy(cfg, rng):
    n = max(64, cfg.max_tokens)
    rows = _softmax_rows(rng, n, 400)
    errs = []
    for x in rows:
        ref = torch.softmax(torch.tensor(x / 256.0), 0).numpy() * 256
        errs.append(np.abs(softmax_row(x) - ref))
    return {"row_length": n, "out_scale": "2^-8", **_stats(np.concatenate(errs), 2.0 ** -8)}


def gelu_accuracy(cfg, rng):
    result = {}
    errs, poly_errs, real_errs = [], [], []
    for bits, s_in in ((8, 1 / 8), (8, 1 / 16), (8, 1 / 32), (12, 1 / 256)):
        s_out = s_in / 2 if bits == 8 else 1 / 32
        p = gelu_params(s_in, s_out, in_bits=bits, mult_width=cfg.mult_width)
        q = np.arange(-(1 << (bits - 1)), 1 << (bits - 1))
        x = q * s_in
        ref = np.clip(torch.nn.functional.gelu(torch.tensor(x)).numpy() / s_out, -128, 127)
        poly = np.clip(gelu_poly_float(x) / s_out, -128, 127)
        e = np.abs(gelu_int(q, p) - ref)
        pe = np.abs(poly - ref)
        result[f"in{bits}_scale_1/{round(1 / s_in)}"] = {
            "max_abs_err_lsb": round(float(e.max()), 4),
            "poly_max_abs_err_lsb": round(float(pe.max()), 4),
            "target_met": bool(e.max() <= pe.max() + 1.0),
        }
        errs.append(e)
        poly_errs.append(pe)
        real_errs.append(e * s_out)
    out = _stats(np.concatenate(errs), 1.0)
    real = np.concatenate(real_errs)
    out["max_abs_err_real"] = float(f"{real.max():.4g}")
    out["mean_abs_err_real"] = float(f"{real.mean():.4g}")
    out["poly_max_abs_err_lsb"] = round(float(np.concatenate(poly_errs).max()), 4)
    out["target_met"] = all(v["target_met"] for v in result.values())
    out["sweeps"] = result
    return out


def _ln_setup(cfg, rng):
    d = cfg.max_dim
    g = rng.normal(1.0, 0.3, d)
    b = rng.normal(0.0, 0.5, d)
    s_in, s_out = 0.05, 1 / 32
    p = ln_params(g, b, n=d, scale_in=s_in, scale_out=s_out, eps=1e-5,
                  mult_width=cfg.mult_width)
    return d, g, b, s_in, s_out, p


def _ln_rows(rng, d, count):
    rows = []
    for k in range(count):
        sigma = [2.0, 8.0, 30.0, 60.0][k % 4]
        x = rng.normal(rng.normal(0, 15), sigma, d)
        rows.append(np.clip(np.round(x), -128, 127).astype(np.int64))
    return rows


def layernorm_accuracy(cfg, rng):
    d, g, b, s_in, s_out, p = _ln_setup(cfg, rng)
    errs = []
    for x in _ln_rows(rng, d, 200):
        ref = torch.nn.functional.layer_norm(torch.tensor(x * s_in), (d,), torch.tensor(g),
                                             torch.tensor(b), 1e-5).numpy() / s_out
        errs.append(np.abs(layernorm_row(x, p) - np.clip(ref, -128, 127)))
    return {"row_length": d, "out_scale": "1/32", **_stats(np.concatenate(errs), s_out)}


def sigmoid_accuracy(cfg, rng):
    q = np.arange(-(1 << 15), 1 << 15)
    x = q / 256.0
    ref = torch.sigmoid(torch.tensor(x)).numpy() * 256
    e = np.abs(sigmoid_int(q, 8) - ref)
    out = _stats(e, 2.0 ** -8)
    out["plan_max_abs_err_lsb"] = round(float(np.abs(plan_float(x) * 256 - ref).max()), 4)
    out["input"] = "int16, frac 8"
    return out


# -- RTL throughput --------------------------------------------------------------------------------

def _timed_run(dut, beats, expected, read, setup=None, max_cycles=200000):
    """Back-to-back input, output always ready. Returns (bit_exact, cycles, output stamps)."""
    outs, stamps = run_timed(dut, beats, read=read, setup=setup, max_cycles=max_cycles)
    return outs == list(expected), stamps[-1] + 1, stamps


def _row_figures(stamps, n, rows, latency):
    starts = stamps[::n]
    per_row = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else float(n)
    ideal = n * rows
    cycles = stamps[-1] + 1
    return {
        "row_length": n, "rows": rows, "cycles": cycles, "ideal_cycles": ideal,
        "utilization": round(ideal / cycles, 4),
        "cycles_per_row_steady": round(per_row, 2), "ideal_cycles_per_row": n,
        "steady_utilization": round(n / per_row, 4), "fill_latency": latency,
    }


def softmax_rtl(cfg, rng, rows):
    n = min(cfg.max_tokens, 256)
    data = _softmax_rows(rng, n, rows)
    dut = Softmax(cfg)
    expected = [int(v) for r in data for v in softmax_row(r)]
    w = -(-n // dut.lanes)
    ok, _, stamps = _timed_run(dut, word_beats(data, dut.lanes), expected,
                               lambda q: [int(q.data[k]) for k in range(int(q.count))])
    res = {"bit_exact": ok, **_row_figures(stamps, w, rows, 2 * w + dut.latency)}
    res.update(row_length=n, lanes=dut.lanes, words_per_row=w, dividers=dut.dividers,
               row_buffers=dut.banks)
    return res


def layernorm_rtl(cfg, rng, rows):
    d, _, _, _, _, p = _ln_setup(cfg, rng)
    data = _ln_rows(rng, d, rows)
    dut = LayerNorm(cfg)
    expected = [int(v) for r in data for v in layernorm_row(r, p)]

    async def setup(ctx):
        await load_ln_params(ctx, dut, p)

    w = -(-d // dut.lanes)
    ok, _, stamps = _timed_run(dut, word_beats(data, dut.lanes), expected,
                               lambda q: [int(q.data[k]) for k in range(int(q.count))],
                               setup=setup)
    res = {"bit_exact": ok, **_row_figures(stamps, w, rows, w + dut.latency)}
    res.update(row_length=d, lanes=dut.lanes, words_per_row=w, reducers=dut.reducers,
               reducer_cycles_per_row=dut.reducer_cycles, row_buffers=dut.banks)
    return res


def _elementwise(dut, q, expected, setup):
    ok, cycles, _ = _timed_run(dut, lane_beats(q, 1), [int(v) for v in expected],
                               lambda p: [int(v) for v in p], setup=setup)
    n = len(q)
    return {"bit_exact": ok, "elements": n, "cycles": cycles, "ideal_cycles": n,
            "utilization": round(n / cycles, 4), "fill_latency": dut.latency}


def gelu_rtl(cfg, rng, elements):
    p = gelu_params(1 / 16, 1 / 32, in_bits=cfg.act_width, mult_width=cfg.mult_width)
    lo, hi = -(1 << (cfg.act_width - 1)), 1 << (cfg.act_width - 1)
    q = rng.integers(lo, hi, size=elements)
    dut = Gelu(cfg)

    async def setup(ctx):
        ctx.set(dut.cmd, p.as_dict())

    return _elementwise(dut, q, gelu_int(q, p), setup)


def sigmoid_rtl(cfg, rng, elements):
    q = rng.integers(-(1 << 15), 1 << 15, size=elements)
    dut = Sigmoid(16)

    async def setup(ctx):
        ctx.set(dut.frac, 8)

    return _elementwise(dut, q, sigmoid_int(q, 8), setup)


def run(args) -> dict:
    cfg = args.cfg
    if not 1 <= args.rows <= 64:
        raise ValueError(f"--rows must be in the range [1, 64], not {args.rows}")
    if not 1 <= args.elements <= 100000:
        raise ValueError(f"--elements must be in the range [1, 100000], not {args.elements}")
    only = args.only or list(FUNCTIONS)
    rng = np.random.default_rng(args.seed)
    result = {"config": cfg.name}
    accuracy = {"softmax": softmax_accuracy, "gelu": gelu_accuracy,
                "layernorm": layernorm_accuracy, "sigmoid": sigmoid_accuracy}
    for name in only:
        entry = {"accuracy": accuracy[name](cfg, rng)}
        if not args.no_rtl:
            if name == "softmax":
                entry["rtl"] = softmax_rtl(cfg, rng, args.rows)
            elif name == "layernorm":
                entry["rtl"] = layernorm_rtl(cfg, rng, args.rows)
            elif name == "gelu":
                entry["rtl"] = gelu_rtl(cfg, rng, args.elements)
            else:
                entry["rtl"] = sigmoid_rtl(cfg, rng, args.elements)
        result[name] = entry
    if not args.no_rtl:
        rtl = [result[n]["rtl"] for n in only]
        result["bit_exact"] = all(r["bit_exact"] for r in rtl)
        result["cycles"] = sum(r["cycles"] for r in rtl)
        result["ideal_cycles"] = sum(r["ideal_cycles"] for r in rtl)
        result["utilization"] = round(result["ideal_cycles"] / result["cycles"], 4)
    if math.isnan(result.get("utilization", 0.0)):
        raise ValueError("no cycles measured")
    return result
