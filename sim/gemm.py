"""Harness for :class:`rtl.gemm.GemmEngine`: pack matrices into stream beats, run, unpack.

The beat orders are those documented in :mod:`rtl.gemm` (and ``docs/gemm.md``):

* weights ``B[k, n]``: ``for tj: for kk:`` one row segment of ``cols`` values;
* epilogue parameters: one beat per column tile;
* activations ``A[m, k]``: ``for ti: for kk:`` one column segment of ``rows`` values;
* outputs: ``for ti: for tj: for r < valid rows:`` one row segment of ``cols`` values.

Padding lanes (past ``m`` or ``n``) are sent as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden.config import AccelConfig
from golden.gemm import EpilogueParams, check_gemm_operands
from rtl.gemm import GemmEngine

from .streams import run_simulation, stream_recv, stream_send

__all__ = ["GemmJob", "GemmRun", "pack_weights", "pack_epilogue", "pack_activations",
           "unpack_outputs", "output_beats", "run_gemm", "run_gemm_jobs"]


def _ceil_div(a, b):
    return -(-a // b)


def pack_weights(cfg: AccelConfig, b) -> list[list[int]]:
    k, n = b.shape
    padded = np.zeros((k, _ceil_div(n, cfg.cols) * cfg.cols), np.int64)
    padded[:, :n] = b
    return [padded[kk, tj * cfg.cols:(tj + 1) * cfg.cols].tolist()
            for tj in range(_ceil_div(n, cfg.cols)) for kk in range(k)]


def pack_epilogue(cfg: AccelConfig, ep: EpilogueParams) -> list[dict]:
    n = ep.bias.shape[0]
    width = _ceil_div(n, cfg.cols) * cfg.cols

    def pad(x):
        out = np.zeros(width, np.int64)
        out[:n] = x
        return out

    bias, mult, shift = pad(ep.bias), pad(ep.mult), pad(ep.shift)
    beats = []
    for tj in range(_ceil_div(n, cfg.cols)):
        sl = slice(tj * cfg.cols, (tj + 1) * cfg.cols)
        beats.append({"bias": bias[sl].tolist(), "mult": mult[sl].tolist(),
                      "shift": shift[sl].tolist()})
    return beats


def pack_activations(cfg: AccelConfig, a) -> list[list[int]]:
    m, k = a.shape
    padded = np.zeros((_ceil_div(m, cfg.rows) * cfg.rows, k), np.int64)
    padded[:m] = a
    return [padded[ti * cfg.rows:(ti + 1) * cfg.rows, kk].tolist()
            for ti in range(_ceil_div(m, cfg.rows)) for kk in range(k)]


def output_beats(cfg: AccelConfig, m: int, n: int) -> int:
    return m * _ceil_div(n, cfg.cols)


def unpack_outputs(cfg: AccelConfig, beats, m: int, n: int) -> np.ndarray:
    """Reassemble output beats into ``O[m, n]``; raises ValueError if padding lanes are not 0."""
    nt = _ceil_div(n, cfg.cols)
    out = np.zeros((m, nt * cfg.cols), np.int64)
    it = iter(beats)
    for ti in range(_ceil_div(m, cfg.rows)):
        for tj in range(nt):
            for r in range(min(cfg.rows, m - ti * cfg.rows)):
                out[ti * cfg.rows + r, tj * cfg.cols:(tj + 1) * cfg.cols] = next(it)
    if np.any(out[:, n:]):
        raise ValueError("output lanes past n are not zero")
    return out[:, :n]


@dataclass
class GemmJob:
    """One command for the engine. ``b``/``ep`` of ``None`` reuse the resident weights."""
    a: np.ndarray
    b: np.ndarray | None = None
    ep: EpilogueParams | None = None
    k: int | None = None
    n: int | None = None


@dataclass
class GemmRun:
    outputs: list          # one O[m, n] per job
    cycles: list           # busy cycles per job, from the engine's counter
    errors: list           # error flag after each job's command
    total_cycles: int      # testbench cycles from the first command to the last output


def run_gemm_jobs(cfg: AccelConfig, jobs, *, rng=None, stall=0.0, vcd=None,
                  max_cycles=None, dut=None) -> GemmRun:
    """Run jobs back to back on one engine; stalls on every stream when ``stall > 0``."""
    dut = GemmEngine(cfg) if dut is None else dut
    plans = []
    for job in jobs:
        m, k = job.a.shape
        n = job.n if job.b is None else job.b.shape[1]
        k = job.k if job.b is None and job.k is not None else k
        plans.append((m, k, n))
    rngs = {name: (np.random.default_rng(rng.integers(1 << 32)) if rng is not None else None)
            for name in ("cmd", "w", "ep", "a", "o")}
    if max_cycles is None:
        work = sum(_ceil_div(m, cfg.rows) * _ceil_div(n, cfg.cols) *
                   max(k, cfg.rows, cfg.cols) + k * _ceil_div(n, cfg.cols) + m * n
                   for m, k, n in plans)
        max_cycles = int((work + 200 * len(jobs) + 1000) * (1 + 4 * stall) * 2)

    state = {"cycle": 0, "first": None, "last": None}
    cycles, errors = [], []

    async def clock(ctx):
        # Count cycles; returns when the last output has been received.
        while state["last"] is None:
            await ctx.tick()
            state["cycle"] += 1

    async def commands(ctx):
        for job, (m, k, n) in zip(jobs, plans):
            while ctx.get(dut.busy):
                await ctx.tick()
            if state["first"] is None:
                state["first"] = state["cycle"]
            start = ctx.get(dut.cycles)
            await stream_send(ctx, dut.cmd, [{"m": m, "k": k, "n": n,
                                              "load_weights": int(job.b is not None)}],
                              rng=rngs["cmd"], stall=stall)
            while ctx.get(dut.busy):
                await ctx.tick()
            errors.append(ctx.get(dut.error))
            cycles.append(ctx.get(dut.cycles) - start)

    async def weights(ctx):
        for job in jobs:
            if job.b is not None:
                await stream_send(ctx, dut.w, pack_weights(cfg, job.b), rng=rngs["w"],
                                  stall=stall)
                await stream_send(ctx, dut.ep, pack_epilogue(cfg, job.ep), rng=rngs["ep"],
                                  stall=stall)

    async def activations(ctx):
        for job in jobs:
            await stream_send(ctx, dut.a, pack_activations(cfg, job.a), rng=rngs["a"],
                              stall=stall)

    async def outputs(ctx):
        results = []
        for m, _, n in plans:
            beats = await stream_recv(ctx, dut.o, output_beats(cfg, m, n), rng=rngs["o"],
                                      stall=stall)
            results.append(unpack_outputs(cfg, beats, m, n))
        state["last"] = state["cycle"]
        return results

    res = run_simulation(dut, [clock, commands, weights, activations, outputs],
                         max_cycles=max_cycles, vcd=vcd)
    return GemmRun(outputs=res[4], cycles=cycles, errors=errors,
                   total_cycles=state["last"] - (state["first"] or 0))


def run_gemm(cfg: AccelConfig, a, b, ep: EpilogueParams | None = None, **kwargs):
    """Run one GEMM; returns ``(O, GemmRun)``."""
    a, b = check_gemm_operands(cfg, a, b)
    ep = EpilogueParams(cfg, b.shape[1]) if ep is None else ep
    run = run_gemm_jobs(cfg, [GemmJob(a, b, ep)], **kwargs)
    return run.outputs[0], run
