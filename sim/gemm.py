"""Harness for :class:`rtl.gemm.GemmEngine`: pack matrices into stream beats, run, unpack.

The beat orders are those documented in :mod:`rtl.gemm` (and ``docs/gemm.md``):

* weights ``B[k, n]``: ``for tj: for kk:`` one row segment of ``cols`` values;
* epilogue parameters: one beat per column tile (sent concurrently with the weights);
* activations ``A[m, k]``: ``for ti: for kk:`` one column segment of ``rows`` values;
* outputs: ``for ti: for tj: for r < valid rows:`` one row segment of ``cols`` values;
* sparse weights: the compressed byte stream of ``docs/sparse_format.md`` on ``cw``, up to
  ``cols`` bytes per beat (:func:`pack_compressed`); the epilogue parameters as in dense mode.

Padding lanes (past ``m`` or ``n``) are sent as zeros.

Per-command options (:class:`GemmJob`): ``a_unsigned`` activations (0..255 for int8) are sent as
their raw ``act_width``-bit patterns in the engine's ``signed(act_width)`` lanes
(:func:`pack_activations`); outputs arrive in ``OUT16_BITS``-bit lanes and are saturated to
``OUT16_BITS`` bits with ``out16``, else to ``act_width`` bits (:func:`unpack_outputs` checks the
range).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from golden.config import AccelConfig
from golden.fixedpoint import check_int_array
from golden.gemm import OUT16_BITS, EpilogueParams, check_gemm_operands
from rtl.gemm import GemmEngine

from .streams import run_simulation, stream_recv, stream_send

__all__ = [
    "GemmJob",
    "GemmRun",
    "output_beats",
    "pack_activations",
    "pack_compressed",
    "pack_epilogue",
    "pack_weights",
    "raw_activations",
    "run_gemm",
    "run_gemm_jobs",
    "run_sparse_gemm",
    "unpack_outputs",
]


def _ceil_div(a, b):
    return -(-a // b)


def pack_weights(cfg: AccelConfig, b) -> list[list[int]]:
    k, n = b.shape
    padded = np.zeros((k, _ceil_div(n, cfg.cols) * cfg.cols), np.int64)
    padded[:, :n] = b
    return [padded[kk, tj * cfg.cols:(tj + 1) * cfg.cols].tolist()
            for tj in range(_ceil_div(n, cfg.cols)) for kk in range(k)]


def pack_compressed(cfg: AccelConfig, data: bytes, rng=None) -> list[dict]:
    """Beats of the compressed stream for ``cw``: ``cols`` bytes each (the last one may be
    shorter), or, with ``rng``, a random number of bytes in ``[1, cols]`` per beat."""
    data = bytes(data)
    beats, pos = [], 0
    while pos < len(data) or not beats:
        size = cfg.cols if rng is None else int(rng.integers(1, cfg.cols + 1))
        chunk = data[pos:pos + size]
        pos += len(chunk)
        beats.append({"data": list(chunk) + [0] * (cfg.cols - len(chunk)), "n": len(chunk),
                      "last": int(pos >= len(data))})
    return beats


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


def raw_activations(cfg: AccelConfig, a) -> np.ndarray:
    """``a`` (signed or unsigned ``act_width``-bit values) as the two's-complement reading of
    their ``act_width``-bit patterns, the values of the engine's ``signed(act_width)`` lanes
    (e.g. uint8 255 -> -1); signed values are unchanged."""
    half = 1 << (cfg.act_width - 1)
    return ((np.asarray(a, np.int64) + half) & ((half << 1) - 1)) - half


def pack_activations(cfg: AccelConfig, a) -> list[list[int]]:
    """Beats of ``a`` (signed or unsigned ``act_width`` bits, sent as raw bit patterns)."""
    m, k = a.shape
    padded = np.zeros((_ceil_div(m, cfg.rows) * cfg.rows, k), np.int64)
    padded[:m] = raw_activations(cfg, a)
    return [padded[ti * cfg.rows:(ti + 1) * cfg.rows, kk].tolist()
            for ti in range(_ceil_div(m, cfg.rows)) for kk in range(k)]


def output_beats(cfg: AccelConfig, m: int, n: int) -> int:
    return m * _ceil_div(n, cfg.cols)


def unpack_outputs(cfg: AccelConfig, beats, m: int, n: int, out_bits: int = OUT16_BITS
                   ) -> np.ndarray:
    """Reassemble output beats (``OUT16_BITS``-bit lanes) into ``O[m, n]``; raises ValueError
    if padding lanes are not 0 or a value lies outside the signed ``out_bits`` range (the
    saturation width of the command: ``act_width`` results must arrive sign-extended)."""
    nt = _ceil_div(n, cfg.cols)
    out = np.zeros((m, nt * cfg.cols), np.int64)
    it = iter(beats)
    for ti in range(_ceil_div(m, cfg.rows)):
        for tj in range(nt):
            for r in range(min(cfg.rows, m - ti * cfg.rows)):
                out[ti * cfg.rows + r, tj * cfg.cols:(tj + 1) * cfg.cols] = next(it)
    if np.any(out[:, n:]):
        raise ValueError("output lanes past n are not zero")
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    if out.size and (out.min() < lo or out.max() > hi):
        raise ValueError(f"output values must be in the range [{lo}, {hi}], found "
                         f"[{out.min()}, {out.max()}]")
    return out[:, :n]


@dataclass
class GemmJob:
    """One command for the engine. ``b``/``ep`` of ``None`` reuse the resident weights.

    Sparse commands set ``sparse``; their weights are the compressed stream ``compressed``
    (``None``: reuse the resident sparse weights). ``k``/``n`` default to the shapes of ``a``
    and ``b`` or of the stream's header. ``expect_error``: the command is rejected, so no
    activations are sent and no outputs awaited (the weight stream still is).

    Options of the command: ``a_unsigned`` (``a`` holds unsigned ``act_width``-bit values) and
    ``out16`` (the epilogue saturates to ``OUT16_BITS`` bits), as ``golden.gemm.gemm``'s
    ``a_unsigned`` and ``out_bits`` (:meth:`out_bits`)."""
    a: np.ndarray
    b: np.ndarray | None = None
    ep: EpilogueParams | None = None
    k: int | None = None
    n: int | None = None
    sparse: bool = False
    compressed: bytes | None = None
    expect_error: bool = False
    a_unsigned: bool = False
    out16: bool = False

    @property
    def loads(self) -> bool:
        return (self.compressed if self.sparse else self.b) is not None

    def out_bits(self, cfg: AccelConfig) -> int:
        """Saturation width of the outputs: ``OUT16_BITS`` with ``out16``, else ``act_width``."""
        return OUT16_BITS if self.out16 else cfg.act_width


@dataclass
class GemmRun:
    outputs: list          # one O[m, n] per job
    cycles: list           # busy cycles per job, from the engine's counter
    errors: list           # error flag after each job's command
    total_cycles: int      # testbench cycles from the first command to the last output


def run_gemm_jobs(cfg: AccelConfig, jobs, *, rng=None, stall=0.0, vcd=None,
                  max_cycles=None, dut=None) -> GemmRun:
    """Run jobs back to back on one engine; stalls on every stream when ``stall > 0``."""
    for job in jobs:
        check_int_array("a", job.a, cfg.act_width, signed=not job.a_unsigned)
    dut = GemmEngine(cfg) if dut is None else dut
    plans = []
    for job in jobs:
        m, k = job.a.shape
        if job.sparse:
            hdr_n, hdr_k = _header_shape(job.compressed)
            n = job.n if job.n is not None else hdr_n
            k = job.k if job.k is not None else hdr_k if job.compressed else k
        else:
            n = job.n if job.b is None else job.b.shape[1]
            k = job.k if job.b is None and job.k is not None else k
        plans.append((m, k, n))
    rngs = {name: (np.random.default_rng(rng.integers(1 << 32)) if rng is not None else None)
            for name in ("cmd", "w", "ep", "a", "o")}
    if max_cycles is None:
        work = sum(_ceil_div(m, cfg.rows) * _ceil_div(n, cfg.cols) *
                   max(k, cfg.rows, cfg.cols) + k * _ceil_div(n, cfg.cols) + m * n
                   for m, k, n in plans)
        work += sum(len(job.compressed) for job in jobs if job.sparse and job.compressed)
        max_cycles = int((work + 200 * len(jobs) + 1000) * (1 + 4 * stall) * 2)

    accepted = [(plan, job.out_bits(cfg)) for plan, job in zip(plans, jobs)
                if not job.expect_error]
    state = {"cycle": 0, "first": None, "last": None, "sent": 0}
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
                                              "load_weights": int(job.loads),
                                              "sparse": int(job.sparse),
                                              "a_unsigned": int(job.a_unsigned),
                                              "out16": int(job.out16)}],
                              rng=rngs["cmd"], stall=stall)
            state["sent"] += 1
            while ctx.get(dut.busy):
                await ctx.tick()
            errors.append(ctx.get(dut.error))
            cycles.append(ctx.get(dut.cycles) - start)

    async def after_command(ctx, i):
        # Data of job i is offered once its command has been accepted, so that a rejected
        # command (which is sent less or none of it) never takes the next job's beats.
        while state["sent"] <= i:
            await ctx.tick()

    async def weights(ctx):
        for i, job in enumerate(jobs):
            await after_command(ctx, i)
            if job.sparse and job.compressed is not None:
                await stream_send(ctx, dut.cw,
                                  pack_compressed(cfg, job.compressed,
                                                  rngs["w"] if stall > 0 else None),
                                  rng=rngs["w"], stall=stall)
            elif job.b is not None and not job.expect_error:
                await stream_send(ctx, dut.w, pack_weights(cfg, job.b), rng=rngs["w"],
                                  stall=stall)

    async def epilogue(ctx):
        # Concurrent with the weights: the engine takes both from the command's start.
        for i, job in enumerate(jobs):
            await after_command(ctx, i)
            if job.loads and not job.expect_error:
                await stream_send(ctx, dut.ep, pack_epilogue(cfg, job.ep), rng=rngs["ep"],
                                  stall=stall)

    async def activations(ctx):
        for i, job in enumerate(jobs):
            await after_command(ctx, i)
            if job.expect_error:
                continue
            await stream_send(ctx, dut.a, pack_activations(cfg, job.a), rng=rngs["a"],
                              stall=stall)

    async def outputs(ctx):
        plans = accepted                # commands that produce outputs
        results = []
        for (m, _, n), out_bits in plans:
            beats = await stream_recv(ctx, dut.o, output_beats(cfg, m, n), rng=rngs["o"],
                                      stall=stall)
            results.append(unpack_outputs(cfg, beats, m, n, out_bits))
        state["last"] = state["cycle"]
        return results

    res = run_simulation(dut, [clock, commands, weights, activations, outputs, epilogue],
                         max_cycles=max_cycles, vcd=vcd)
    produced = iter(res[4])
    outputs_per_job = [None if job.expect_error else next(produced) for job in jobs]
    return GemmRun(outputs=outputs_per_job, cycles=cycles, errors=errors,
                   total_cycles=state["last"] - (state["first"] or 0))


def _header_shape(compressed):
    """``(out_features, in_features)`` from a compressed stream's header (0, 0 if short)."""
    if compressed is None or len(compressed) < 20:
        return 0, 0
    return struct.unpack_from("<II", bytes(compressed), 12)


