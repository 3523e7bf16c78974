"""rtl.multiply: pipelined (and limb-split) multipliers, with and without a platform DSP hook."""

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.multiply import multiply_latency, pipelined_multiply
from sim.streams import run_simulation


class RegisteredHookPlatform:
    """Stands in for a DSP primitive: operands registered inside, product combinational.
    Records the operand widths it was asked for (a DSP input takes at most 18 bits)."""

    def __init__(self):
        self.widths = []

    def registered_multiply(self, m, a, b, *, name):
        self.widths.append((len(a), len(b)))
        ar, br = Signal(signed(18), name=f"{name}_ra"), Signal(signed(18), name=f"{name}_rb")
        m.d.sync += [ar.eq(a), br.eq(b)]
        return ar * br


class Mul(wiring.Component):
    def __init__(self, a_shape, b_shape, platform_hook=None):
        self._hook = platform_hook
        prod = len(Signal(a_shape)) + len(Signal(b_shape)) + 1
        super().__init__({"a": In(a_shape), "b": In(b_shape), "p": Out(signed(prod))})

    def elaborate(self, platform):
        m = Module()
        p, self.stages = pipelined_multiply(m, self._hook, self.a, self.b, name="mul")
        m.d.comb += self.p.eq(p)
        return m


SHAPES = [
    (signed(8), signed(8)),          # one DSP
    (signed(33), unsigned(16)),      # the GEMM epilogue: 2 limbs x 1
    (unsigned(20), signed(18)),      # unsigned operand wider than a limb
    (signed(40), signed(30)),        # 3 x 2 limbs
    (unsigned(17), unsigned(17)),    # widest single unsigned limb
]


def _range(shape):
    return ((-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed
            else (0, (1 << shape.width) - 1))


@pytest.mark.parametrize("a_shape, b_shape", SHAPES)
@pytest.mark.parametrize("hook", [False, True])
def test_exact_products_and_latency(a_shape, b_shape, hook, rng):
    platform = RegisteredHookPlatform() if hook else None
    dut = Mul(a_shape, b_shape, platform)
    (alo, ahi), (blo, bhi) = _range(a_shape), _range(b_shape)
    # extremes first, then random values (Python ints: no 64-bit overflow)
    pairs = [(alo, blo), (alo, bhi), (ahi, blo), (ahi, bhi), (0, bhi), (alo, 0),
             (1, -1 if b_shape.signed else 1)]
    pairs += [(int(rng.integers(alo, ahi + 1)), int(rng.integers(blo, bhi + 1)))
              for _ in range(40)]
    latency = multiply_latency(a_shape.width, a_shape.signed, b_shape.width, b_shape.signed)

    async def bench(ctx):
        got = []
        for cycle in range(len(pairs) + latency):
            if cycle < len(pairs):
                ctx.set(dut.a, pairs[cycle][0])
                ctx.set(dut.b, pairs[cycle][1])
            await ctx.tick()
            if cycle + 1 >= latency:
                got.append(ctx.get(dut.p))
        return got

    got = run_simulation(dut, [bench], max_cycles=len(pairs) + latency + 5)[0]
    assert dut.stages == latency
    assert got[:len(pairs)] == [a * b for a, b in pairs]
    if hook:
        assert platform.widths and all(wa <= 18 and wb <= 18 for wa, wb in platform.widths)


def test_limb_counts_set_the_latency():
    assert multiply_latency(8, True, 8, True) == 2
    assert multiply_latency(18, True, 17, False) == 2
    assert multiply_latency(33, True, 16, False) == 3
    assert multiply_latency(18, False, 8, True) == 3
