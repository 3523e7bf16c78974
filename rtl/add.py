"""Streaming requantizing residual add (spec: :mod:`golden.add`).

``o = sat(round_shift(a * ma + b * mb, shift), act_width)`` element by element, ``lanes``
elements per beat. The two operands arrive on two streams (row segments read from two
activation banks, as every unit produces them); one beat of ``a`` pairs with the beat of ``b``
at the same position in its stream.

Join: a pair enters the pipeline only in a cycle where both ``a.valid`` and ``b.valid`` are
high, and both streams are acknowledged in that same cycle (``a.ready = advance & b.valid``,
``b.ready = advance & a.valid``). No beat is held inside the unit while the other stream is
late, so a beat can never be combined with a stale beat of the other stream, and no input
register is needed. ``ready`` depends on the other stream's ``valid`` combinationally, which
the stream rules allow (``valid`` never depends on ``ready``).

Run-time parameters: ``ma``, ``mb`` and ``shift`` depend on the layer's scales, so they are
fields of the ``cmd`` port (as for :class:`rtl.gelu.Gelu`), computed offline by
:func:`golden.add.add_params` and read from the ADD instruction's record. They are sampled
with each accepted pair (``shift`` travels down the pipeline with the data), so ``cmd`` may
change as soon as the last pair of a layer has been accepted.

Datapath per lane, three stages: two ``act_width x mult_width`` multipliers; the sum of the
products plus the rounding term ``2**(shift - 1)`` (computed once per beat, shared by the
lanes); the arithmetic shift and the saturation. The shift amount is clamped to the sum's
width ``act_width + mult_width + 1``: every larger shift (up to 62) yields 0, as the golden
model does, so the barrel shifter and the rounding adder stay that narrow instead of 64 bits.

Trade-off: the whole pipeline advances or stalls together (one enable), as in the other
element-wise units; a stalled output therefore also holds the bubbles inside the pipeline.
Per-stage enables would absorb up to ``latency`` extra beats during a stall at the cost of
more control logic; the unit sits between two bank readers and a bank writer that run at one
beat per cycle, where a full-rate pipeline is what matters.
"""

from __future__ import annotations

import itertools

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.add import MAX_SHIFT
from golden.config import AccelConfig

from .checks import check_config, check_width, validating
from .fixedpoint_ops import saturate

__all__ = ["ResidualAdd", "add_cmd_layout"]


def add_cmd_layout(mult_width):
    """Run-time parameters: the fields of :class:`golden.add.AddParams`."""
    return data.StructLayout({
        "ma": unsigned(mult_width),
        "mb": unsigned(mult_width),
        "shift": unsigned(6),
    })


class ResidualAdd(wiring.Component):
    """Requantizing residual add of two int8 streams, ``lanes`` elements per beat.

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the element width ``act_width`` (inputs and output) and ``mult_width``.
    lanes : int
        Elements per beat (1..64); default ``cfg.cols``, the width of an activation-bank word.

    Members
    -------
    a, b : ``In(stream.Signature(ArrayLayout(signed(act_width), lanes)))``
        The two operands; the ``n``-th beat of ``a`` is added to the ``n``-th beat of ``b``.
    o : ``Out(stream.Signature(ArrayLayout(signed(act_width), lanes)))``
        ``sat(round_shift(a * ma + b * mb, shift))`` per element.
    cmd : ``In(add_cmd_layout(mult_width))``
        ``ma``, ``mb`` (unsigned ``mult_width`` bits) and ``shift`` (valid range ``[0, 62]``),
        sampled with each accepted pair.
    error : ``Out(1)``
        Sticky: set when a pair is accepted while ``cmd.shift`` is 63 (outside ``[0, 62]``);
        that pair still produces its output beat (value 0), so the stream never hangs.
    error_clear : ``In(1)``
        Clears ``error`` (a new error in the same cycle wins).

    Latency is :attr:`latency` (3) cycles from a pair's handshake to its ``o.valid``;
    throughput one beat per cycle. A pair is taken only when both inputs are valid (a late
    stream stalls the other); the whole pipeline stalls while ``o`` is valid and not ready.
    """

    def __init__(self, cfg: AccelConfig, lanes=None):
        with validating(self):
            check_config(cfg)
            lanes = cfg.cols if lanes is None else lanes
            check_width("lanes", lanes, 1, 64)
        self.cfg = cfg
        self.lanes = lanes
        #: width of the signed sum ``a * ma + b * mb``
        self.sum_width = cfg.act_width + cfg.mult_width + 1
        row = stream.Signature(data.ArrayLayout(signed(cfg.act_width), lanes))
        super().__init__({
            "a": In(row),
            "b": In(row),
            "o": Out(row),
            "cmd": In(add_cmd_layout(cfg.mult_width)),
            "error": Out(1),
            "error_clear": In(1),
        })

    @property
    def latency(self):
        """Cycles from an input pair's handshake to its output beat's ``valid``."""
        return 3

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        aw, mw, sw = cfg.act_width, cfg.mult_width, self.sum_width
        cmd = self.cmd

        adv = Signal()
        take = Signal()
        valid = [Signal(name=f"v{s}") for s in range(1, self.latency)]
        m.d.comb += [
            adv.eq(~self.o.valid | self.o.ready),
            self.a.ready.eq(adv & self.b.valid),
            self.b.ready.eq(adv & self.a.valid),
            take.eq(adv & self.a.valid & self.b.valid),
        ]
        with m.If(adv):
            m.d.sync += valid[0].eq(self.a.valid & self.b.valid)
            for x, y in itertools.pairwise(valid):
                m.d.sync += y.eq(x)
            m.d.sync += self.o.valid.eq(valid[-1])

        bad = Signal()
        m.d.comb += bad.eq(cmd.shift > MAX_SHIFT)
        with m.If(self.error_clear):
            m.d.sync += self.error.eq(0)
        with m.If(take & bad):
            m.d.sync += self.error.eq(1)

        def reg(shape, name, value):
            r = Signal(shape, name=name)
            with m.If(adv):
                m.d.sync += r.eq(value)
            return r

        # stage 1: clamp the shift; its rounding term, shared by the lanes
        sh_shape = unsigned(sw.bit_length())
        clamped = Mux(cmd.shift > sw, sw, cmd.shift)
        sh1 = reg(sh_shape, "shift_1", clamped)
        rnd1 = reg(unsigned(sw), "round_1", (Const(1, sw + 1) << clamped) >> 1)
        # stage 2 needs the shift once more
        sh2 = reg(sh_shape, "shift_2", sh1)

        for k in range(self.lanes):
            # 1: products
            pa = reg(signed(aw + mw), f"pa_{k}", self.a.payload[k] * cmd.ma)
            pb = reg(signed(aw + mw), f"pb_{k}", self.b.payload[k] * cmd.mb)
            # 2: sum and rounding term
            t2 = reg(signed(sw + 1), f"sum_{k}", pa + pb + rnd1)
            # 3: arithmetic shift and saturation
            with m.If(adv):
                m.d.sync += self.o.payload[k].eq(saturate(t2 >> sh2, aw))
        return m
