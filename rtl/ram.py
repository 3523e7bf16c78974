"""Block-RAM buffers whose reads come from a register, with a platform hook.

:func:`buffer_ram` is to block RAM what :func:`rtl.multiply.pipelined_multiply` is to DSP
blocks: where the platform provides ``registered_ram(m, *, name, width, depth, w_addr, w_data,
w_en, r_addr) -> Value`` (:class:`platforms.ecp5.ECP5Synthesis`: DP16KD with its output
register), the read register is inside the RAM; otherwise it is a fabric register after a
synchronous read port. The latency is the same either way, so simulation (no platform) is
cycle-exact with the synthesized design. ECP5 block RAM without its output register has a
5.6-5.8 ns clock-to-output at speed grade 6, too slow for any logic after it at 150 MHz.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Shape, Signal, Value
from amaranth.lib import memory

__all__ = ["buffer_ram"]


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
