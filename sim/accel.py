"""Run a whole program on the RTL accelerator (:class:`rtl.accel.Accelerator`) in simulation.

:func:`run_program` places the program after the memory image, starts the accelerator, serves
its memory port with :class:`sim.memory.MemoryModel` and follows the controller's ``index`` and
``op`` outputs to time every instruction: ``fetch`` cycles (fetch and checks) and ``exec``
cycles (the execution unit). After each instruction it reads the region the instruction wrote
(``golden.isa.operand_shapes``; for STORE the stored elements) out of the on-chip buffers, so
that :func:`golden.executor.first_mismatch` can name the first instruction whose output
differs from the golden executor's and the first differing element.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from golden.config import AccelConfig
from golden.isa import Buf, Instr, Op, encode_program, operand_shapes

from .instr import read_words
from .memory import MemoryModel
from .streams import run_simulation

__all__ = ["InstrTiming", "ProgramRun", "place_program", "run_program"]

PROGRAM_ALIGN = 64


def place_program(image: bytes, program) -> tuple[bytearray, int, int]:
    """``(memory, prog_addr, mem_size)``: the program's words after ``image`` (aligned);
    ``mem_size = len(image)`` bounds the instructions' external ranges."""
    mem = bytearray(image)
    mem += bytes(-len(mem) % PROGRAM_ALIGN)
    addr = len(mem)
    mem += encode_program(program)
    return mem, addr, len(image)


@dataclass
class InstrTiming:
    index: int
    instr: Instr
    fetch: int      # cycles from the end of the previous instruction to the unit's start
    exec: int       # cycles in the execution unit
    head: int = 0   # preloaded (a GEMM, or a row unit's record): cycles from its preload to
    #                 its start (0: not preloaded)

    @property
    def total(self) -> int:
        return self.fetch + self.exec


@dataclass
class ProgramRun:
    """What one program run produced."""
    memory: bytearray
    cycles: int
    error: bool
    error_index: int
    error_code: int
    timings: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    read_bytes: int = 0
    write_bytes: int = 0


def _region(ctx, cfg, bufs, ins: Instr):
    """The buffer region ``ins`` wrote (STORE: read), as an int array."""
    from rtl.ports import row_words
    shapes = operand_shapes(ins)
    name = "a" if ins.op == Op.STORE else "dst"
    if name not in shapes:
        return None
    rows, cols = shapes[name]
    opd = getattr(ins, name)
    mem = bufs.memories[Buf(opd.buf)]
    words = row_words(cfg, opd.buf)
    C = cfg.cols
    j0, j1 = opd.col // C, -(-(opd.col + cols) // C)
    out = np.zeros((rows, cols), np.int64)
    for r in range(rows):
        row = read_words(ctx, mem, (opd.row + r) * words + j0, j1 - j0)
        out[r] = [v for word in row for v in word][:cols]
    return out


def run_program(cfg: AccelConfig, program, image: bytes, *, accel=None, rng=None,
                stall: float = 0.0, latency: int = 2, snapshot: bool = True, vcd=None,
                max_cycles: int = 2_000_000, prog_len: int | None = None) -> ProgramRun:
    """Run ``program`` with external memory ``image`` on a (fresh) accelerator for ``cfg``.

    ``snapshot`` reads every instruction's output region (for first-mismatch reports);
    ``prog_len`` bounds the instruction count (default: the program's length)."""
    from rtl.accel import Accelerator
    from rtl.ports import mem_beat_bytes
    program = list(program)
    dut = accel or Accelerator(cfg)
    mem, prog_addr, mem_size = place_program(image, program)
    model = MemoryModel(dut.mem, mem_beat_bytes(cfg), mem, latency=latency, rng=rng,
                        stall=stall)
    res = ProgramRun(mem, 0, False, 0, 0)

    async def bench(ctx):
        ctx.set(dut.prog_addr, prog_addr)
        ctx.set(dut.prog_len, len(program) if prog_len is None else prog_len)
        ctx.set(dut.mem_size, mem_size)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        idx, t0, t_start = 0, 0, None
        preload = dut.units["gemm"].preload | dut.units["row"].preload
        t_preload = {}          # index -> ``cycles`` in the cycle of its preload
        while True:
            cond = dut.done | (dut.index != idx) | preload
            if t_start is None:
                cond = cond | (dut.op != 0)
            # Values sampled at the clock edge where ``cond`` holds (before the edge).
            done, index, op, cyc, pl = await ctx.tick().sample(
                dut.done, dut.index, dut.op, dut.cycles, preload).until(cond)
            if pl:                  # preloads the instruction after the running one
                t_preload[index + 1] = cyc
            if op != 0 and t_start is None:
                t_start = cyc   # the cycle after the unit's start
            if index != idx or done:
                if t_start is not None and idx < len(program):
                    ins = program[idx]
                    head = 0
                    if idx in t_preload:
                        head = t_start - 1 - t_preload.pop(idx)
                    res.timings.append(InstrTiming(idx, ins, t_start - t0, cyc - t_start,
                                                   head))
                    if snapshot and not (done and ctx.get(dut.error)):
                        res.outputs[idx] = _region(ctx, cfg, dut.buffers, ins)
                t0, t_start, idx = cyc, None, index
            if done:
                break
        res.cycles = ctx.get(dut.cycles)
        res.error = bool(ctx.get(dut.error))
        res.error_index = ctx.get(dut.error_index)
        res.error_code = ctx.get(dut.error_code)

    run_simulation(dut, [bench], max_cycles=max_cycles, vcd=vcd, background=model.processes())
    res.read_bytes, res.write_bytes = model.read_bytes, model.write_bytes
    return res
