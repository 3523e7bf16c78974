"""Out-of-context harness: put a design with hundreds of port bits behind a handful of pins.

The accelerator's top has far more port bits than an FPGA package has pins, so it cannot be
placed and routed as it is. :class:`OOCHarness` wraps any :class:`~amaranth.lib.wiring.Component`
so that

* every **input** port bit of the design is driven by a flip-flop of a shift chain fed from one
  (or a few) ``si`` pins, and
* every **output** port bit is folded into a multiple-input signature register (MISR): a shift
  chain in which each stage XORs one output bit into the value shifted from its neighbour. The
  last stage of each chain drives one ``so`` pin.

Every path that starts or ends at the design's ports is then register-to-register, so the Fmax
that place-and-route reports for the clock is the design's own, and every output bit reaches a
pin (after at most as many cycles as the chain is long), so synthesis cannot remove any logic that
drives an output.

Trade-offs
----------
* The harness costs one flip-flop per port bit (input chain and MISR) and one 2-input XOR per
  output bit. It does not change the design: the design is instantiated as a submodule named
  ``dut``, so a synthesis flow that keeps that hierarchy level reports the design's resources
  apart from the harness (see :mod:`platforms.report`).
* The MISR XOR sits between each design output and its capture flip-flop. When an output comes
  straight from a register (as it should for a stream interface), the path is FF -> LUT -> FF;
  when it comes from combinational logic, the XOR may share that logic's last LUT. Either way the
  harness adds at most one LUT level to output paths and none to input paths.
* The design's reset is the top-level ``rst`` pin, as in any Amaranth top-level. Pin-to-register
  paths are not register-to-register and are not part of the clock's Fmax.
* Only the ``sync`` clock domain is supported: a design with other domains needs its own harness.

A shift chain of length ``L`` changes the design's inputs every cycle, so the stimulus is
arbitrary (including stream ``valid`` bits), which is what a timing harness wants: the values do
not matter, only that every bit is driven by a register and observed by a register.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["OOCHarness", "port_bits"]


def port_bits(component):
    """Split a component's port bits into inputs and outputs.

    Parameters
    ----------
    component : wiring.Component
        The design.

    Returns
    -------
    (list of (str, Value), list of (str, Value))
        ``(inputs, outputs)``: one ``(name, value)`` pair per non-empty port, in signature order;
        ``name`` joins the port's path with ``.`` (e.g. ``"a.payload"``). ``value`` is the port as
        a plain :class:`~amaranth.hdl.Value` (views are cast).
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(f"component must be a wiring.Component, not {component!r}")
    inputs, outputs = [], []
    for path, member, value in component.signature.flatten(component):
        value = Value.cast(value)
        if len(value) == 0:
            continue
        name = ".".join(str(p) for p in path)
        (inputs if member.flow == wiring.In else outputs).append((name, value))
    return inputs, outputs


def _chunks(bits, count):
    """Split ``bits`` into ``count`` contiguous chunks of near-equal length (some may be empty)."""
    size = -(-len(bits) // count) if bits else 0
    return [bits[i * size:(i + 1) * size] for i in range(count)]


class OOCHarness(wiring.Component):
    """Out-of-context harness: shift chains in, signature registers out.

    Parameters
    ----------
    dut : wiring.Component
        The design; instantiated as submodule ``dut`` in the ``sync`` domain.
    in_pins : int
        Number of serial input pins (input shift chains), in the range [1, 64].
    out_pins : int
        Number of serial output pins (MISR chains), in the range [1, 64].

    Latency: a bit presented on ``si[j]`` reaches input bit ``i`` of chain ``j`` after
    ``chain_length - i`` cycles (see :attr:`in_chains`); an output bit at position ``i`` of MISR
    chain ``j`` reaches ``so[j]`` after ``i + 1`` cycles. Throughput: one bit per pin per cycle.
    The harness never stalls; it has no handshakes of its own.

    Members
    -------
    si : In(in_pins)
        Serial inputs: bit ``j`` enters the top of input chain ``j`` each cycle.
    so : Out(out_pins)
        Serial outputs: bit ``j`` is the last stage of MISR chain ``j``.

    Attributes
    ----------
    in_chains : list of list of (str, int)
        For every input chain, its bits from stage 0 (the oldest, fed last) upwards, each as
        ``(port name, bit index)``.
    out_chains : list of list of (str, int)
        For every MISR chain, the design output bit XORed into each stage, stage 0 first.
    dut_in_bits, dut_out_bits : int
        Number of the design's input and output port bits.
    """

    def __init__(self, dut, *, in_pins=1, out_pins=1):
        if not isinstance(dut, wiring.Component):
            raise TypeError(f"dut must be a wiring.Component, not {dut!r}")
        for name, value in (("in_pins", in_pins), ("out_pins", out_pins)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if not 1 <= value <= 64:
                raise ValueError(f"{name} must be in the range [1, 64], not {value}")
        inputs, outputs = port_bits(dut)
        if not outputs:
            raise ValueError("dut must have at least one output port bit to observe")
        self.dut = dut
        self._in_bits = [(name, value[i], i) for name, value in inputs for i in range(len(value))]
        self._out_bits = [(name, value[i], i) for name, value in outputs
                          for i in range(len(value))]
        self.dut_in_bits = len(self._in_bits)
        self.dut_out_bits = len(self._out_bits)
        self._in_groups = _chunks(self._in_bits, in_pins)
        self._out_groups = _chunks(self._out_bits, out_pins)
        self.in_chains = [[(n, i) for n, _, i in g] for g in self._in_groups]
        self.out_chains = [[(n, i) for n, _, i in g] for g in self._out_groups]
        super().__init__({"si": In(in_pins), "so": Out(out_pins)})

    @property
    def latency(self):
        """Cycles for a full input chain to be loaded from the pins (the longest chain)."""
        return max(len(g) for g in self._in_groups)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut

        for j, group in enumerate(self._in_groups):
            if not group:
                continue
            chain = Signal(len(group), name=f"in_chain_{j}", reset_less=True)
            # The pin enters at the top stage; stage 0 holds the oldest bit.
            m.d.sync += chain.eq(Cat(chain[1:], self.si[j]))
            m.d.comb += Cat(bit for _, bit, _ in group).eq(chain)

        for j, group in enumerate(self._out_groups):
            if not group:
                m.d.comb += self.so[j].eq(0)
                continue
            misr = Signal(len(group), name=f"misr_{j}", reset_less=True)
            observed = Cat(bit for _, bit, _ in group)
            m.d.sync += misr.eq(Cat(misr[1:], Const(0, 1)) ^ observed)
            m.d.comb += self.so[j].eq(misr[0])

        return m
