# amaranth: UnusedElaboratable=no
"""The out-of-context harness (platforms.harness) and the MAC stand-in (platforms.standin)."""

import re

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from platforms.harness import OOCHarness, port_bits
from platforms.standin import MacArray
from sim.streams import run_simulation


class SmallMac(wiring.Component):
    """A registered int8 multiply-accumulate with stream ports: the harness's test subject."""

    def __init__(self):
        pair = data.StructLayout({"a": signed(8), "b": signed(8)})
        super().__init__({
            "i": In(stream.Signature(pair)),
            "o": Out(stream.Signature(signed(20))),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        acc = Signal(signed(20))
        m.d.comb += [self.i.ready.eq(~self.o.valid | self.o.ready),
                     self.o.payload.eq(acc)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            prod = self.i.payload.a * self.i.payload.b
            with m.If(self.clear):
                m.d.sync += acc.eq(prod)
            with m.Else():
                m.d.sync += acc.eq(acc + prod)
            m.d.sync += self.o.valid.eq(1)
        return m


def _ports_by_name(dut):
    ins, outs = port_bits(dut)
    return dict(ins), dict(outs)


def test_port_bits_splits_directions():
    dut = SmallMac()
    ins, outs = _ports_by_name(dut)
    assert sorted(ins) == ["clear", "i.payload", "i.valid", "o.ready"]
    assert sorted(outs) == ["i.ready", "o.payload", "o.valid"]
    assert sum(len(v) for v in ins.values()) == 16 + 1 + 1 + 1
    assert sum(len(v) for v in outs.values()) == 1 + 20 + 1


@pytest.mark.parametrize("pins", [1, 3])
def test_harness_has_few_ports(pins):
    harness = OOCHarness(MacArray(2, 2), in_pins=pins, out_pins=pins)
    text = rtlil.convert(harness, name="top")
    top = text[text.index("module \\top\n"):]
    top = top[:top.index("\nend\n")]
    ports = re.findall(r"^\s*wire width (\d+) (input|output) \d+ +\\(\S+)$", top, re.MULTILINE)
    assert sorted(name for _, _, name in ports) == ["clk", "rst", "si", "so"]
    assert {name: int(w) for w, _, name in ports}["si"] == pins
    assert harness.dut_in_bits == 2 * 8 + 2 * 8 + 2
    assert harness.dut_out_bits == 4 * 32
    assert "module \\top.dut" in text


def _shift_in_and_check(harness, chains_bits, rng):
    """Feed each chain its bit sequence; after `length` cycles stage i holds bit i."""
    dut = harness.dut
    ins, _ = _ports_by_name(dut)

    async def bench(ctx):
        length = harness.latency
        for t in range(length):
            ctx.set(harness.si, sum(int(bits[t]) << j for j, bits in enumerate(chains_bits)))
            await ctx.tick()
        seen = []
        for j, chain in enumerate(harness.in_chains):
            for i, (name, bit) in enumerate(chain):
                got = (ctx.get(ins[name]) >> bit) & 1
                seen.append(got == int(chains_bits[j][length - len(chain) + i]))
        return seen

    seen, = run_simulation(harness, [bench], max_cycles=200)
    return seen


@pytest.mark.parametrize("pins", [1, 2])
def test_shift_chain_reaches_every_input_bit(pins, rng):
    harness = OOCHarness(SmallMac(), in_pins=pins)
    bits = [rng.integers(0, 2, harness.latency) for _ in range(pins)]
    seen = _shift_in_and_check(harness, bits, rng)
    assert len(seen) == harness.dut_in_bits
    assert all(seen)
    # Every input bit appears in exactly one chain.
    flat = [b for chain in harness.in_chains for b in chain]
    assert len(set(flat)) == len(flat) == harness.dut_in_bits


def test_misr_observes_outputs(rng):
    harness = OOCHarness(SmallMac(), out_pins=2)
    dut = harness.dut
    _, outs = _ports_by_name(dut)
    groups = [Cat(outs[name][bit] for name, bit in chain) for chain in harness.out_chains]
    cycles = 60

    async def bench(ctx):
        misr = [0] * len(groups)
        mismatches, toggles = 0, 0
        last = None
        for _ in range(cycles):
            ctx.set(harness.si, int(rng.integers(0, 4)))
            so = ctx.get(harness.so)
            for j in range(len(groups)):
                mismatches += ((so >> j) & 1) != (misr[j] & 1)
            values = [ctx.get(g) for g in groups]
            if last is not None:
                toggles += values != last
            last = values
            misr = [(misr[j] >> 1) ^ values[j] for j in range(len(groups))]
            await ctx.tick()
        return mismatches, toggles

    (mismatches, toggles), = run_simulation(harness, [bench], max_cycles=cycles + 10)
    assert mismatches == 0
    assert toggles > 10          # the random stimulus really exercises the design


def test_harness_rejects_bad_arguments():
    with pytest.raises(TypeError, match="dut must be a wiring.Component"):
        OOCHarness(Module())
    with pytest.raises(ValueError, match=r"in_pins must be in the range \[1, 64\], not 0"):
        OOCHarness(SmallMac(), in_pins=0)
    with pytest.raises(TypeError, match="out_pins must be an integer"):
        OOCHarness(SmallMac(), out_pins=1.5)

    class NoOutputs(wiring.Component):
        x: In(4)

        def elaborate(self, platform):
            return Module()

    with pytest.raises(ValueError, match="at least one output port bit"):
        OOCHarness(NoOutputs())


def test_mac_array_matches_numpy(rng):
    rows, cols, steps = 2, 3, 12
    dut = MacArray(rows, cols)
    assert dut.latency == 3 + (rows - 1) + (cols - 1)
    a = rng.integers(-128, 128, (steps, rows))
    b = rng.integers(-128, 128, (steps, cols))
    a[0], b[0] = -128, -128                       # extreme operands
    clear = np.zeros(steps, bool)
    clear[[0, 7]] = True
    history, acc = [], np.zeros((rows, cols), np.int64)
    for t in range(steps):
        outer = np.outer(a[t], b[t])
        acc = outer if clear[t] else acc + outer
        history.append(acc.copy())

    def expected(ticks, r, c):
        # PE (r, c) has absorbed step k after 3 + r + c ticks.
        k = min(ticks - 3 - r - c, steps - 1)
        return 0 if k < 0 else int(history[k][r, c])

    async def bench(ctx):
        mismatches = []
        for t in range(steps + dut.latency):
            if t < steps:
                ctx.set(dut.a, a[t].tolist())
                ctx.set(dut.b, b[t].tolist())
            ctx.set(dut.en, int(t < steps))
            ctx.set(dut.clear, int(t < steps and clear[t]))
            await ctx.tick()
            for r in range(rows):
                for c in range(cols):
                    got = ctx.get(dut.acc[r * cols + c])
                    if got != expected(t + 1, r, c):
                        mismatches.append((t + 1, r, c, got, expected(t + 1, r, c)))
        return mismatches

    mismatches, = run_simulation(dut, [bench], max_cycles=steps + 20)
    assert mismatches == []


def test_mac_array_rejects_bad_parameters():
    with pytest.raises(ValueError, match=r"rows must be in the range \[1, 64\], not 0"):
        MacArray(0, 1)
    with pytest.raises(ValueError, match=r"acc_width must be in the range \[16, 64\], not 8"):
        MacArray(1, 1, acc_width=8)
    with pytest.raises(ValueError, match="multiplier must be 'infer' or 'mult18x18d'"):
        MacArray(1, 1, multiplier="lut")


def test_mac_array_mult18x18d_instances():
    text = rtlil.convert(MacArray(1, 2, multiplier="mult18x18d"), name="top")
    assert text.count("cell \\MULT18X18D") == 2
    assert re.search(r'parameter \\REG_INPUTA_CLK "CLK0"', text)
    assert re.search(r'parameter \\REG_OUTPUT_CLK "NONE"', text)


def test_mult18x18d_rejects_wide_operands():
    from platforms.ecp5 import mult18x18d
    with pytest.raises(ValueError, match="a must be at most 18 bits wide, not 19"):
        mult18x18d(Module(), Signal(19), Signal(8), name="m")
