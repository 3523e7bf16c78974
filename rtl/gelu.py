"""Streaming integer GELU (I-BERT erf polynomial; spec: :mod:`golden.gelu`).

The polynomial constants ``b_int``, ``c_int``, ``one_int`` and the output requantization
``mult``/``shift`` depend on the layer's input scale, so they are run-time fields of ``cmd``
(computed offline by :func:`golden.gelu.gelu_params`) rather than elaboration-time constants.
The datapath is one squarer, one ``in_width x (2*in_width+5)`` multiplier and the
requantization multiplier per lane, in a 6-stage pipeline that accepts one beat per cycle.
"""

from __future__ import annotations

import itertools

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import AccelConfig
from golden.gelu import MAX_IN_BITS

from .checks import check_config, check_width, validating
from .fixedpoint_ops import round_shift, saturate

__all__ = ["Gelu", "gelu_cmd_layout"]


def gelu_cmd_layout(in_width, mult_width):
    """Run-time parameters: the fields of :class:`golden.gelu.GeluParams`."""
    return data.StructLayout({
        "b_int": signed(in_width + 1),
        "c_int": signed(2 * in_width + 2),
        "one_int": signed(2 * in_width + 4),
        "mult": unsigned(mult_width),
        "shift": unsigned(6),
    })


class Gelu(wiring.Component):
    """I-BERT integer GELU, ``lanes`` elements per beat.

    Parameters
    ----------
    cfg : AccelConfig
        Supplies ``mult_width`` and the output width ``act_width``.
    in_width : int
        Width of the signed inputs (2..14); default ``cfg.act_width``.
    lanes : int
        Elements per beat (1..64).

    Members
    -------
    i : ``In(stream.Signature(ArrayLayout(signed(in_width), lanes)))``
        Input elements with the layer's input scale.
    o : ``Out(stream.Signature(ArrayLayout(signed(act_width), lanes)))``
        Requantized GELU values.
    cmd : ``In(gelu_cmd_layout(in_width, mult_width))``
        Layer constants; hold them stable while elements are in flight.

    Latency is :attr:`latency` (6) cycles from an input handshake to ``o.valid``; throughput one
    beat per cycle. The whole pipeline stalls while ``o`` is not ready.
    """

    def __init__(self, cfg: AccelConfig, in_width=None, lanes=1):
        with validating(self):
            check_config(cfg)
            in_width = cfg.act_width if in_width is None else in_width
            check_width("in_width", in_width, 2, MAX_IN_BITS)
            check_width("lanes", lanes, 1, 64)
        self.cfg = cfg
        self.in_width = in_width
        self.lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(in_width), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(cfg.act_width), lanes))),
            "cmd": In(gelu_cmd_layout(in_width, cfg.mult_width)),
        })

    @property
    def latency(self):
        return 6

    def elaborate(self, platform):
        m = Module()
        w = self.in_width
        cmd = self.cmd
        adv = Signal()
        valid = [Signal(name=f"v{s}") for s in range(1, self.latency)]
        m.d.comb += [adv.eq(~self.o.valid | self.o.ready), self.i.ready.eq(adv)]
        with m.If(adv):
            m.d.sync += valid[0].eq(self.i.valid)
            for a, b in itertools.pairwise(valid):
                m.d.sync += b.eq(a)
            m.d.sync += self.o.valid.eq(valid[-1])

        def reg(shape, name, value):
            r = Signal(shape, name=name)
            with m.If(adv):
                m.d.sync += r.eq(value)
            return r

        for k in range(self.lanes):
            q0 = self.i.payload[k]
            # 1: t = min(|q|, -b_int) + b_int
            mag = Mux(q0 < 0, -q0, q0)
            bneg = -cmd.b_int
            t1 = reg(signed(w + 2), f"t_{k}", Mux(mag < bneg, mag, bneg) + cmd.b_int)
            q1 = reg(signed(w), f"q1_{k}", q0)
            # 2: polynomial L = t*t + c_int (< 0)
            p2 = reg(signed(2 * w + 4), f"poly_{k}", t1 * t1 + cmd.c_int)
            q2 = reg(signed(w), f"q2_{k}", q1)
            # 3: factor = -(sgn(q) * L + one_int) >= 0
            f3 = reg(signed(2 * w + 6), f"factor_{k}",
                     -(Mux(q2 < 0, -p2, p2) + cmd.one_int))
            q3 = reg(signed(w), f"q3_{k}", q2)
            # 4: g = q * factor
            g4 = reg(signed(3 * w + 6), f"g_{k}", q3 * f3)
            # 5: g * mult
            p5 = reg(signed(3 * w + 7 + self.cfg.mult_width), f"gm_{k}", g4 * cmd.mult)
            # 6: round, shift, saturate
            with m.If(adv):
                m.d.sync += self.o.payload[k].eq(
                    saturate(round_shift(p5, cmd.shift), self.cfg.act_width))
        return m
