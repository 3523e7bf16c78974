"""Golden program executor: runs an accelerator program instruction by instruction.

The executor holds the on-chip buffers of :func:`golden.isa.buffers` and a byte-addressed
external memory, and gives every instruction its meaning with the golden unit functions only:
:func:`golden.isa.gemm_ext` (dense weights in engine order, or activations as ``B``),
:func:`golden.sparse_format.decode` + :func:`golden.sparse_format.sparse_gemm_acc` (sparse
weights, iterating each output tile's kept ``k`` only, as the block-sparse decoder does),
:func:`golden.softmax.softmax_int`, :func:`golden.gelu.gelu_int`,
:func:`golden.layernorm.layernorm_int`, :func:`golden.isa.add_int` and
:func:`golden.token_prune.prune_tokens_attention`.

It is the reference for the RTL controller: :class:`ExecResult` keeps, per instruction, the
region it wrote (``trace``), so that a runner comparing the RTL's buffers can name the first
instruction whose output differs and the first differing element; and it counts the useful
MACs of every GEMM (kept weights only for sparse GEMMs) and the elements of the other units,
from which a runner computes utilization. Cycle estimates need the RTL's timing model
(``sim/perf.py``) and are left to ``sim``.

A malformed program (unknown opcode or flags, out-of-range field, a region overflowing its
buffer, an external range outside the memory, a program without HALT) is rejected before
anything runs, with :class:`golden.isa.ProgramError` naming the instruction and the field; a
defect found only while running (a corrupt compressed weight stream, a weight stream of the
wrong shape, a parameter record with a value out of its unit's range) raises the same error at
that instruction (field ``addr`` or ``data``). No program can loop: there are no
branches, and execution ends at HALT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import AccelConfig
from .fixedpoint import requantize
from .gelu import gelu_int
from .isa import (
    ADD_RECORD_BYTES,
    GELU_RECORD_BYTES,
    OUT16_BITS,
    Buf,
    Flag,
    Instr,
    Op,
    ProgramError,
    add_int,
    buffers,
    dense_weight_bytes,
    epilogue_bytes,
    gemm_ext,
    ln_record_bytes,
    operand_shapes,
    unpack_add,
    unpack_dense_weights,
    unpack_epilogue,
    unpack_gelu,
    unpack_ln,
    validate_program,
)
from .layernorm import layernorm_int
from .softmax import softmax_int
from .sparse_format import decode, sparse_gemm_acc, tile_schedule
from .token_prune import prune_tokens_attention

__all__ = ["ExecResult", "Mismatch", "TraceEntry", "execute", "first_mismatch"]


@dataclass
class TraceEntry:
    """What instruction ``index`` wrote: ``output`` is the destination region (for STORE, the
    elements stored), ``macs`` its useful multiply-accumulates, ``elements`` its output
    elements."""
    index: int
    instr: Instr
    output: np.ndarray
    macs: int = 0
    elements: int = 0
    info: dict = field(default_factory=dict)


@dataclass
class ExecResult:
    memory: bytearray
    buffers: dict
    trace: list

    def stats(self) -> dict:
        """Per opcode name: ``count``, ``macs``, ``elements``."""
        out: dict = {}
        for t in self.trace:
            s = out.setdefault(t.instr.name, {"count": 0, "macs": 0, "elements": 0})
            s["count"] += 1
            s["macs"] += t.macs
            s["elements"] += t.elements
        return out

    @property
    def macs(self) -> int:
        return sum(t.macs for t in self.trace)


def _dtype(spec, wide: bool):
    if wide:
        return "<i2"
    return "i1" if spec.signed else "u1"


class _Machine:
    def __init__(self, cfg: AccelConfig, memory):
        self.cfg = cfg
        self.mem = bytearray(memory)
        self.specs = buffers(cfg)
        self.bufs = {b: np.zeros((s.rows, s.cols), np.int64) for b, s in self.specs.items()}

    def region(self, opd, rows, cols):
        return self.bufs[Buf(opd.buf)][opd.row:opd.row + rows, opd.col:opd.col + cols]

    def write(self, opd, value):
        value = np.asarray(value, np.int64)
        rows, cols = value.shape
        self.bufs[Buf(opd.buf)][opd.row:opd.row + rows, opd.col:opd.col + cols] = value
        return value.copy()

    def read_mem(self, addr, size):
        return bytes(self.mem[addr:addr + size])


def _step(mc: _Machine, ins: Instr, index: int) -> TraceEntry:
    cfg = mc.cfg
    op, f, m, k, n = Op(ins.op), Flag(ins.flags), ins.m, ins.k, ins.n
    shapes = operand_shapes(ins)

    def src(name):
        return mc.region(getattr(ins, name), *shapes[name]).copy()

    def fail(fld, msg):
        return ProgramError(index, fld, msg, op.name)

    if op == Op.LOAD:
        spec = mc.specs[Buf(ins.dst.buf)]
        wide = bool(f & Flag.OUT16)
        size = 2 if wide else 1
        rows = [np.frombuffer(mc.read_mem(ins.addr + r * ins.imm, n * size), _dtype(spec, wide))
                for r in range(m)]
        out = mc.write(ins.dst, np.stack(rows))
        return TraceEntry(index, ins, out, elements=m * n)
    if op == Op.STORE:
        spec = mc.specs[Buf(ins.a.buf)]
        wide = bool(f & Flag.OUT16)
        size = 2 if wide else 1
        val = src("a")
        for r in range(m):
            mc.mem[ins.addr + r * ins.imm:ins.addr + r * ins.imm + n * size] = \
                val[r].astype(_dtype(spec, wide)).tobytes()
        return TraceEntry(index, ins, val, elements=m * n)
    if op == Op.GEMM:
        a = src("a")
        ep = unpack_epilogue(cfg, mc.read_mem(ins.addr2, epilogue_bytes(cfg, n)), n)
        out_bits = OUT16_BITS if f & Flag.OUT16 else cfg.act_width
        info = {}
        if f & Flag.SPARSE:
            try:
                dec = decode(mc.read_mem(ins.addr, ins.imm))
            except ValueError as exc:
                raise fail("addr", str(exc)) from None
            if dec.weights.shape != (n, k):
                raise fail("addr", f"compressed weights are {dec.weights.shape[0]} x "
                                   f"{dec.weights.shape[1]} (out x in), the instruction needs "
                                   f"{n} x {k}")
            sched = tile_schedule(dec.pattern, cfg)
            acc = sparse_gemm_acc(a, dec.weights, sched, cfg) + ep.bias[None, :]
            out = requantize(acc, ep.mult[None, :], ep.shift[None, :], out_bits)
            macs = m * dec.pattern.kept_weights
            info = {"k_steps": int(sum(len(s) for s in sched)), "density": dec.pattern.density}
        else:
            if f & Flag.B_BUF:
                b = src("b")
                b = b.T if f & Flag.B_T else b
            else:
                b = unpack_dense_weights(cfg, mc.read_mem(ins.addr,
                                                          dense_weight_bytes(cfg, k, n)), k, n)
            out = gemm_ext(cfg, a, b, ep, a_unsigned=bool(f & Flag.A_U8), out_bits=out_bits)
            macs = m * k * n
        return TraceEntry(index, ins, mc.write(ins.dst, out), macs=macs, elements=m * n,
                          info=info)
    if op == Op.SOFTMAX:
        out = mc.write(ins.dst, softmax_int(src("a"), cfg.max_tokens))
        if f & Flag.SCORE:
            mc.bufs[Buf.SCORE][ins.imm, :n] = out[0]
        return TraceEntry(index, ins, out, elements=m * n)
    if op == Op.GELU:
        p = unpack_gelu(mc.read_mem(ins.addr, GELU_RECORD_BYTES), cfg.act_width,
                        cfg.mult_width)
        out = mc.write(ins.dst, gelu_int(src("a"), p, cfg.act_width))
        return TraceEntry(index, ins, out, elements=m * n)
    if op == Op.LAYERNORM:
        p = unpack_ln(mc.read_mem(ins.addr, ln_record_bytes(n)), n, cfg.mult_width)
        out = mc.write(ins.dst, layernorm_int(src("a"), p, cfg.act_width, cfg.act_width))
        return TraceEntry(index, ins, out, elements=m * n)
    if op == Op.ADD:
        p = unpack_add(mc.read_mem(ins.addr, ADD_RECORD_BYTES))
        out = mc.write(ins.dst, add_int(src("a"), src("b"), p, cfg.act_width))
        return TraceEntry(index, ins, out, elements=m * n)
    if op == Op.TOKEN_SELECT:
        probs = mc.bufs[Buf.SCORE][:k, :m]
        res = prune_tokens_attention(src("a"), probs, cfg=cfg, k=ins.imm)
        out = mc.write(ins.dst, res.out)
        return TraceEntry(index, ins, out, elements=out.size,
                          info={"kept": res.kept, "package_weight": res.package_weight})
    raise AssertionError(f"unhandled opcode {op}")  # pragma: no cover (validated)


def execute(program, memory, cfg: AccelConfig, *, keep_trace: bool = True) -> ExecResult:
    """Validate ``program`` against ``cfg`` and ``len(memory)``, then run it to HALT.

    Returns the final external memory, the buffers and the per-instruction trace (outputs
    dropped when ``keep_trace`` is false; the MAC and element counts stay).
    """
    program = list(program)
    validate_program(program, cfg, len(memory))
    mc = _Machine(cfg, memory)
    trace = []
    for i, ins in enumerate(program):
        if ins.op == Op.HALT:
            break
        try:
            t = _step(mc, ins, i)
        except ProgramError:
            raise
        except (ValueError, TypeError) as exc:
            # A parameter record in external memory holds a value its unit cannot take.
            raise ProgramError(i, "data", str(exc), ins.name) from None
        if not keep_trace:
            t.output = None
        trace.append(t)
    return ExecResult(mc.mem, mc.bufs, trace)


@dataclass
class Mismatch:
    """The first instruction whose output differs: its ``index``, the first differing element
    (``element``, a row-major index tuple into the instruction's output region) and the two
    values; ``shape`` is set instead of ``element`` when the shapes differ."""
    index: int
    instr: Instr
    element: tuple | None
    expected: int | None
    got: int | None
    shape: tuple | None = None

    def __str__(self):
        if self.shape is not None:
            return (f"instruction {self.index} ({self.instr.name}): output shape {self.shape}, "
                    f"expected {self.expected}")
        return (f"instruction {self.index} ({self.instr.name}): first difference at element "
                f"{self.element}: expected {self.expected}, got {self.got}")


def first_mismatch(trace, outputs) -> Mismatch | None:
    """Compare the golden ``trace`` with ``outputs`` (a mapping or sequence, by instruction
    index, of what another implementation wrote; missing indices are skipped) and return the
    first :class:`Mismatch`, or ``None`` when everything compared is equal."""
    get = outputs.get if isinstance(outputs, dict) else (
        lambda i: outputs[i] if i < len(outputs) else None)
    for t in trace:
        got = get(t.index)
        if got is None or t.output is None:
            continue
        got = np.asarray(got)
        if got.shape != t.output.shape:
            return Mismatch(t.index, t.instr, None, t.output.shape, None, got.shape)
        diff = np.argwhere(got != t.output)
        if diff.size:
            el = tuple(int(v) for v in diff[0])
            return Mismatch(t.index, t.instr, el, int(t.output[el]), int(got[el]))
    return None
