"""Streaming PLAN sigmoid for the learned token-selector heads (spec: :mod:`golden.sigmoid`).

Piecewise-linear with power-of-two slopes, so the datapath is comparators, shifters and adders
only: no multiplier and no table. The input scale is ``2**-frac`` with ``frac`` a run-time port,
which lets the producer's requantization pick the range per layer. One element per cycle per
lane; the lanes are independent copies of the datapath sharing one handshake.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.sigmoid import MAX_FRAC, OUT_BITS

from .checks import check_width, validating
from .fixedpoint_ops import round_shift

__all__ = ["Sigmoid"]


class Sigmoid(wiring.Component):
    """PLAN sigmoid, ``lanes`` elements per beat.

    Parameters
    ----------
    in_width : int
        Width of the signed inputs (2..32).
    lanes : int
        Elements per beat (1..64).

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(in_width), lanes)))``
        Input elements, scale ``2**-frac``.
    o : ``Out(stream.Signature(ArrayLayout(unsigned(8), lanes)))``
        Sigmoid values, scale ``2**-8`` (1.0 saturates to 255).
    frac : ``In(unsigned(5))``
        Fractional bits of the input; hold it stable while elements are in flight.

    Latency is :attr:`latency` (2) cycles from an input handshake to ``o.valid``; throughput one
    beat per cycle. The pipeline stalls as a whole while ``o`` is not ready (``i.ready`` is low
    only when the output register is full and not being read).
    """

    def __init__(self, in_width=16, lanes=1):
        with validating(self):
            check_width("in_width", in_width, 2, 32)
            check_width("lanes", lanes, 1, 64)
        self.in_width = in_width
        self.lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(in_width), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(OUT_BITS), lanes))),
            "frac": In(unsigned(MAX_FRAC.bit_length())),
        })

    @property
    def latency(self):
        return 2

    def elaborate(self, platform):
        m = Module()
        w = self.in_width
        adv = Signal()
        v1 = Signal()
        m.d.comb += [adv.eq(~self.o.valid | self.o.ready), self.i.ready.eq(adv)]
        with m.If(adv):
            m.d.sync += [v1.eq(self.i.valid), self.o.valid.eq(v1)]
        frac = self.frac
        for k in range(self.lanes):
            x = self.i.payload[k]
            a = Signal(unsigned(w), name=f"abs_{k}")
            m.d.comb += a.eq(Mux(x < 0, -x, x))
            # stage 1: segment select, scaled magnitude and offset
            prod = Signal(unsigned(w + 6), name=f"prod_{k}")
            off = Signal(unsigned(9), name=f"off_{k}")
            neg = Signal(name=f"neg_{k}")
            with m.If(adv):
                m.d.sync += neg.eq(x < 0)
                with m.If(a >= (Value.cast(5) << frac)):
                    m.d.sync += [prod.eq(0), off.eq(256)]
                with m.Elif((a << 3) >= (Value.cast(19) << frac)):
                    m.d.sync += [prod.eq(a << 3), off.eq(216)]
                with m.Elif(a >= (Value.cast(1) << frac)):
                    m.d.sync += [prod.eq(a << 5), off.eq(160)]
                with m.Else():
                    m.d.sync += [prod.eq(a << 6), off.eq(128)]
            # stage 2: round, add offset, mirror, saturate
            y = Signal(unsigned(w + 7), name=f"y_{k}")
            r = Signal(unsigned(10), name=f"r_{k}")
            m.d.comb += [y.eq(round_shift(prod, frac) + off),
                         r.eq(Mux(neg, 256 - y, y))]
            with m.If(adv):
                m.d.sync += self.o.payload[k].eq(Mux(r > 255, 255, r))
        return m
