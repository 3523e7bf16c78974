"""Streaming word-wide integer softmax over rows of up to ``max_tokens`` values (spec:
:mod:`golden.softmax`).

The unit takes and emits one buffer word of ``L = cols`` values per cycle: a row of ``n``
values is ``w = ceil(n / L)`` beats, the last one partly used (its ``count`` field). A softmax
row needs three passes over its values (the maximum, then the sum of the exps, then the
normalized outputs), so the unit buffers rows in a ring of :func:`sm_banks` row buffers (one
word-wide memory, one write port and two read ports) and overlaps four engines:

1. **loader** (:func:`rtl.rowbuffer.row_loader`): stores the incoming words; a maximum
   pipeline (lanes past ``count`` set to the most negative value, an ``L``-input maximum tree
   with a register every two levels, the running maximum) hands the row on
   :func:`max_stages` cycles after its last word;
2. **summer**: reads the row's words, ``L`` lanes of the I-BERT exp (4-stage pipeline; lanes
   past ``count`` get ``nd = ND_MAX``, whose exp is 0), an ``L``-input adder tree (a register
   every two levels) and the row sum; it starts the next row in the cycle after the last read,
   so the pipeline never drains between rows;
3. **dividers** (:data:`DIVIDERS` instances of :class:`Divider`, in round robin over the rows):
   ``floor(2**32 / sum)`` by a restoring divider, two quotient bits per cycle,
   :data:`DIVIDER_CYCLES` cycles per row; results are collected in the same order, so rows
   stay in order;
4. **emitter**: reads the words again, ``L`` lanes recompute the exps (a second set of exp
   pipelines is cheaper than a buffer of 18-bit exps), multiply by the reciprocal and round to
   the uint8 outputs.

Engines hand row descriptors to each other through small FIFOs. Loader, summer and emitter take
one word per cycle, so back-to-back rows of ``w >= FULL_RATE_WORDS`` (3) words stream at one
word per cycle; only the first row pays the fill latency. The input and output scales are fixed
by the format (input ``2**-8``, output ``2**-8``; see :mod:`golden.softmax`), so the unit has
no per-layer parameters.

Stream convention: one word per beat, ``count`` values used (``cols`` except on a row's last
word), ``last`` closing each row; the row length is ``(beats - 1) * cols + count``
(1..``max_tokens``). A row longer than ``max_tokens`` is malformed: the unit raises ``error``
(sticky until ``error_clear``), drops the beats up to and including the next ``last`` and
produces no output for that row.

Trade-off: several dividers rather than more quotient bits per cycle keep a divider's critical
path at two 33-bit compare-subtracts, and the row buffers are counted for rows of
``FULL_RATE_WORDS`` words (the tiny model's 10-token rows at ``cols = 4``), so short attention
rows are not paced by the reduction; the price is ``L`` lanes of two exp pipelines and an
output multiplier, four divider datapaths and a word-wide row memory of about
``3 + ceil(hold / 3)`` rows.
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
from .fixedpoint_ops import restoring_divide_step, round_shift
from .rowbuffer import delay, next_bank, pipelined_tree, row_reader, word_row_loader

__all__ = ["DIVIDERS", "DIVIDER_CYCLES", "EXP_STAGES", "FULL_RATE_WORDS", "MAX_BANKS",
           "Divider", "Softmax", "max_stages", "sm_banks", "sm_output_cycles", "sm_words",
           "softmax_in_layout", "softmax_out_layout", "sum_stages"]

EXP_STAGES = 4
#: Cycles a divider spends per row: take, ``ceil(FACTOR_BITS / 2)`` steps of two quotient
#: bits, hand-off.
DIVIDER_CYCLES = 2 + -(-FACTOR_BITS // 2)
#: Rows of at least this many words stream at one word per cycle: the dividers and the row
#: buffers are sized for them.
FULL_RATE_WORDS = 3
#: Dividers in round robin: ``FULL_RATE_WORDS`` words per row cover ``DIVIDER_CYCLES``.
DIVIDERS = -(-DIVIDER_CYCLES // FULL_RATE_WORDS)
#: Upper bound of the derived row-buffer count.
MAX_BANKS = 16


def sm_words(cfg: AccelConfig) -> int:
    """Words (beats of ``cols`` elements) of a ``max_tokens`` row."""
    return -(-cfg.max_tokens // cfg.cols)


def _tree_regs(lanes: int) -> int:
    """Registers on a ``lanes``-input tree with a register after every second level."""
    return ceil_log2(lanes) // 2


def max_stages(cfg: AccelConfig) -> int:
    """Cycles from a row's last word to its maximum: the masked input register and one
    register per two levels of the ``cols``-input maximum tree."""
    return 1 + _tree_regs(cfg.cols)


def sum_stages(cfg: AccelConfig) -> int:
    """Cycles from a summer read to the row sum: the read, the exp pipeline and one register
    per two levels of the ``cols``-input adder tree."""
    return 1 + EXP_STAGES + _tree_regs(cfg.cols)


def _hold(cfg: AccelConfig) -> int:
    """Cycles a row holds its buffer (first word in to the cycle after its last read) beyond
    its three passes (load, sum, emit) of ``w`` cycles each, with no waiting: the FIFO
    hand-offs, the pipelines and a divider."""
    return max_stages(cfg) + sum_stages(cfg) + DIVIDER_CYCLES + 5


def sm_banks(cfg: AccelConfig) -> int:
    """Row buffers: a row of ``w`` words holds its buffer for ``3 w + hold`` cycles, so
    ``3 + ceil(hold / w)`` buffers keep rows of ``w = min(FULL_RATE_WORDS, sm_words)`` words
    back to back; at most :data:`MAX_BANKS`."""
    w = min(FULL_RATE_WORDS, sm_words(cfg))
    return min(MAX_BANKS, 3 + -(-_hold(cfg) // w))


def sm_output_cycles(cfg: AccelConfig, m: int, w: int, *,
                     start: int = 0) -> list[tuple[int, int]]:
    """Exact cycles of the first and last output word of each of ``m`` rows of ``w`` words
    offered back to back from cycle ``start`` (one word per cycle while ``i.ready``), output
    always ready.

    The recurrences, per row ``r``: first and last word accepted ``a_r`` and
    ``e_r = a_r + w - 1`` (``a_r >= f_{r-banks} + 1``: a row buffer free); the maximum in the
    summer's FIFO ``x_r = e_r + max_stages + 2``; summer pop ``s_r = max(x_r, s_{r-1} + w)``;
    the sum in the dividers' FIFO ``y_r = s_r + w + sum_stages + 2``; divider
    ``r % DIVIDERS`` takes it at ``t_r = max(y_r, t_{r-1} + 1, c_{r-DIVIDERS} + 1)`` and hands
    it on in order at ``c_r = max(t_r + DIVIDER_CYCLES - 1, c_{r-1} + 1)``; emitter pop
    ``q_r = max(c_r + 2, q_{r-1} + w)``, buffer freed ``f_r = q_r + w``; outputs from
    ``q_r + EXP_STAGES + 4`` to ``q_r + w + EXP_STAGES + 3``.
    """
    banks, ms, ss = sm_banks(cfg), max_stages(cfg), sum_stages(cfg)
    e = s = t = c = q = None
    freed, coll, out = [], [], []
    for r in range(m):
        a = start if r == 0 else e + 1
        if r >= banks:
            a = max(a, freed[r - banks] + 1)
        e = a + w - 1
        x = e + ms + 2
        s = x if s is None else max(x, s + w)
        y = s + w + ss + 2
        t = y if t is None else max(y, t + 1)
        if r >= DIVIDERS:
            t = max(t, coll[r - DIVIDERS] + 1)
        c = t + DIVIDER_CYCLES - 1 if c is None else max(t + DIVIDER_CYCLES - 1, c + 1)
        coll.append(c)
        q = c + 2 if q is None else max(c + 2, q + w)
        freed.append(q + w)
        out.append((q + EXP_STAGES + 4, q + w + EXP_STAGES + 3))
    return out


def softmax_in_layout(cfg: AccelConfig):
    """A word of a row: ``cols`` logits, ``count`` of them used (1..cols: ``cols`` except on
    a row's last word), ``last`` on a row's last word."""
    return data.StructLayout({"data": data.ArrayLayout(signed(IN_BITS), cfg.cols),
                              "count": unsigned(ceil_log2(cfg.cols + 1)),
                              "last": unsigned(1)})


def softmax_out_layout(cfg: AccelConfig):
    """A word of probabilities, framed as the input word (lanes past ``count`` unspecified)."""
    return data.StructLayout({"data": data.ArrayLayout(unsigned(OUT_BITS), cfg.cols),
                              "count": unsigned(ceil_log2(cfg.cols + 1)),
                              "last": unsigned(1)})


def _exp_lanes(m, prefix, en, xs, mx, valid, tags, masked=None):
    """``EXP_STAGES`` register stages computing the integer exp of ``x - mx`` for every lane
    ``x`` of ``xs`` (lanes with ``masked[k]`` high give 0: their ``nd`` is ``ND_MAX``).

    ``tags`` (name -> Value) travel alongside, once for all lanes. Registers load only when
    ``en`` is high. Returns ``(e per lane, valid_out, tags_out)``.
    """
    def reg(value, name):
        r = Signal(value.shape(), name=f"{prefix}_{name}")
        with m.If(en):
            m.d.sync += r.eq(value)
        return r

    def stage_tags(k, values):
        return {name: reg(v, f"s{k}_{name}") for name, v in values.items()}

    nd_max = Const(ND_MAX, unsigned(ND_MAX.bit_length()))
    es = []
    for j, x in enumerate(xs):
        diff = Signal(unsigned(IN_BITS + 1), name=f"{prefix}_diff{j}")
        m.d.comb += diff.eq(mx - x)
        over = diff > ND_MAX if masked is None else (diff > ND_MAX) | masked[j]
        nd1 = reg(Mux(over, nd_max, diff[:len(nd_max)]), f"s1_nd{j}")
        z = (nd1 * RECIP) >> RECIP_SHIFT
        nd2 = reg(nd1, f"s2_nd{j}")
        z2 = reg(z[:5], f"s2_z{j}")
        t = Signal(signed(11), name=f"{prefix}_t{j}")
        m.d.comb += t.eq(z2 * LN2_Q - nd2 + EXP_B)
        q = Signal(unsigned(E_BITS), name=f"{prefix}_q{j}")
        m.d.comb += q.eq(t * t + EXP_C)
        q3 = reg(q, f"s3_q{j}")
        z3 = reg(z2, f"s3_z{j}")
        e = Signal(unsigned(E_BITS), name=f"{prefix}_e{j}")
        m.d.comb += e.eq(q3 >> z3)
        es.append(reg(e, f"s4_e{j}"))
    vals = {"v": valid, **tags}
    for k in range(1, EXP_STAGES + 1):
        vals = stage_tags(k, vals)
    return es, vals.pop("v"), vals


class Divider(wiring.Component):
    """The reciprocal of one row sum: ``factor = floor(2**RECIP_BITS / sum)``.

    Parameters
    ----------
    sum_width : int
        Width of the row sum (``golden.softmax.sum_bits``); the sum is at least ``E_MAX``, so
        the quotient fits ``FACTOR_BITS``.
    tag : data.Layout
        Row data carried alongside, unchanged.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"sum": unsigned(sum_width), "tag": tag})))``
    o : ``Out(stream.Signature(StructLayout({"factor": unsigned(FACTOR_BITS), "tag": tag})))``

    A restoring divider, two quotient bits per cycle (two compare-subtracts in a row; one in
    the last step of the odd ``FACTOR_BITS``). Latency and throughput: a row taken in cycle
    ``t`` is offered on ``o`` in cycle ``t + DIVIDER_CYCLES - 1``; the next row is taken in
    the cycle after ``o``'s handshake, so one row per :data:`DIVIDER_CYCLES` (10) cycles.
    """

    def __init__(self, sum_width: int, tag):
        self.sum_width = sum_width
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "sum": unsigned(sum_width), "tag": tag}))),
            "o": Out(stream.Signature(data.StructLayout({
                "factor": unsigned(FACTOR_BITS), "tag": tag}))),
        })

    def elaborate(self, platform):
        m = Module()
        rem = Signal(unsigned(RECIP_BITS + 1))
        div = Signal(unsigned(self.sum_width + FACTOR_BITS))
        quo = Signal(unsigned(FACTOR_BITS))
        count = Signal(range(FACTOR_BITS + 1))
        tag = Signal.like(self.i.payload.tag)
        m.d.comb += [self.o.payload.tag.eq(tag), self.o.payload.factor.eq(quo)]
        with m.FSM(name="divider"):
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [tag.eq(self.i.payload.tag), rem.eq(1 << RECIP_BITS),
                                 div.eq(self.i.payload.sum << (FACTOR_BITS - 1)),
                                 count.eq(0), quo.eq(0)]
                    m.next = "DIV"
            with m.State("DIV"):
                with m.If(count == FACTOR_BITS):
                    m.d.comb += self.o.valid.eq(1)
                    with m.If(self.o.ready):
                        m.next = "IDLE"
                with m.Else():
                    restoring_divide_step(m, rem, quo, div, count, FACTOR_BITS)
        return m


class Softmax(wiring.Component):
    """Word-wide row-wise integer softmax (I-BERT exp), uint8 probabilities with the scale
    ``2**-8``.

    Parameters
    ----------
    cfg : AccelConfig
        ``cfg.max_tokens`` bounds the row length; ``cfg.cols`` is the word width ``L``
        (elements per beat).

    Members
    -------
    i : ``In(stream.Signature(softmax_in_layout(cfg)))``
        Row words, scale ``2**-8``: ``data`` (``cols`` logits), ``count`` (logits used,
        ``cols`` except on the last word), ``last`` on each row's final word.
    o : ``Out(stream.Signature(softmax_out_layout(cfg)))``
        Probabilities, scale ``2**-8``, word for word as the input (lanes past ``count``
        are unspecified).
    error : ``Out(1)``
        Sticky: a row longer than ``max_tokens`` was received (and dropped).
    error_clear : ``In(1)``
        Clears ``error``.

    Latency: the first output word of a row of ``w`` words is valid ``2 w + latency`` cycles
    after the handshake of the row's first word (unit idle, no stalls: ``w`` cycles to load,
    ``w`` to sum), with :attr:`latency` = ``max_stages + sum_stages + DIVIDER_CYCLES + 12``
    (FIFO hand-offs, the maximum tree, the summer's read, exp pipeline and adder tree, a
    divider, the emitter's read, exp pipeline, multiply and rounding; 30 for ``cols`` = 4).
    Throughput: one word per cycle for back-to-back rows of at least ``FULL_RATE_WORDS``
    (3) words (the dividers and :func:`sm_banks` row buffers keep up); shorter rows are
    paced by the dividers (``DIVIDERS`` rows per ``DIVIDER_CYCLES`` cycles) and the row
    buffers; :func:`sm_output_cycles` gives the exact output cycles. ``i.ready`` drops while
    all row buffers are busy. Stalls on ``o`` stall the emitter only; the loader, summer and
    dividers keep working until the buffers fill.

    Attributes: ``lanes`` (= ``cols``), ``words`` (:func:`sm_words`), ``banks``
    (:func:`sm_banks`), ``dividers`` (:data:`DIVIDERS`).
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self.cfg = cfg
        self.max_tokens = cfg.max_tokens
        self.lanes = cfg.cols
        self.words = sm_words(cfg)
        self.banks = sm_banks(cfg)
        self.dividers = DIVIDERS
        super().__init__({
            "i": In(stream.Signature(softmax_in_layout(cfg))),
            "o": Out(stream.Signature(softmax_out_layout(cfg))),
            "error": Out(1),
            "error_clear": In(1),
        })

    @property
    def max_stages(self):
        """Cycles from a row's last word to its maximum: :func:`max_stages`."""
        return max_stages(self.cfg)

    @property
    def sum_stages(self):
        """Cycles from a summer read to the row sum: :func:`sum_stages`."""
        return sum_stages(self.cfg)

    @property
    def latency(self):
        return self.max_stages + self.sum_stages + DIVIDER_CYCLES + 12

    def elaborate(self, platform):
        m = Module()
        t = self.max_tokens
        L = self.lanes
        W = self.words
        K = self.dividers
        banks = self.banks
        sw = sum_bits(t)
        cnt_w = ceil_log2(L + 1)
        words_w = ceil_log2(W + 1)

        mem = memory.Memory(shape=data.ArrayLayout(signed(IN_BITS), L), depth=banks * W,
                            init=[])
        m.submodules.rows = mem
        wr = mem.write_port()
        rd_sum = mem.read_port()
        rd_emit = mem.read_port()

        tag = data.StructLayout({"words": unsigned(words_w), "count": unsigned(cnt_w),
                                 "max": signed(IN_BITS)})
        desc_b = data.StructLayout({"tag": tag, "sum": unsigned(sw)})
        desc_c = data.StructLayout({"tag": tag, "factor": unsigned(FACTOR_BITS)})
        m.submodules.q_loaded = q_a = fifo.SyncFIFOBuffered(width=tag.size, depth=banks)
        m.submodules.q_summed = q_b = fifo.SyncFIFOBuffered(width=desc_b.size, depth=banks)
        m.submodules.q_divided = q_c = fifo.SyncFIFOBuffered(width=desc_c.size, depth=banks)

        # ---------------------------------------------------------------- loader
        beat = self.i.payload
        # maximum pipeline, always advancing: masked word, maximum tree, running maximum
        # (lanes past count hold the most negative value: they never win the maximum)
        loader, mx_a = word_row_loader(m, self.i, wr, banks=banks, lanes=L, words=W, max_elems=t,
                                       error=self.error, error_clear=self.error_clear,
                                       shape=signed(IN_BITS), pad=-(1 << (IN_BITS - 1)),
                                       prefix="mx")
        a_v, a_first, a_end, a_x = mx_a.valid, mx_a.first, mx_a.end, mx_a.x
        a_tag = Signal(tag, name="mx_a_tag")
        m.d.sync += [a_tag.words.eq(loader.idx + 1), a_tag.count.eq(beat.count)]
        tree_max, regs = pipelined_tree(m, a_x, lambda a, b: Mux(a >= b, a, b), "mx")
        assert 1 + regs == self.max_stages
        c_v = delay(m, a_v, regs, "mx_valid")
        c_first = delay(m, a_first, regs, "mx_first")
        c_end = delay(m, a_end, regs, "mx_end")
        c_tag = delay(m, a_tag, regs, "mx_tag")
        acc_max = Signal(signed(IN_BITS))
        new_max = Signal(signed(IN_BITS))
        a_in = Signal(tag)
        m.d.comb += [
            new_max.eq(Mux(c_first | (tree_max > acc_max), tree_max, acc_max)),
            a_in.eq(c_tag), a_in.max.eq(new_max),
            q_a.w_data.eq(a_in), q_a.w_en.eq(c_v & c_end),
        ]
        with m.If(c_v):
            m.d.sync += acc_max.eq(new_max)

        # ---------------------------------------------------------------- summer
        summer = row_reader(m, q_a, rd_sum, tag, banks=banks, max_len=W,
                            length=lambda d: d.words, prefix="s")
        # read stage registers (aligned with the memory's read data)
        r_v = Signal()
        r_desc = Signal(tag)
        r_first = Signal()
        r_last = Signal()
        m.d.sync += [r_v.eq(summer.issue), r_desc.eq(summer.desc), r_first.eq(summer.idx == 0),
                     r_last.eq(summer.last)]
        masked = [r_last & (r_desc.count <= k) for k in range(L)]
        es, e_v, e_tags = _exp_lanes(
            m, "sum", Const(1), [rd_sum.data[k] for k in range(L)], r_desc.max, r_v,
            {"first": r_first, "last": r_last, "desc": r_desc}, masked=masked)
        tree_sum, regs = pipelined_tree(m, es, lambda a, b: a + b, "sum")
        assert 1 + EXP_STAGES + regs == self.sum_stages
        f_v = delay(m, e_v, regs, "sum_valid")
        f_tags = {k: delay(m, v, regs, f"sum_{k}") for k, v in e_tags.items()}
        acc = Signal(unsigned(sw))
        total = Signal(unsigned(sw))
        m.d.comb += total.eq(Mux(f_tags["first"], 0, acc) + tree_sum)
        with m.If(f_v):
            m.d.sync += acc.eq(total)
        b_in = Signal(desc_b)
        m.d.comb += [b_in.tag.eq(f_tags["desc"]), b_in.sum.eq(total), q_b.w_data.eq(b_in),
                     q_b.w_en.eq(f_v & f_tags["last"])]

        # ---------------------------------------------------------------- dividers
        rr_in = Signal(range(K))
        rr_out = Signal(range(K))
        divs = []
        for k in range(K):
            div = Divider(sw, tag)
            m.submodules[f"divider_{k}"] = div
            divs.append(div)
        take = Signal()
        pop = Signal(desc_b)
        m.d.comb += [pop.eq(q_b.r_data),
                     take.eq(q_b.r_rdy & Cat(d.i.ready for d in divs).bit_select(rr_in, 1)),
                     q_b.r_en.eq(take)]
        with m.If(take):
            m.d.sync += rr_in.eq(next_bank(rr_in, K))
        c_in = Signal(desc_c)
        for k, div in enumerate(divs):
            m.d.comb += [div.i.valid.eq(q_b.r_rdy & (rr_in == k)), div.i.payload.sum.eq(pop.sum),
                         div.i.payload.tag.eq(pop.tag), div.o.ready.eq(rr_out == k)]
            with m.If(rr_out == k):
                m.d.comb += [q_c.w_en.eq(div.o.valid), c_in.tag.eq(div.o.payload.tag),
                             c_in.factor.eq(div.o.payload.factor)]
        m.d.comb += q_c.w_data.eq(c_in)
        with m.If(q_c.w_en):
            m.d.sync += rr_out.eq(next_bank(rr_out, K))

        # ---------------------------------------------------------------- emitter
        adv = Signal()
        m.d.comb += adv.eq(~self.o.valid | self.o.ready)
        emitter = row_reader(m, q_c, rd_emit, desc_c, banks=banks, max_len=W, en=adv,
                             row_freed=loader.row_freed, length=lambda d: d.tag.words,
                             prefix="o")
        o_desc = Signal(desc_c)
        m.d.comb += o_desc.eq(emitter.desc)
        or_v = Signal()
        or_desc = Signal(desc_c)
        or_last = Signal()
        with m.If(adv):
            m.d.sync += [or_v.eq(emitter.issue), or_desc.eq(o_desc), or_last.eq(emitter.last)]
        oes, oe_v, oe_tags = _exp_lanes(
            m, "emit", adv, [rd_emit.data[k] for k in range(L)], or_desc.tag.max, or_v,
            {"last": or_last, "count": Mux(or_last, or_desc.tag.count, L),
             "factor": or_desc.factor})
        prods = [Signal(unsigned(E_BITS + FACTOR_BITS), name=f"emit_prod{k}") for k in range(L)]
        p_v = Signal()
        p_last = Signal()
        p_count = Signal(unsigned(cnt_w))
        with m.If(adv):
            m.d.sync += [p_v.eq(oe_v), p_last.eq(oe_tags["last"]), p_count.eq(oe_tags["count"])]
            m.d.sync += [p.eq(e * oe_tags["factor"]) for p, e in zip(prods, oes)]
            m.d.sync += [self.o.valid.eq(p_v), self.o.payload.last.eq(p_last),
                         self.o.payload.count.eq(p_count)]
            for k in range(L):
                rounded = round_shift(prods[k], RECIP_BITS - OUT_FRAC)
                m.d.sync += self.o.payload.data[k].eq(Mux(rounded > 255, 255, rounded))
        return m
