"""ECP5 primitives: instance configuration of the DSP and block-RAM helpers (the instances
cannot be simulated; the flows place and route them, see tests/test_report.py)."""

import re

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from platforms.ecp5 import ECP5Synthesis, dp16kd_ram


class _Ram(wiring.Component):
    def __init__(self, width, depth):
        self.width, self.depth = width, depth
        abits = max(1, (depth - 1).bit_length())
        super().__init__({"w_addr": In(abits), "w_data": In(width), "w_en": In(1),
                          "r_addr": In(abits), "r_data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        data = ECP5Synthesis.registered_ram(
            m, name="ram", width=self.width, depth=self.depth, w_addr=self.w_addr,
            w_data=self.w_data, w_en=self.w_en, r_addr=self.r_addr)
        m.d.comb += self.r_data.eq(data)
        return m


def _blocks(text):
    return re.findall(r"cell \\DP16KD .*?\n(.*?)\n  end", text, re.S)


@pytest.mark.parametrize("width, depth, count, data_width", [
    (18, 1024, 1, 18),        # one block at x18
    (8, 2048, 1, 9),          # one block at x9
    (4, 4096, 1, 4),
    (36, 512, 2, 18),         # two lanes side by side
    (8, 4096, 2, 9),          # two banks
])
def test_dp16kd_ram_blocks_use_the_output_register(width, depth, count, data_width):
    text = rtlil.convert(_Ram(width, depth), name="top")
    blocks = _blocks(text)
    assert len(blocks) == count
    for body in blocks:
        assert re.search(r'parameter \\REGMODE_B "OUTREG"', body)
        assert re.search(r'parameter \\REGMODE_A "NOREG"', body)
        assert re.search(rf"parameter \\DATA_WIDTH_B {data_width}\b", body)


def test_dp16kd_ram_rejects_bad_shapes():
    m = Module()
    m._MustUse__silence = True                          # never elaborated
    with pytest.raises(ValueError, match="width must be a positive integer, not 0"):
        dp16kd_ram(m, name="r", width=0, depth=16, w_addr=Signal(4),
                   w_data=Signal(1), w_en=Signal(), r_addr=Signal(4))
