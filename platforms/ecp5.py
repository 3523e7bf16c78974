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

Block RAM is the same story: Yosys maps a synchronous read port onto a DP16KD without its
output register, and the block's clock-to-output is then about 5.8 ns at speed grade 6, most of
a 150 MHz cycle before any logic. :func:`dp16kd_ram` instantiates DP16KD blocks whose read port
goes through the block's output register (``REGMODE_B = "OUTREG"``): the latency of a
synchronous read port followed by a fabric register, with the data leaving a register. A design
reaches it through the platform's ``registered_ram`` hook (:class:`ECP5Synthesis`) and keeps a
``memory.Memory`` read port and a register for simulation and other platforms.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Signal, Value

__all__ = ["dp16kd_ram", "mult18x18d", "ECP5Synthesis"]


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


#: DP16KD data widths and the depth of one block at each width.
_DP16KD_SHAPES = ((18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


def dp16kd_ram(m, *, name, width, depth, w_addr, w_data, w_en, r_addr, domain="sync"):
    """A ``width x depth`` RAM of DP16KD blocks: port A writes, port B reads through the
    block's output register (``REGMODE_B = "OUTREG"``).

    Yosys maps a synchronous read port onto DP16KD without its output register, and that
    read's clock-to-output (5.8 ns at speed grade 6) leaves less than a nanosecond of an
    150 MHz cycle for the route into the next flip-flop; with the output register the block's
    outputs come from a register (about 4.5 ns faster). Yosys also emulates read-first
    behaviour for a read port beside a write port (a register and a bypass mux on the read
    data); here a read of an address written in the same cycle is undefined, which the caller
    must not do.

    Parameters
    ----------
    m : Module
        The module to add the blocks (submodules ``{name}_{i}``) and their wiring to.
    width, depth : int
        Shape of the RAM. The blocks are ``width`` bits wide at the width that needs the
        fewest (banks of blocks are selected by the high address bits).
    w_addr, w_data, w_en : Value
        Write port.
    r_addr : Value
        Read address.

    Returns
    -------
    Signal
        The read data, ``width`` bits, valid two cycles after ``r_addr`` (the block's read
        register and its output register): the latency of a synchronous read port followed
        by a fabric register.
    """
    for what, v in (("width", width), ("depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive integer, not {v!r}")
    best = None
    for bw, bdepth in _DP16KD_SHAPES:
        count = -(-width // bw) * -(-depth // bdepth)
        if best is None or count < best[0]:
            best = (count, bw, bdepth)
    _, bw, bdepth = best
    abits = (bdepth - 1).bit_length()
    shift = 14 - abits                      # word address bits start at ADx[shift]
    banks = -(-depth // bdepth)
    lanes = -(-width // bw)
    w_addr, r_addr, w_data = Value.cast(w_addr), Value.cast(r_addr), Value.cast(w_data)
    zero, one = Const(0, 1), Const(1, 1)
    r_bank = r_addr[abits:]
    bank_d = [Signal(len(r_bank), name=f"{name}_bank_d{i}") for i in range(2)]
    m.d[domain] += [bank_d[0].eq(r_bank), bank_d[1].eq(bank_d[0])]
    r_data = Signal(width, name=f"{name}_rdata")
    outs = []
    for b in range(banks):
        out = Signal(lanes * bw, name=f"{name}_bank{b}")
        outs.append(out)
        bank_we = w_en & (w_addr[abits:] == b) if banks > 1 else w_en
        for lane in range(lanes):
            ports = {"i_CLKA": ClockSignal(domain), "i_CLKB": ClockSignal(domain),
                     "i_WEA": bank_we, "i_WEB": zero, "i_CEA": one, "i_CEB": one,
                     "i_OCEA": one, "i_OCEB": one, "i_RSTA": zero, "i_RSTB": zero}
            for i in range(3):
                ports[f"i_CSA{i}"] = zero
                ports[f"i_CSB{i}"] = zero
            for i in range(14):
                if i >= shift:
                    ports[f"i_ADA{i}"] = w_addr[i - shift] if i - shift < len(w_addr) else zero
                    ports[f"i_ADB{i}"] = r_addr[i - shift] if i - shift < len(r_addr) else zero
                else:
                    # x18: ADx0/ADx1 are the byte enables of a write.
                    ports[f"i_ADA{i}"] = one if bw == 18 and i < 2 else zero
                    ports[f"i_ADB{i}"] = zero
            for i in range(18):
                bit = lane * bw + i
                ports[f"i_DIA{i}"] = w_data[bit] if i < bw and bit < len(w_data) else zero
                ports[f"i_DIB{i}"] = zero
                if i < bw:
                    ports[f"o_DOB{i}"] = out[bit]
            m.submodules[f"{name}_{b}_{lane}"] = Instance(
                "DP16KD",
                p_DATA_WIDTH_A=bw, p_DATA_WIDTH_B=bw, p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC",
                p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED",
                **ports)
    if banks == 1:
        m.d.comb += r_data.eq(outs[0][:width])
    else:
        with m.Switch(bank_d[1]):
            for b in range(banks):
                with m.Case(b):
                    m.d.comb += r_data.eq(outs[b][:width])
    return r_data


class ECP5Synthesis:
    """The platform object the ECP5 flow elaborates designs with: it offers
    ``registered_multiply`` (:mod:`rtl.multiply`), so every multiplier becomes a MULT18X18D with
    its operand registers inside the DSP block, and ``registered_ram``, so that a block-RAM read
    followed by a register comes from the DP16KD's own output register."""

    @staticmethod
    def registered_multiply(m, a, b, *, name):
        return mult18x18d(m, a, b, name=name)

    @staticmethod
    def registered_ram(m, *, name, width, depth, w_addr, w_data, w_en, r_addr):
        """A RAM whose read data comes two cycles after the address, from a register
        (:func:`dp16kd_ram`): the latency of a synchronous read port and a fabric register."""
        return dp16kd_ram(m, name=name, width=width, depth=depth, w_addr=w_addr,
                          w_data=w_data, w_en=w_en, r_addr=r_addr)
