"""Run one accelerator instruction on one execution unit and compare it with the golden model.

:class:`UnitHarness` puts an execution unit (any component with ``rtl.ports.exec_signature``)
between the on-chip buffers (``rtl.buffers.OnChipBuffers``) and the external memory model
(``sim.memory.MemoryModel``). :func:`run_instr` preloads buffers and memory, pulses ``start``
with one instruction and waits for ``done``; :func:`golden_instr` runs the same instruction in
the golden executor; :func:`check_instr` does both and asserts that every buffer and the memory
agree, naming the first differing element.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring

from golden.config import AccelConfig
from golden.executor import _Machine, _step
from golden.isa import Buf, Instr, buffers

from .memory import MemoryModel
from .streams import run_simulation

__all__ = ["UnitHarness", "check_instr", "empty_buffers", "execute_on_unit", "golden_instr",
           "read_buffers", "read_words", "run_instr"]


def empty_buffers(cfg: AccelConfig) -> dict:
    """Zero-filled ``{Buf: array}`` of every buffer of ``cfg``."""
    return {b: np.zeros((s.rows, s.cols), np.int64) for b, s in buffers(cfg).items()}


class UnitHarness(Elaboratable):
    """Elaboratable: ``unit`` wired to an :class:`~rtl.buffers.OnChipBuffers` preloaded with
    ``bufs``. ``unit.mem`` is left for the memory model."""

    def __init__(self, cfg: AccelConfig, unit, bufs=None):
        from rtl.buffers import OnChipBuffers
        self.cfg, self.unit = cfg, unit
        self.buffers = OnChipBuffers(cfg, init=bufs)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        m.submodules.buffers = self.buffers
        for name in ("rd0", "rd1", "wr", "score_wr", "score_rd"):
            wiring.connect(m, getattr(self.unit, name), getattr(self.buffers, name))
        return m


def read_words(ctx, mem, start: int, count: int) -> list[list[int]]:
    """Words ``start .. start + count - 1`` of a memory whose shape is an ``ArrayLayout`` of
    integers, as lists of lane values (read raw: faster than through layout views)."""
    layout = mem.shape
    elem = layout.elem_shape
    w, lanes, signed = elem.width, layout.length, elem.signed
    mask, half = (1 << w) - 1, 1 << (w - 1)
    out = []
    for i in range(start, start + count):
        raw = ctx.get(mem.data[i].as_value())
        row = [(raw >> (w * j)) & mask for j in range(lanes)]
        out.append([v - (1 << w) if signed and v >= half else v for v in row])
    return out


def read_buffers(ctx, cfg: AccelConfig, buffers_component) -> dict:
    """Read every buffer of an :class:`~rtl.buffers.OnChipBuffers` in a testbench."""
    from rtl.ports import row_words
    out = {}
    for b, spec in buffers(cfg).items():
        mem = buffers_component.memories[b]
        if b == Buf.SCORE:
            arr = np.array(read_words(ctx, mem, 0, cfg.max_tokens), np.int64).T
            out[b] = arr[:spec.rows, :spec.cols]
            continue
        words = row_words(cfg, b)
        flat = np.array(read_words(ctx, mem, 0, spec.rows * words), np.int64)
        out[b] = flat.reshape(spec.rows, words * cfg.cols)[:, :spec.cols]
    return out


def golden_instr(cfg: AccelConfig, ins: Instr, memory, bufs=None):
    """Run ``ins`` in the golden executor from ``memory``/``bufs``: returns
    ``(memory, buffers, trace_entry)`` after it."""
    mc = _Machine(cfg, memory)
    if bufs is not None:
        for b, x in bufs.items():
            mc.bufs[b] = np.array(x, np.int64)
    entry = _step(mc, ins, 0)
    return mc.mem, mc.bufs, entry


def run_instr(cfg: AccelConfig, unit, ins: Instr, memory, bufs=None, *, rng=None,
              stall: float = 0.0, latency: int = 2, max_cycles: int = 200_000, vcd=None,
              head: int = 0):
    """Run ``ins`` on ``unit`` (a fresh execution-unit instance): returns a dict with
    ``memory`` (bytearray), ``buffers``, ``cycles`` (``start`` to ``done``) and ``error``.
    ``head``: preload the instruction that many cycles before ``start``
    (:func:`execute_on_unit`)."""
    from rtl.ports import mem_beat_bytes
    mem = bytearray(memory)
    h = UnitHarness(cfg, unit, bufs)
    model = MemoryModel(unit.mem, mem_beat_bytes(cfg), mem, latency=latency, rng=rng,
                        stall=stall)
    res = {}

    async def bench(ctx):
        res["error"], res["cycles"] = await execute_on_unit(ctx, unit, ins, head=head)
        await ctx.tick()
        res["buffers"] = read_buffers(ctx, cfg, h.buffers)

    run_simulation(h, [bench], max_cycles=max_cycles, vcd=vcd, background=model.processes())
    res["memory"] = mem
    res["model"] = model
    return res


async def execute_on_unit(ctx, unit, ins, *, head: int = 0) -> tuple[bool, int]:
    """In a testbench: put ``ins`` on ``unit.instr``, pulse ``start`` and wait for ``done``;
    returns ``(error, cycles)``, ``cycles`` counted from ``start`` to ``done`` inclusive.

    ``head > 0`` (a unit with ``rtl.ports.preload_members``: :class:`rtl.exec_gemm.GemmUnit`,
    :class:`rtl.exec_row.RowUnit`): ``ins`` is first
    given on ``preload_instr`` with a ``preload`` pulse, ``head`` cycles before ``start``;
    meanwhile ``instr`` holds another instruction (its bitwise complement, as the controller's
    shared register holds the running instruction), and the unit must keep its buffer ports
    at zero and raise neither ``done`` nor ``error``.

    Checks the ``mem_busy`` contract on the way (``rtl.ports.exec_signature``): from the first
    cycle after ``start`` (or ``preload``) in which ``mem_busy`` is low, the unit issues no
    read command and takes no read beat until ``done``."""
    from amaranth.hdl import Value
    if not isinstance(head, int) or isinstance(head, bool):
        raise TypeError(f"head must be an integer, not {head!r}")
    if head < 0:
        raise ValueError(f"head must be non-negative, not {head}")
    word = int.from_bytes(ins.encode(), "little")
    off = False

    def check_mem(when):
        nonlocal off
        off = off or not ctx.get(unit.mem_busy)
        if off and (ctx.get(unit.mem.rcmd.valid) or ctx.get(unit.mem.rdata.ready)):
            raise AssertionError(f"{ins.name}: read channel used {when} after mem_busy fell")

    if head:
        ports = [(path, v) for path, mb, v in unit.signature.flatten(unit)
                 if path[0] in ("rd0", "rd1", "wr", "score_wr", "score_rd")
                 and mb.flow.name == "Out"]
        ctx.set(unit.instr.as_value(), ~word & ((1 << 256) - 1))
        ctx.set(unit.preload_instr.as_value(), word)
        ctx.set(unit.preload, 1)
        await ctx.tick()
        ctx.set(unit.preload, 0)
        for cycle in range(1, head):
            check_mem(f"{cycle} cycles after preload")
            for path, v in ports:
                assert ctx.get(Value.cast(v)) == 0, f"{path} driven during preload"
            assert not ctx.get(unit.done) and not ctx.get(unit.error), "done during preload"
            await ctx.tick()
    ctx.set(unit.instr.as_value(), word)
    ctx.set(unit.start, 1)
    await ctx.tick()
    ctx.set(unit.start, 0)
    cycles = 1
    while True:
        check_mem(f"in cycle {cycles}")
        if ctx.get(unit.done):
            return bool(ctx.get(unit.error)), cycles
        await ctx.tick()
        cycles += 1


def first_difference(expected: dict, got: dict):
    """``(buffer name, (row, col), expected, got)`` of the first differing element, or None."""
    for b in expected:
        e, g = np.asarray(expected[b]), np.asarray(got[b])
        diff = np.argwhere(e != g)
        if diff.size:
            r, c = (int(v) for v in diff[0])
            return Buf(b).name, (r, c), int(e[r, c]), int(g[r, c])
    return None


def check_instr(cfg: AccelConfig, unit, ins: Instr, memory, bufs=None, **kwargs):
    """Run ``ins`` on ``unit`` and in the golden executor; assert that buffers and memory agree
    and that no error was raised. Returns :func:`run_instr`'s dict plus ``entry``."""
    g_mem, g_bufs, entry = golden_instr(cfg, ins, memory, bufs)
    res = run_instr(cfg, unit, ins, memory, bufs, **kwargs)
    assert not res["error"], f"{ins}: unit raised error"
    diff = first_difference(g_bufs, res["buffers"])
    assert diff is None, f"{ins}: first difference in {diff[0]} at {diff[1]}: " \
                         f"expected {diff[2]}, got {diff[3]}"
    if bytes(g_mem) != bytes(res["memory"]):
        i = next(i for i, (x, y) in enumerate(zip(g_mem, res["memory"])) if x != y)
        raise AssertionError(f"{ins}: memory differs first at 0x{i:x}: expected {g_mem[i]}, "
                             f"got {res['memory'][i]}")
    res["entry"] = entry
    return res
