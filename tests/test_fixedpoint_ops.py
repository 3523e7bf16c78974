"""rtl.fixedpoint_ops: the HDL round_shift / saturate match golden.fixedpoint exactly."""

import numpy as np
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import round_shift as golden_round_shift
from golden.fixedpoint import saturate as golden_saturate
from rtl.fixedpoint_ops import round_shift, saturate
from sim.streams import run_simulation


class Ops(wiring.Component):
    x: In(signed(20))
    s: In(unsigned(5))
    by_port: Out(signed(21))
    by_const: Out(signed(21))
    sat8: Out(signed(8))
    satu6: Out(unsigned(6))
    u: In(unsigned(12))
    sat8_of_u: Out(signed(8))       # an unsigned input clipped to a signed result
    satu6_of_u: Out(unsigned(6))
    sat24: Out(signed(24))          # a result wider than the input: the input itself

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.by_port.eq(round_shift(self.x, self.s)),
                     self.by_const.eq(round_shift(self.x, 3)),
                     self.sat8.eq(saturate(self.x, 8)),
                     self.satu6.eq(saturate(self.x, 6, signed_out=False)),
                     self.sat8_of_u.eq(saturate(self.u, 8)),
                     self.satu6_of_u.eq(saturate(self.u, 6, signed_out=False)),
                     self.sat24.eq(saturate(self.x, 24))]
        return m


def test_matches_golden(rng):
    dut = Ops()
    lo, hi = -(1 << 19), (1 << 19) - 1
    xs = [lo, hi, 0, -1, 1, 127, 128, -128, -129, 63, 64, -3, 3, 4, -4, -12, 12]
    xs += rng.integers(lo, hi + 1, 200).tolist()
    shifts = [int(s) for s in rng.integers(0, 20, len(xs))]
    shifts[:4] = [0, 19, 1, 2]
    us = [0, 1, 63, 64, 127, 128, 4095] + rng.integers(0, 4096, len(xs) - 7).tolist()

    async def bench(ctx):
        out = []
        for x, s, u in zip(xs, shifts, us):
            ctx.set(dut.x, x)
            ctx.set(dut.s, s)
            ctx.set(dut.u, u)
            await ctx.delay(1e-9)
            out.append((ctx.get(dut.by_port), ctx.get(dut.by_const), ctx.get(dut.sat8),
                        ctx.get(dut.satu6), ctx.get(dut.sat8_of_u), ctx.get(dut.satu6_of_u),
                        ctx.get(dut.sat24)))
        return out

    got = np.array(run_simulation(dut, [bench], max_cycles=len(xs))[0])
    assert got[:, 0].tolist() == golden_round_shift(xs, shifts).tolist()
    assert got[:, 1].tolist() == golden_round_shift(xs, 3).tolist()
    assert got[:, 2].tolist() == golden_saturate(xs, 8).tolist()
    assert got[:, 3].tolist() == golden_saturate(xs, 6, signed=False).tolist()
    assert got[:, 4].tolist() == golden_saturate(us, 8).tolist()
    assert got[:, 5].tolist() == golden_saturate(us, 6, signed=False).tolist()
    assert got[:, 6].tolist() == xs
