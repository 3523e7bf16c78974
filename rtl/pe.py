"""Processing element: one signed multiply-accumulate of the output-stationary systolic array.

The A operand is ``act_width + 1`` bits signed (:func:`a_operand_shape`) so that one PE
multiplies either signed or unsigned ``act_width``-bit activations (softmax probabilities
0..255): the GEMM engine sign- or zero-extends per command. At 8 bits this is a 9 x 8-bit
multiply, still one MULT18X18D (ECP5) or DSP48E2 (UltraScale+) per MAC.

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

__all__ = ["PE", "Control", "a_operand_shape"]


def a_operand_shape(cfg: AccelConfig):
    """Shape of the PE's A operand: ``signed(act_width + 1)``, which holds a signed or an
    unsigned ``act_width``-bit activation."""
    return signed(cfg.act_width + 1)


class Control(data.Struct):
    """Flags that travel with the ``a`` operand: the beat is ``valid``, the ``first`` or the
    ``last`` term of a dot product (both for a length-1 product)."""
    valid: 1
    first: 1
    last: 1


class PE(wiring.Component):
    """Output-stationary ``(act_width + 1) x weight_width`` MAC (int9 x int8 at the presets).

    Latency: operands and flags pass to the neighbours in 1 cycle; a ``last`` term presented in
    cycle ``t`` asserts ``done`` in cycle ``t + 2`` and the sum is visible on ``result`` from
    cycle ``t + 3`` (:attr:`latency` = 3). Throughput: one term per cycle; no stalls (invalid
    beats are bubbles).

    Members
    -------
    a_in : In(signed(act_width + 1))
        A operand from the left neighbour (:func:`a_operand_shape`: an ``act_width``-bit
        activation, sign- or zero-extended by the GEMM engine).
    b_in : In(signed(weight_width))
        B operand from the top neighbour.
    ctl_in : In(Control)
        Flags from the left neighbour.
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
            "a_in": In(a_operand_shape(cfg)),
            "b_in": In(signed(cfg.weight_width)),
            "ctl_in": In(Control),
            "a_out": Out(a_operand_shape(cfg)),
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
