import math

import numpy as np
import pytest
import torch

from golden.gelu import GeluParams, gelu_int, gelu_params, gelu_poly_float
from rtl.gelu import Gelu
from sim.nonlinear import first_output, run_lanes
from sim.streams import run_simulation

# -- golden vs float ------------------------------------------------------------------------

def test_golden_constants_ibert():
    # S = 1/16: S' = S/sqrt(2); b_int = floor(-1.769 / S'), c_int = floor(1 / (a S'^2))
    p = gelu_params(1 / 16, 1 / 32, in_bits=8)
    assert p.b_int == math.floor(-1.769 * 16 * math.sqrt(2)) == -41
    assert p.c_int == math.floor(1 / (-0.2888 / 512)) == -1773
    assert p.one_int == p.c_int


def test_golden_hand_cases():
    p = gelu_params(1 / 16, 1 / 32, in_bits=8)      # b_int=-41, c_int=one_int=-1773
    assert (p.mult, p.shift) == (37854, 26)           # 2**-4 * 0.2888 * 2**-9 / 2 / 2**-5
    # q=16: t = 16-41 = -25, L = 625-1773 = -1148, factor = -(-1148-1773) = 2921,
    #   g = 46736, y = round(46736 * 37854 / 2**26) = round(26.36) = 26   (float gelu(1)*32 = 26.9)
    # q=-16: erf = +1148, factor = 625, g = -10000 -> round(-5.64) = -6  (float: -5.1)
    # q=32: t = -9, L = -1692, factor = 3465, g = 110880 -> round(62.5) = 63 (float 62.5)
    # q=127: saturates to 127; q=-128: t=0, L=-1773, factor=0 -> 0
    y = gelu_int([0, 16, -16, 127, -128, 32], p)
    assert list(y) == [0, 26, -6, 127, 0, 63]


@pytest.mark.parametrize("in_bits,scale_in,scale_out", [(8, 1 / 16, 1 / 32), (8, 1 / 32, 1 / 64),
                                                        (12, 1 / 256, 1 / 32)])
def test_golden_vs_torch(in_bits, scale_in, scale_out):
    p = gelu_params(scale_in, scale_out, in_bits=in_bits)
    q = np.arange(-(1 << (in_bits - 1)), 1 << (in_bits - 1))
    x = q * scale_in
    y = gelu_int(q, p)
    ref = np.clip(torch.nn.functional.gelu(torch.tensor(x)).numpy() / scale_out, -128, 127)
    poly = np.clip(gelu_poly_float(x) / scale_out, -128, 127)
    err = np.abs(y - ref).max()
    poly_err = np.abs(poly - ref).max()
    # the target: no worse than the polynomial's own error plus one output LSB
    assert err <= poly_err + 1.0, f"max {err:.3f} LSB vs polynomial {poly_err:.3f} LSB"


def test_golden_delta():
    p = gelu_params(1 / 16, 1 / 32, in_bits=8, delta=0.5)
    assert p.one_int < p.c_int
    q = np.arange(-128, 128)
    ref = np.clip(gelu_poly_float(q / 16, delta=0.5) * 32, -128, 127)
    assert np.abs(gelu_int(q, p) - ref).max() <= 1.5


def test_golden_bad_parameters():
    with pytest.raises(ValueError, match=r"in_bits must be in the range \[2, 14\], not 15"):
        gelu_params(0.1, 0.1, in_bits=15)
    with pytest.raises(ValueError, match=r"delta must be in the range \[0.25, 1.0\]"):
        gelu_params(0.1, 0.1, delta=2.0)
    with pytest.raises(ValueError, match=r"scale_in must be a positive finite number"):
        gelu_params(0.0, 0.1)
    with pytest.raises(ValueError, match=r"b_int must be in the range \[-256, -1\], not 3"):
        GeluParams(3, -100, -100, 1, 1, in_bits=8)
    with pytest.raises(ValueError, match=r"one_int must be in the range \[-524288, -100\]"):
        GeluParams(-20, -100, -50, 1, 1, in_bits=8)
    with pytest.raises(ValueError, match=r"shift must be in the range \[0, 62\], not 70"):
        GeluParams(-2, -100, -100, 1, 70, in_bits=8)


def test_rtl_bad_parameters(tiny):
    with pytest.raises(ValueError, match=r"in_width must be in the range \[2, 14\], not 16"):
        Gelu(tiny, in_width=16)
    with pytest.raises(ValueError, match=r"lanes must be in the range \[1, 64\], not 100"):
        Gelu(tiny, lanes=100)
    with pytest.raises(TypeError, match=r"cfg must be an AccelConfig"):
        Gelu("tiny")


# -- RTL vs golden -----------------------------------------------------------------------------

def _run(dut, q, p, rng, stall=0.3):
    async def setup(ctx):
        ctx.set(dut.cmd, p.as_dict())

    return run_lanes(dut, q, rng, stall, setup=setup)


@pytest.mark.parametrize("in_width,lanes,scales,delta", [
    (8, 1, (1 / 16, 1 / 32), 1.0), (8, 2, (1 / 8, 1 / 128), 1.0), (14, 1, (1 / 1024, 1 / 32), 1.0),
    (8, 1, (1 / 16, 1 / 32), 0.5), (4, 1, (1 / 2, 1 / 64), 1.0)])
def test_rtl_bit_exact(tiny, rng, in_width, lanes, scales, delta):
    p = gelu_params(*scales, in_bits=in_width, mult_width=tiny.mult_width, delta=delta)
    dut = Gelu(tiny, in_width=in_width, lanes=lanes)
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    edge = [lo, hi, 0, 1, -1, p.b_int, -p.b_int, min(hi, -p.b_int + 1), max(lo, p.b_int - 1)]
    edge = [min(max(e, lo), hi) for e in edge]
    q = np.concatenate([edge, rng.integers(lo, hi + 1, size=70)])
    q = q[:len(q) // lanes * lanes]
    assert list(_run(dut, q, p, rng)) == list(gelu_int(q, p))


def test_rtl_saturation_extreme_params(tiny, rng):
    # the widest constants the ranges allow, with a large multiplier: saturates both ways
    p = GeluParams(-(1 << 8), -(1 << 17), -(1 << 19), (1 << 16) - 1, 20, in_bits=8)
    dut = Gelu(tiny, in_width=8)
    q = np.concatenate([[-128, 127, 0, 1, -1], rng.integers(-128, 128, size=30)])
    y = gelu_int(q, p)
    assert y.min() == -128 and y.max() == 127
    assert list(_run(dut, q, p, rng)) == list(y)


def test_rtl_latency(tiny):
    dut = Gelu(tiny)
    p = gelu_params(1 / 16, 1 / 32, in_bits=8)

    async def bench(ctx):
        ctx.set(dut.cmd, p.as_dict())
        cycles, out = await first_output(ctx, dut, [16])
        return cycles, out[0]

    (cycles, value), = run_simulation(dut, [bench], max_cycles=100)
    assert cycles == dut.latency == 6
    assert value == gelu_int([16], p)[0]


def test_rtl_emits_verilog(tiny):
    from amaranth.back import verilog
    assert "module gelu" in verilog.convert(Gelu(tiny, lanes=2), name="gelu")
