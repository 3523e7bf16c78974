"""ECP5 primitives the open flow does not infer well.

Yosys maps a ``*`` of two narrow operands onto one MULT18X18D but leaves all of the DSP's
registers unused ("NONE"), so a registered multiply is FF -> (routing into the DSP block) ->
combinational 18x18 multiply (about 3.9 ns) -> (routing) -> FF. On an LFE5U-85F that path alone
limits a systolic MAC array to about 135 MHz (4x4) or 117 MHz (8x8) (see
``docs/fpga_flow.md``). Registering the operands inside the DSP (``REG_INPUTA_CLK`` /
``REG_INPUTB_CLK`` = ``CLK0``) takes the routing into the block off the critical path: about
170 MHz for the same 4x4 array.

:func:`mult18x18d` instantiates that configuration. An :class:`~amaranth.hdl.Instance` cannot be
simulated by Amaranth's simulator, so a design using it keeps an inferred ``*`` for simulation
and selects the primitive only when it is elaborated for ECP5 (e.g. from a flag or the
``platform`` argument of ``elaborate``); the function has the same latency as a fabric operand
register followed by ``*``.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Signal, Value

__all__ = ["mult18x18d", "ECP5Synthesis"]


def mult18x18d(m, a, b, *, name, domain="sync"):
    """A signed multiply on one MULT18X18D with its A and B input registers enabled.

    Parameters
    ----------
    m : Module
        The module to add the instance (as submodule ``name``) and its operand wiring to.
    a, b : Value
        Signed operands of at most 18 bits each (sign-extended to 18).
    name : str
        Submodule name; the product signal is ``{name}_p``.
    domain : str
        Clock domain of the input registers.

    Returns
    -------
    Signal
        The 36-bit product (two's complement). Latency: 1 cycle (the operands are registered in
        the DSP; the product is combinational from those registers, so register it in the
        fabric).
    """
    a, b = Value.cast(a), Value.cast(b)
    for what, v in (("a", a), ("b", b)):
        if len(v) > 18:
            raise ValueError(f"{what} must be at most 18 bits wide, not {len(v)}")
    a18 = Signal(18, name=f"{name}_a")
    b18 = Signal(18, name=f"{name}_b")
    p = Signal(36, name=f"{name}_p")
    m.d.comb += [a18.eq(a.as_signed()), b18.eq(b.as_signed())]
    zero, one = Const(0, 1), Const(1, 1)
    ports = {"i_CLK0": ClockSignal(domain)}
    for k in range(1, 4):
        ports[f"i_CLK{k}"] = zero
    for k in range(4):
        ports[f"i_CE{k}"] = one
        ports[f"i_RST{k}"] = zero
    ports.update({f"i_A{i}": a18[i] for i in range(18)})
    ports.update({f"i_B{i}": b18[i] for i in range(18)})
    ports.update({f"i_C{i}": zero for i in range(18)})
    ports.update({f"o_P{i}": p[i] for i in range(36)})
    m.submodules[name] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_INPUTC_CLK="NONE",
        p_REG_PIPELINE_CLK="NONE", p_REG_OUTPUT_CLK="NONE",
        p_GSR="DISABLED", p_RESETMODE="SYNC",
        i_SIGNEDA=one, i_SIGNEDB=one, i_SOURCEA=zero, i_SOURCEB=zero,
        **ports)
    return p


class ECP5Synthesis:
    """The platform object the ECP5 flow elaborates designs with: it offers
    ``registered_multiply`` (:mod:`rtl.multiply`), so every multiplier becomes a MULT18X18D with
    its operand registers inside the DSP block."""

    @staticmethod
    def registered_multiply(m, a, b, *, name):
        return mult18x18d(m, a, b, name=name)
