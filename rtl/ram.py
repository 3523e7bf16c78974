"""Block-RAM buffers whose reads come from a register, with a platform hook.

:func:`buffer_ram` is to block RAM what :func:`rtl.multiply.pipelined_multiply` is to DSP
blocks: where the platform provides ``registered_ram(m, *, name, width, depth, w_addr, w_data,
w_en, r_addr) -> Value`` (:class:`platforms.ecp5.ECP5Synthesis`: DP16KD with its output
register), the read register is inside the RAM; otherwise it is a fabric register after a
synchronous read port. The latency is the same either way, so simulation (no platform) is
cycle-exact with the synthesized design. ECP5 block RAM without its output register has a
5.6-5.8 ns clock-to-output at speed grade 6, too slow for any logic after it at 150 MHz.

:class:`ReservedFIFO` is a first-in first-out buffer for a writer that reserves room in
advance (credits), so that the memory's write enable is the writer's valid bit alone.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Shape, Signal, Value
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .checks import validating

__all__ = ["ReservedFIFO", "buffer_ram"]


def buffer_ram(m, platform, name, shape, depth):
    """A buffer with one write port and one read port whose data is registered: ``(wr, rd)``,
    ``wr`` with ``addr``, ``data`` and ``en``, ``rd`` with ``addr`` and ``data``; ``rd.data``
    holds the word at the ``rd.addr`` given two cycles earlier.

    Where the platform offers ``registered_ram`` (:class:`platforms.ecp5.ECP5Synthesis`: block
    RAM read through its output register), the second register is inside the RAM; otherwise
    it is a memory's synchronous read port followed by a fabric register (the same latency,
    so simulation is cycle-exact either way). Reading an address in the cycle it is written
    is undefined. Writes land one cycle after ``wr.en`` (a register on the way), so a word can
    be read from the second cycle after it was given to ``wr`` (``rtl.gemm`` reads its buffers
    later than that: the A buffer's halves alternate and are read only once full, a weight tile
    only once it is loaded).
    """
    wr = SimpleNamespace(addr=Signal(range(depth), name=f"{name}_waddr"),
                         data=Signal(shape, name=f"{name}_wdata"), en=Signal(name=f"{name}_we"))
    rd = SimpleNamespace(addr=Signal(range(depth), name=f"{name}_raddr"),
                         data=Signal(shape, name=f"{name}_rdata"))
    # The write is registered on its way (it lands a cycle after ``wr.en``), so that the
    # write-port selection is not in front of the RAM's address and data setup.
    w_addr = Signal(range(depth), name=f"{name}_waddr_r")
    w_data = Signal(shape, name=f"{name}_wdata_r")
    w_en = Signal(name=f"{name}_we_r")
    m.d.sync += [w_addr.eq(wr.addr), w_data.eq(wr.data), w_en.eq(wr.en)]
    hook = getattr(platform, "registered_ram", None)
    if hook is None:
        m.submodules[name] = mem = memory.Memory(shape=shape, depth=depth, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en),
                     rp.addr.eq(rd.addr)]
        m.d.sync += rd.data.eq(rp.data)
    else:
        width = Shape.cast(shape).width
        m.d.comb += rd.data.eq(hook(m, name=name, width=width, depth=depth, w_addr=w_addr,
                                    w_data=Value.cast(w_data), w_en=w_en, r_addr=rd.addr))
    return wr, rd


class ReservedFIFO(wiring.Component):
    """A first-in first-out buffer whose writer reserves room in advance (credits), so a write
    is never refused: :class:`amaranth.lib.fifo.SyncFIFOBuffered` with the same cycle
    behaviour (``depth - 1`` entries in a memory read into an output register), except that
    the memory's write enable is ``w_en`` alone, not gated by the fill level.

    Parameters
    ----------
    width, depth : int
        Entry width in bits; capacity (1: the output register alone).

    Members
    -------
    w_data : In(width)
    w_en : In(1)
        Writes ``w_data``. The writer must not write while ``w_level == depth``: it counts
        the free entries itself (the write is not checked, the entry would be lost).
    w_level : Out(range(depth + 1))
        Entries held (including the output register).
    r_data : Out(width), r_rdy : Out(1), r_en : In(1)
        The oldest entry; ``r_rdy & r_en`` removes it.

    Latency: an entry written into an empty buffer is on ``r_data`` two cycles after ``w_en``.
    Throughput: one write and one read per cycle.
    """

    def __init__(self, width: int, depth: int):
        with validating(self):
            if not isinstance(depth, int) or depth < 1:
                raise ValueError(f"depth must be a positive integer, not {depth!r}")
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"width must be a positive integer, not {width!r}")
        self.width, self.depth = width, depth
        super().__init__({"w_data": In(width), "w_en": In(1), "w_level": Out(range(depth + 1)),
                          "r_data": Out(width), "r_rdy": Out(1), "r_en": In(1)})

    def elaborate(self, platform):
        m = Module()
        inner = self.depth - 1
        if inner == 0:
            with m.If(self.r_en):
                m.d.sync += self.r_rdy.eq(0)
            with m.If(self.w_en):
                m.d.sync += [self.r_data.eq(self.w_data), self.r_rdy.eq(1)]
            m.d.comb += self.w_level.eq(self.r_rdy)
            return m
        level = Signal(range(inner + 1))
        produce = Signal(range(inner))
        consume = Signal(range(inner))
        m.submodules.storage = storage = memory.Memory(shape=self.width, depth=inner, init=[])
        w_port, r_port = storage.write_port(), storage.read_port(domain="sync")

        do_write = self.w_en
        do_read = (level != 0) & (~self.r_rdy | self.r_en)
        m.d.comb += [w_port.addr.eq(produce), w_port.data.eq(self.w_data),
                     w_port.en.eq(do_write),
                     r_port.addr.eq(consume), r_port.en.eq(do_read),
                     self.r_data.eq(r_port.data),
                     self.w_level.eq(level + self.r_rdy)]
        with m.If(do_write):
            m.d.sync += produce.eq(Mux(produce == inner - 1, 0, produce + 1))
        with m.If(do_read):
            m.d.sync += consume.eq(Mux(consume == inner - 1, 0, consume + 1))
        with m.If(do_write & ~do_read):
            m.d.sync += level.eq(level + 1)
        with m.If(do_read & ~do_write):
            m.d.sync += level.eq(level - 1)
        with m.If(do_read):
            m.d.sync += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        return m