def run_sparse_gemm(cfg: AccelConfig, a, compressed: bytes, ep: EpilogueParams, *,
                    a_unsigned: bool = False, out16: bool = False, **kwargs):
    """Run one sparse GEMM ``A @ W^T`` with ``W`` given as a compressed stream; returns
    ``(O, GemmRun)``. ``a_unsigned``, ``out16``: the command's options (:class:`GemmJob`)."""
    run = run_gemm_jobs(cfg, [GemmJob(np.asarray(a), ep=ep, sparse=True,
                                      compressed=bytes(compressed), a_unsigned=a_unsigned,
                                      out16=out16)], **kwargs)
    return run.outputs[0], run


def run_gemm(cfg: AccelConfig, a, b, ep: EpilogueParams | None = None, *,
             a_unsigned: bool = False, out16: bool = False, **kwargs):
    """Run one GEMM; returns ``(O, GemmRun)``. ``a_unsigned``, ``out16``: the command's options
    (:class:`GemmJob`)."""
    a, b = check_gemm_operands(cfg, a, b, a_unsigned=a_unsigned)
    ep = EpilogueParams(cfg, b.shape[1]) if ep is None else ep
    run = run_gemm_jobs(cfg, [GemmJob(a, b, ep, a_unsigned=a_unsigned, out16=out16)], **kwargs)
    return run.outputs[0], run
