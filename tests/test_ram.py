"""rtl.ram.buffer_ram: read data exactly two cycles after the address, writes landing one cycle
after they are given, the same latency through a platform's registered_ram hook."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.ram import ReservedFIFO, buffer_ram
from sim.streams import run_simulation

DEPTH = 16


class Ram(wiring.Component):
    w_addr: In(range(DEPTH))
    w_data: In(signed(12))
    w_en: In(1)
    r_addr: In(range(DEPTH))
    r_data: Out(signed(12))

    def __init__(self, hook=None):
        self._hook = hook
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        wr, rd = buffer_ram(m, self._hook, "buf", signed(12), DEPTH)
        m.d.comb += [wr.addr.eq(self.w_addr), wr.data.eq(self.w_data), wr.en.eq(self.w_en),
                     rd.addr.eq(self.r_addr), self.r_data.eq(rd.data)]
        return m


class FakeHook:
    """A platform whose registered_ram is a plain memory with two read registers, recording
    that it was used (the latency contract is the same)."""

    def __init__(self):
        self.calls = []

    def registered_ram(self, m, *, name, width, depth, w_addr, w_data, w_en, r_addr):
        from amaranth.lib import memory
        self.calls.append((name, width, depth))
        m.submodules[f"{name}_hooked"] = mem = memory.Memory(shape=width, depth=depth, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        out = Signal(width)
        m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en),
                     rp.addr.eq(r_addr)]
        m.d.sync += out.eq(rp.data)
        return out


@pytest.mark.parametrize("hooked", [False, True])
def test_latency_and_write_to_read_distance(rng, hooked):
    hook = FakeHook() if hooked else None
    dut = Ram(hook)
    model = np.zeros(DEPTH, np.int64)
    cycles = 300
    writes = [(int(rng.integers(DEPTH)), int(rng.integers(-2048, 2048)), bool(rng.random() < 0.5))
              for _ in range(cycles)]
    reads = [int(rng.integers(DEPTH)) for _ in range(cycles)]
    # landed[t]: the contents before the write given in cycle t.
    landed = []
    for t in range(cycles):
        landed.append(model.copy())
        a, d, en = writes[t]
        if en:
            model[a] = d

    async def bench(ctx):
        got = []
        for t in range(cycles):
            a, d, en = writes[t]
            ctx.set(dut.w_addr, a)
            ctx.set(dut.w_data, d)
            ctx.set(dut.w_en, en)
            ctx.set(dut.r_addr, reads[t])
            if t >= 2:
                got.append(ctx.get(dut.r_data))
            await ctx.tick()
        return got

    got = run_simulation(dut, [bench], max_cycles=cycles + 5)[0]
    # r_data in cycle t answers the read address of cycle t - 2, which sees the writes given
    # up to cycle t - 4: a write is readable from the second cycle after it was given, not
    # from the first.
    want = [int(landed[t - 2 - 1][reads[t - 2]]) if t >= 3 else None for t in range(2, cycles)]
    pairs = [(g, w) for g, w in zip(got, want) if w is not None]
    assert len(pairs) > 250
    assert all(g == w for g, w in pairs)
    if hooked:
        assert hook.calls == [("buf", 12, DEPTH)]


class FifoPair(wiring.Component):
    """ReservedFIFO and amaranth's SyncFIFOBuffered side by side on the same inputs."""
    w_data: In(10)
    w_en: In(1)
    r_en: In(1)

    def __init__(self, depth):
        self.depth = depth
        super().__init__()

    def elaborate(self, platform):
        from amaranth.lib import fifo
        m = Module()
        m.submodules.dut = self.dut = ReservedFIFO(10, self.depth)
        m.submodules.ref = self.ref = fifo.SyncFIFOBuffered(width=10, depth=self.depth)
        for f in (self.dut, self.ref):
            m.d.comb += [f.w_data.eq(self.w_data), f.w_en.eq(self.w_en), f.r_en.eq(self.r_en)]
        return m


@pytest.mark.parametrize("depth", [1, 2, 5, 17, 32])
def test_reserved_fifo_keeps_order_and_level(rng, depth):
    """Random writes within the writer's credits (fewer than ``depth`` entries held) and random
    reads, in phases that fill and drain it: every write is kept, reads return the writes in
    order, ``w_level`` counts the entries, and an entry written into an empty FIFO is readable
    two cycles later. Cycle for cycle the same as SyncFIFOBuffered while that accepts every
    write (it may refuse one with ``depth - 1`` entries held right after an empty output
    register, at depth 2)."""
    dut = FifoPair(depth)
    seen = {"full": 0, "reads": 0}

    async def bench(ctx):
        queue = []
        ref_ok = True
        d, f = dut.dut, dut.ref
        for cyc in range(40 * depth + 60):
            phase = (cyc // (4 * depth + 4)) % 3          # fill, drain, random
            w = len(queue) < depth and rng.random() < (0.95, 0.1, 0.6)[phase]
            r = rng.random() < (0.1, 0.95, 0.6)[phase]
            value = int(rng.integers(0, 1 << 10))
            ctx.set(dut.w_en, int(w))
            ctx.set(dut.w_data, value)
            ctx.set(dut.r_en, int(r))
            assert ctx.get(d.w_level) == len(queue), cyc
            if ctx.get(d.r_rdy):
                assert ctx.get(d.r_data) == queue[0], cyc
            if ref_ok:
                assert ctx.get(d.r_rdy) == ctx.get(f.r_rdy), cyc
                assert ctx.get(d.w_level) == ctx.get(f.w_level), cyc
                ref_ok = not w or bool(ctx.get(f.w_rdy))
            seen["full"] += len(queue) == depth
            if r and ctx.get(d.r_rdy):
                queue.pop(0)
                seen["reads"] += 1
            if w:
                queue.append(value)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        ctx.set(dut.r_en, 1)
        for _ in range(depth + 3):                          # drain: nothing was lost
            if ctx.get(d.r_rdy):
                assert ctx.get(d.r_data) == queue.pop(0)
            await ctx.tick()
        assert queue == [] and not ctx.get(d.r_rdy)
        ctx.set(dut.r_en, 0)
        ctx.set(dut.w_en, 1)                                # latency into an empty FIFO
        ctx.set(dut.w_data, 0x155)
        await ctx.tick()
        ctx.set(dut.w_en, 0)
        await ctx.tick()
        assert ctx.get(d.r_rdy) and ctx.get(d.r_data) == 0x155

    run_simulation(dut, [bench], max_cycles=100 * depth + 200)
    assert seen["full"] > 0 and seen["reads"] > 10 * depth


def test_reserved_fifo_rejects_bad_sizes():
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        ReservedFIFO(8, 0)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        ReservedFIFO(0, 4)
