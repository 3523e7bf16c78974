"""Streaming integer softmax over rows of up to ``max_tokens`` values (spec: :mod:`golden.softmax`).

A softmax row needs three passes over its values (the maximum, then the sum of the exps, then
the normalized outputs), so the unit buffers rows and overlaps them in a ring of
``BANKS = 6`` row buffers (one memory of ``6 * max_tokens`` 16-bit words, one write port and two
read ports). Four engines work on different rows at once:

1. **loader** (:func:`rtl.rowbuffer.row_loader`): writes the incoming row into the next free
   bank and tracks its maximum;
2. **summer**: reads a loaded row, computes the I-BERT exp of every element (4-stage pipeline)
   and accumulates the row sum; it starts the next row in the cycle after the last read, so the
   pipeline never drains between rows;
3. **divider**: a restoring divider computes ``floor(2**32 / sum)`` in ``FACTOR_BITS`` (15)
   cycles, one quotient bit per cycle, while the summer streams the following row;
4. **emitter**: reads the row again, recomputes the exps (a second exp pipeline is cheaper than
   a second buffer of 18-bit exps), multiplies by the reciprocal and rounds to the uint8 output.

Engines hand row descriptors to each other through small FIFOs. Each engine runs at one element
per cycle, so a stream of rows of ``n >= 16`` values is accepted and emitted at one element per
cycle in steady state; only the first row pays the fill latency. The input and output scales are
fixed by the format (input ``2**-8``, output ``2**-8``; see :mod:`golden.softmax`), so the unit
has no per-layer parameters.

Stream convention: one element per beat with a ``last`` flag closing each row; the row length
is the number of beats (1..``max_tokens``). A row longer than ``max_tokens`` is malformed: the
unit raises ``error`` (sticky until ``error_clear``), drops the beats up to and including the next
``last`` and produces no output for that row.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.config import AccelConfig
from golden.softmax import (
    E_BITS,
    EXP_B,
    EXP_C,
    FACTOR_BITS,
    IN_BITS,
    LN2_Q,
    ND_MAX,
    OUT_BITS,
    OUT_FRAC,
    RECIP,
    RECIP_BITS,
    RECIP_SHIFT,
    sum_bits,
)

from .checks import check_config, validating
from .fixedpoint_ops import round_shift
from .rowbuffer import row_loader, row_reader

__all__ = ["BANKS", "Softmax", "softmax_in_layout", "softmax_out_layout"]

BANKS = 6
EXP_STAGES = 4


def softmax_in_layout():
    return data.StructLayout({"data": signed(IN_BITS), "last": unsigned(1)})


def softmax_out_layout():
    return data.StructLayout({"data": unsigned(OUT_BITS), "last": unsigned(1)})


def _exp_pipeline(m, prefix, en, x, mx, valid, tags):
    """``EXP_STAGES`` register stages computing the integer exp of ``x - mx``.

    ``tags`` (name -> Value) travel alongside. Registers load only when ``en`` is high.
    Returns ``(e, valid_out, tags_out)``.
    """
    def stage(k, nd_or_vals):
        regs = {}
        for name, value in nd_or_vals.items():
            shape = value.shape() if hasattr(value, "shape") else unsigned(1)
            r = Signal(shape, name=f"{prefix}_s{k}_{name}")
            with m.If(en):
                m.d.sync += r.eq(value)
            regs[name] = r
        return regs

    nd_max = Const(ND_MAX, unsigned(ND_MAX.bit_length()))
    diff = Signal(unsigned(IN_BITS + 1), name=f"{prefix}_diff")
    m.d.comb += diff.eq(mx - x)
    s1 = stage(1, {"v": valid, "nd": Mux(diff > ND_MAX, nd_max, diff[:len(nd_max)]), **tags})
    z = (s1["nd"] * RECIP) >> RECIP_SHIFT
    s2 = stage(2, {"v": s1["v"], "nd": s1["nd"], "z": z[:5],
                   **{k: s1[k] for k in tags}})
    t = Signal(signed(11), name=f"{prefix}_t")
    m.d.comb += t.eq(s2["z"] * LN2_Q - s2["nd"] + EXP_B)
    q = Signal(unsigned(E_BITS), name=f"{prefix}_q")
    m.d.comb += q.eq(t * t + EXP_C)
    s3 = stage(3, {"v": s2["v"], "q": q, "z": s2["z"], **{k: s2[k] for k in tags}})
    e = Signal(unsigned(E_BITS), name=f"{prefix}_e")
    m.d.comb += e.eq(s3["q"] >> s3["z"])
    s4 = stage(4, {"v": s3["v"], "e": e, **{k: s3[k] for k in tags}})
    return s4["e"], s4["v"], {k: s4[k] for k in tags}


class Softmax(wiring.Component):
    """Row-wise integer softmax (I-BERT exp), uint8 probabilities with the scale ``2**-8``.

    Parameters
    ----------
    cfg : AccelConfig
        ``cfg.max_tokens`` bounds the row length.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"data": signed(16), "last": 1})))``
        Row elements, scale ``2**-8``; ``last`` marks each row's final element.
    o : ``Out(stream.Signature(StructLayout({"data": unsigned(8), "last": 1})))``
        Probabilities, scale ``2**-8``, in input order; ``last`` closes each row.
    error : ``Out(1)``
        Sticky: a row longer than ``max_tokens`` was received (and dropped).
    error_clear : ``In(1)``
        Clears ``error``.

    Latency: the first output of a row of ``n`` elements is valid ``2 * n + latency`` cycles
    after the handshake of the row's first input (unit idle, no stalls: ``n`` cycles to load,
    ``n`` to sum), ``latency`` = :attr:`latency` = ``19 + FACTOR_BITS`` (34): FIFO hand-offs,
    the memory reads, two 4-stage exp pipelines, the divider and the output multiply. Throughput:
    one element per cycle for back-to-back
    rows of at least ``FACTOR_BITS + 1`` (16) elements; shorter rows are paced by the divider
    at one row per ``FACTOR_BITS + 1`` cycles. Up to six rows are in flight (a row holds its
    buffer for about ``3n + 27`` cycles, so six buffers keep rows of 16 elements at full
    rate); ``i.ready`` drops while all six row buffers are busy. Stalls on ``o`` stall the
    emitter only; the loader and summer keep working until the buffers fill.
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self.cfg = cfg
        self.max_tokens = cfg.max_tokens
        super().__init__({
            "i": In(stream.Signature(softmax_in_layout())),
            "o": Out(stream.Signature(softmax_out_layout())),
            "error": Out(1),
            "error_clear": In(1),
        })

    @property
    def latency(self):
        return 19 + FACTOR_BITS

    def elaborate(self, platform):
        m = Module()
        t = self.max_tokens
        idx_w = ceil_log2(t + 1)
        sw = sum_bits(t)

        mem = memory.Memory(shape=signed(IN_BITS), depth=BANKS * t, init=[])
        m.submodules.rows = mem
        wr = mem.write_port()
        rd_sum = mem.read_port()
        rd_emit = mem.read_port()

        desc_a = data.StructLayout({"len": unsigned(idx_w), "max": signed(IN_BITS)})
        desc_b = data.StructLayout({"len": unsigned(idx_w), "max": signed(IN_BITS),
                                    "sum": unsigned(sw)})
        desc_c = data.StructLayout({"len": unsigned(idx_w), "max": signed(IN_BITS),
                                    "factor": unsigned(FACTOR_BITS)})
        m.submodules.q_loaded = q_a = fifo.SyncFIFOBuffered(width=desc_a.size, depth=BANKS)
        m.submodules.q_summed = q_b = fifo.SyncFIFOBuffered(width=desc_b.size, depth=BANKS)
        m.submodules.q_divided = q_c = fifo.SyncFIFOBuffered(width=desc_c.size, depth=BANKS)

        # ---------------------------------------------------------------- loader
        loader = row_loader(m, self.i, wr, banks=BANKS, max_len=t, error=self.error,
                            error_clear=self.error_clear)
        l_max = Signal(signed(IN_BITS))
        beat = self.i.payload
        a_in = Signal(desc_a)
        new_max = Mux(loader.first | (beat.data > l_max), beat.data, l_max)
        m.d.comb += [
            a_in.len.eq(loader.length), a_in.max.eq(new_max), q_a.w_data.eq(a_in),
            q_a.w_en.eq(loader.row_end),
        ]
        with m.If(loader.advance):
            m.d.sync += l_max.eq(new_max)

        # ---------------------------------------------------------------- summer
        summer = row_reader(m, q_a, rd_sum, desc_a, banks=BANKS, max_len=t, prefix="s")
        s_idx, s_desc, s_issue, s_last = summer.idx, summer.desc, summer.issue, summer.last
        # read stage registers (aligned with the memory's read data)
        r_v = Signal()
        r_desc = Signal(desc_a)
        r_first = Signal()
        r_last = Signal()
        m.d.sync += [r_v.eq(s_issue), r_desc.eq(s_desc), r_first.eq(s_idx == 0),
                     r_last.eq(s_last)]
        e, e_v, e_tags = _exp_pipeline(
            m, "sum", Const(1), rd_sum.data, r_desc.max, r_v,
            {"first": r_first, "last": r_last, "len": r_desc.len, "max": r_desc.max})
        acc = Signal(unsigned(sw))
        total = Signal(unsigned(sw))
        m.d.comb += total.eq(Mux(e_tags["first"], 0, acc) + e)
        with m.If(e_v):
            m.d.sync += acc.eq(total)
            with m.If(e_tags["last"]):
                m.d.comb += q_b.w_en.eq(1)
        b_in = Signal(desc_b)
        m.d.comb += [b_in.len.eq(e_tags["len"]), b_in.max.eq(e_tags["max"]), b_in.sum.eq(total),
                     q_b.w_data.eq(b_in)]

        # ---------------------------------------------------------------- divider
        d_busy = Signal()
        d_desc = Signal(desc_b)
        d_rem = Signal(unsigned(RECIP_BITS + 1))
        d_div = Signal(unsigned(sw + FACTOR_BITS))
        d_quo = Signal(unsigned(FACTOR_BITS))
        d_count = Signal(range(FACTOR_BITS + 1))
        d_out = Signal(desc_c)
        m.d.comb += [
            d_out.len.eq(d_desc.len), d_out.max.eq(d_desc.max), d_out.factor.eq(d_quo),
            q_c.w_data.eq(d_out),
        ]
        d_done = Signal()
        d_pop = Signal()
        m.d.comb += [d_done.eq(d_busy & (d_count == FACTOR_BITS)),
                     d_pop.eq(q_b.r_rdy & (~d_busy | d_done)), q_b.r_en.eq(d_pop),
                     q_c.w_en.eq(d_done)]
        with m.If(d_done):
            m.d.sync += d_busy.eq(0)
        with m.Elif(d_busy):
            with m.If(d_rem >= d_div):
                m.d.sync += [d_rem.eq(d_rem - d_div), d_quo.eq(Cat(Const(1, 1), d_quo))]
            with m.Else():
                m.d.sync += d_quo.eq(Cat(Const(0, 1), d_quo))
            m.d.sync += [d_div.eq(d_div >> 1), d_count.eq(d_count + 1)]
        with m.If(d_pop):
            pop = Signal(desc_b)
            m.d.comb += pop.eq(q_b.r_data)
            m.d.sync += [d_busy.eq(1), d_desc.eq(pop), d_rem.eq(1 << RECIP_BITS),
                         d_div.eq(pop.sum << (FACTOR_BITS - 1)), d_count.eq(0), d_quo.eq(0)]

        # ---------------------------------------------------------------- emitter
        adv = Signal()
        m.d.comb += adv.eq(~self.o.valid | self.o.ready)
        emitter = row_reader(m, q_c, rd_emit, desc_c, banks=BANKS, max_len=t, en=adv,
                             row_freed=loader.row_freed, prefix="o")
        o_desc, o_issue, o_last = emitter.desc, emitter.issue, emitter.last
        or_v = Signal()
        or_desc = Signal(desc_c)
        or_last = Signal()
        with m.If(adv):
            m.d.sync += [or_v.eq(o_issue), or_desc.eq(o_desc), or_last.eq(o_last)]
        oe, oe_v, oe_tags = _exp_pipeline(
            m, "emit", adv, rd_emit.data, or_desc.max, or_v,
            {"last": or_last, "factor": or_desc.factor})
        prod = Signal(unsigned(E_BITS + FACTOR_BITS))
        p_v = Signal()
        p_last = Signal()
        with m.If(adv):
            m.d.sync += [prod.eq(oe * oe_tags["factor"]), p_v.eq(oe_v),
                         p_last.eq(oe_tags["last"])]
        rounded = round_shift(prod, RECIP_BITS - OUT_FRAC)
        with m.If(adv):
            m.d.sync += [
                self.o.valid.eq(p_v),
                self.o.payload.data.eq(Mux(rounded > 255, 255, rounded)),
                self.o.payload.last.eq(p_last),
            ]
        return m
