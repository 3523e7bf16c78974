"""Processing element: one signed multiply-accumulate of the output-stationary systolic array.

The PE keeps one output element in its accumulator. Operands arrive from the left (``a``, with
the control flags) and from the top (``b``) and leave, one cycle later, to the right and bottom
neighbours. The multiply is two register stages deep: operand registers, then a product
register, so that it maps onto one DSP block with its input registers (MULT18X18D on ECP5,
DSP48E2 on UltraScale+) and the accumulator adder starts from a register.

FPGA synthesis infers the multiplier, but not every flow moves fabric registers into the DSP
(Yosys' ECP5 flow does not). The multiply is therefore built by
:func:`rtl.multiply.pipelined_multiply`, which uses a platform's DSP primitive with input
registers when the platform provides one; the latency, and so the simulated timing, is the same
either way.

A ``first`` flag starts a new dot product (the accumulator is loaded instead of added to); a
``last`` flag copies the finished sum to ``result`` while the accumulator already starts on the
next tile, so consecutive tiles stream through the array without a drain bubble.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden.config import AccelConfig

from .multiply import pipelined_multiply

__all__ = ["PE", "Control"]


class Control(data.Struct):
    """Flags that travel with the ``a`` operand: the beat is ``valid``, the ``first`` or the
    ``last`` term of a dot product (both for a length-1 product)."""
    valid: 1
    first: 1
    last: 1


class PE(wiring.Component):
    """Output-stationary int8 x int8 MAC.

    Latency: operands and flags pass to the neighbours in 1 cycle; a ``last`` term presented in
    cycle ``t`` asserts ``done`` in cycle ``t + 2`` and the sum is visible on ``result`` from
    cycle ``t + 3`` (:attr:`latency` = 3). Throughput: one term per cycle; no stalls (invalid
    beats are bubbles).

    Members
    -------
    a_in, b_in, ctl_in : In
        Operands and flags from the left / top neighbour.
    a_out, b_out, ctl_out : Out
        The same, registered, toward the right / bottom neighbour.
    result : Out(signed(acc_width))
        The last completed dot product; holds until the next one completes.
    done : Out(1)
        High in the cycle in which ``result`` is being updated.
    """

    latency = 3

    def __init__(self, cfg: AccelConfig):
        self._cfg = cfg
        super().__init__({
            "a_in": In(signed(cfg.act_width)),
            "b_in": In(signed(cfg.weight_width)),
            "ctl_in": In(Control),
            "a_out": Out(signed(cfg.act_width)),
            "b_out": Out(signed(cfg.weight_width)),
            "ctl_out": Out(Control),
            "result": Out(signed(cfg.acc_width)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.b_out.eq(self.b_in),
            self.ctl_out.eq(self.ctl_in),
        ]
        # Operand registers (inside the DSP when the platform provides them), product register.
        product, stages = pipelined_multiply(m, platform, self.a_in, self.b_in, name="mul")
        assert stages == self.latency - 1
        ctl_reg = Signal(Control)
        pctl = Signal(Control)
        m.d.sync += [ctl_reg.eq(self.ctl_in), pctl.eq(ctl_reg)]

        acc = Signal(signed(cfg.acc_width))
        total = Mux(pctl.first, 0, acc) + product
        with m.If(pctl.valid):
            m.d.sync += acc.eq(total)
            with m.If(pctl.last):
                m.d.sync += self.result.eq(total)
        m.d.comb += self.done.eq(pctl.valid & pctl.last)
        return m
