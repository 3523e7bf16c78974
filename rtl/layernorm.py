"""Streaming word-wide integer LayerNorm over rows of up to ``max_dim`` channels (spec:
:mod:`golden.layernorm`).

The unit takes and emits one buffer word of ``L = cols`` channels per cycle: a row of ``n``
channels is ``ceil(n / L)`` beats, the last one partly used (its ``count`` field). LayerNorm
needs the row's mean and variance before it can emit the first output, so the unit buffers
rows in a ring of :func:`ln_banks` row buffers (one word-wide memory) and overlaps four engines:

1. **loader** (:func:`rtl.rowbuffer.row_loader`): stores the incoming words; a statistics
   pipeline (lanes past ``count`` masked to zero, ``L`` squarers, two adder trees with a
   register every two adder levels, the accumulators) forms ``S1 = sum(x)`` and
   ``S2 = sum(x*x)`` (the variance comes from ``n*S2 - S1**2``, exact in integers, so no
   second pass over the data is needed) and hands the row on :attr:`LayerNorm.stats_stages`
   cycles after its last word;
2. **dispatcher**: computes ``V = n*S2 - S1**2 + eps`` for one row per cycle (one multiplier
   pair for every reducer) and hands the rows round robin to the reducers;
3. **reducers** (:func:`ln_reducers` instances of :class:`Reducer`, each on every
   :func:`ln_reducers`-th row): the floor square root of ``V << 16`` (8 fractional result
   bits) by the bitwise digit-by-digit (restoring) method, two result bits per cycle
   (``RW = ceil(var_bits / 2)`` bits); normalization of ``r`` with a priority encoder; and
   ``inv = floor(2**(15+RW) / r_norm)`` by a restoring divider, two quotient bits per cycle
   (17 bits): ``3 + ceil(RW / 2) + 9`` cycles per row and reducer (:func:`reducer_cycles`: 25
   for every preset). The results are collected in the same round-robin order, so rows stay
   in order;
4. **emitter**: reads the row's words and the channels' ``gamma``/``beta`` words again and runs
   ``L`` lanes of a 6-stage pipeline: ``c = n*x - S1``; ``c * inv``; rounding shift to the
   normalized value ``z`` (10 fractional bits); ``z*gamma + beta``; ``* mult``; rounding shift
   and saturation to int8.

Loader and emitter take one word per cycle, so back-to-back rows of ``W`` words stream at one
word per cycle when the reducers keep up (``W >= ceil(reducer_cycles / reducers)``) and
enough row buffers are free; the unit sizes both for rows of ``max_dim`` channels (at most
:data:`MAX_REDUCERS` reducers and :data:`MAX_BANKS` row buffers). Only the first row pays the
fill latency.

Per-channel ``gamma``/``beta`` live in a parameter memory of ``ceil(max_dim / L)`` words of
``L`` entries written one entry per cycle through the ``param`` stream (always ready; word
``word``, lane ``lane`` = channel ``word * L + lane``), so a controller can load a layer's
parameters from its buffers; ``mult``, ``shift`` and ``eps`` are per-layer ``cmd`` fields. Rows
end with ``last``; a row longer than ``max_dim`` raises ``error`` and is dropped.

Trade-off: several reducers rather than more root and quotient bits per cycle keep every
reducer's critical path at two restoring steps (two ``var_bits``-wide compare-subtracts);
the price is a reducer's registers and subtractors per instance, while the multipliers of
``V`` are shared.
"""

from __future__ import annotations

import math
import operator

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.config import AccelConfig
from golden.layernorm import (
    BETA_BITS,
    EPS_BITS,
    GAMMA_BITS,
    INV_FRAC,
    NORM_FRAC,
    SQRT_FRAC,
    var_bits,
)

from .checks import check_config, validating
from .fixedpoint_ops import restoring_divide_step, round_shift, saturate
from .rowbuffer import delay, next_bank, pipelined_tree, row_reader, word_row_loader

__all__ = ["MAX_BANKS", "MAX_REDUCERS", "LayerNorm", "Reducer", "layernorm_cmd_layout",
           "layernorm_param_layout", "layernorm_row_layout", "ln_banks", "ln_output_cycles",
           "ln_reducers", "ln_words", "reducer_cycles", "stats_stages"]

INV_BITS = INV_FRAC + 2          # quotient in (2**15, 2**16]
#: Upper bounds of the derived reducer and row-buffer counts (rows much shorter than
#: ``reducer_cycles`` words are paced by the reducers rather than by ever more copies).
MAX_REDUCERS = 4
MAX_BANKS = 8

def ln_words(cfg: AccelConfig) -> int:
    """Words (beats of ``cols`` channels) of a ``max_dim``-channel row."""
    return -(-cfg.max_dim // cfg.cols)


def reducer_cycles(cfg: AccelConfig) -> int:
    """Cycles one reducer of ``cfg``'s LayerNorm spends per row: take the row, the square root
    at two bits per cycle, normalization, the reciprocal at two bits per cycle, hand-off."""
    root_width = (var_bits(cfg.act_width, cfg.max_dim) + 1) // 2
    return 3 + -(-root_width // 2) + -(-INV_BITS // 2)


def ln_reducers(cfg: AccelConfig) -> int:
    """Reducers of ``cfg``'s LayerNorm: enough for one ``max_dim`` row per ``ln_words`` cycles
    (``ceil(reducer_cycles / ln_words)``), between 1 and :data:`MAX_REDUCERS`."""
    return min(MAX_REDUCERS, -(-reducer_cycles(cfg) // ln_words(cfg)))


def ln_banks(cfg: AccelConfig) -> int:
    """Row buffers of ``cfg``'s LayerNorm: a row of ``W`` words (:func:`ln_words`) holds its
    buffer for ``2 W + stats_stages + reducer_cycles + 4`` cycles from its first word in to
    its last word out, so ``2 + ceil((stats_stages + reducer_cycles + 4) / W)`` buffers keep
    ``max_dim`` rows back to back; between 3 and :data:`MAX_BANKS`."""
    w = ln_words(cfg)
    hold = stats_stages(cfg) + reducer_cycles(cfg) + 4
    return max(3, min(MAX_BANKS, 2 + -(-hold // w)))


def stats_stages(cfg: AccelConfig) -> int:
    """Cycles from a row's last word to its statistics: the masked input register, the
    squarers' register and one register per two adder levels of the ``cols``-input trees."""
    return 2 + ceil_log2(cfg.cols) // 2


def ln_output_cycles(cfg: AccelConfig, m: int, w: int, *, start: int = 0,
                     first_end: int = 0) -> list[tuple[int, int]]:
    """Exact cycles of the first and last output word of each of ``m`` rows of ``w`` words
    offered back to back from cycle ``start`` (one word per cycle while ``i.ready``; the first
    row's last word not before cycle ``first_end``), output always ready.

    The recurrences, per row ``r``: first and last word accepted ``a_r`` and ``e_r``
    (``a_r >= f_{r-banks} + 1``: a row buffer free); statistics in the dispatcher's FIFO
    ``x_r = e_r + stats_stages + 2``; dispatcher pop ``p_r = max(x_r, t_{r-1})``; reducer
    ``r % reducers`` takes it at ``t_r = max(p_r + 1, c_{r-reducers} + 1)`` and hands it on
    in order at ``c_r = max(t_r + reducer_cycles - 1, c_{r-1} + 1)``; emitter pop
    ``q_r = max(c_r + 2, q_{r-1} + w)``, buffer freed ``f_r = q_r + w``; outputs from
    ``q_r + 8`` to ``q_r + w + 7``.
    """
    banks, k, rc = ln_banks(cfg), ln_reducers(cfg), reducer_cycles(cfg)
    s = stats_stages(cfg)
    e = c = q = take = None
    freed, coll, out = [], [], []
    for r in range(m):
        a = start if r == 0 else e + 1
        if r >= banks:
            a = max(a, freed[r - banks] + 1)
        e = a + w - 1 if r else max(a + w - 1, first_end)
        p = e + s + 2 if take is None else max(e + s + 2, take)
        take = p + 1 if r < k else max(p + 1, coll[r - k] + 1)
        c = take + rc - 1 if c is None else max(take + rc - 1, c + 1)
        coll.append(c)
        q = c + 2 if q is None else max(c + 2, q + w)
        freed.append(q + w)
        out.append((q + 8, q + w + 7))
    return out


def layernorm_cmd_layout(mult_width):
    return data.StructLayout({"mult": unsigned(mult_width), "shift": unsigned(6),
                              "eps": unsigned(EPS_BITS)})


def layernorm_param_layout(cfg: AccelConfig):
    """``gamma``/``beta`` of channel ``word * cols + lane``."""
    return data.StructLayout({"word": unsigned(max(ceil_log2(ln_words(cfg)), 1)),
                              "lane": unsigned(max(ceil_log2(cfg.cols), 1)),
                              "gamma": signed(GAMMA_BITS), "beta": signed(BETA_BITS)})


def layernorm_row_layout(cfg: AccelConfig):
    """A word of a row: ``cols`` channels, ``count`` of them used (1..cols: ``cols`` except
    on a row's last word), ``last`` on a row's last word."""
    return data.StructLayout({"data": data.ArrayLayout(signed(cfg.act_width), cfg.cols),
                              "count": unsigned(ceil_log2(cfg.cols + 1)),
                              "last": unsigned(1)})


class Reducer(wiring.Component):
    """One LayerNorm row reduction: ``V`` to the root's length and the normalized reciprocal.

    Parameters
    ----------
    var_width : int
        Width of ``V`` (``golden.layernorm.var_bits``).
    tag : data.Layout
        Row data carried alongside, unchanged.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"v": unsigned(var_width - 16), "tag": tag})))``
        ``V = n*S2 - S1**2 + eps`` of a row.
    o : ``Out(stream.Signature(StructLayout({"inv": unsigned(17), "nbits": unsigned(6),
    "tag": tag})))``
        ``nbits = L`` = bit length of ``r = isqrt(V << 16)``, ``inv = floor(2**(15+L) / r)``
        (0 when ``r = 0``).

    Latency and throughput: a row taken in cycle ``t`` is offered on ``o`` in cycle
    ``t + reducer_cycles - 1``; the next row is taken in the cycle after ``o``'s handshake,
    so a reducer handles one row per ``3 + ceil(RW / 2) + 9`` cycles (:func:`reducer_cycles`,
    ``RW = ceil(var_width / 2)``).
    """

    def __init__(self, var_width: int, tag):
        self.var_width = var_width
        self.root_width = (var_width + 1) // 2
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "v": unsigned(var_width - 2 * SQRT_FRAC), "tag": tag}))),
            "o": Out(stream.Signature(data.StructLayout({
                "inv": unsigned(INV_BITS), "nbits": unsigned(6), "tag": tag}))),
        })

    def elaborate(self, platform):
        m = Module()
        vw, rw = self.var_width, self.root_width
        r_v = Signal(unsigned(vw))
        r_res = Signal(unsigned(2 * rw))
        r_one = Signal(unsigned(2 * rw))
        r_nbits = Signal(unsigned(6))
        r_rem = Signal(unsigned(INV_FRAC + rw + 1))
        r_div = Signal(unsigned(rw + INV_BITS))
        r_quo = Signal(unsigned(INV_BITS))
        r_count = Signal(range(INV_BITS + 1))
        r_tag = Signal.like(self.i.payload.tag)
        m.d.comb += [self.o.payload.tag.eq(r_tag), self.o.payload.nbits.eq(r_nbits),
                     self.o.payload.inv.eq(Mux(r_nbits == 0, 0, r_quo))]
        with m.FSM(name="reducer"):
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [r_tag.eq(self.i.payload.tag),
                                 r_v.eq(self.i.payload.v << (2 * SQRT_FRAC)), r_res.eq(0),
                                 r_one.eq(1 << (2 * rw - 2))]
                    m.next = "SQRT"
            with m.State("SQRT"):
                # Two result bits per cycle: two restoring steps in a row (the second is
                # skipped when only one bit is left, rw odd).
                v1 = Signal.like(r_v)
                res1 = Signal.like(r_res)
                v2 = Signal.like(r_v)
                res2 = Signal.like(r_res)
                one1 = Signal.like(r_one)
                m.d.comb += one1.eq(r_one >> 2)
                for (vi, ri, oi), (vo, ro) in (((r_v, r_res, r_one), (v1, res1)),
                                               ((v1, res1, one1), (v2, res2))):
                    trial = ri + oi
                    with m.If(vi >= trial):
                        m.d.comb += [vo.eq(vi - trial), ro.eq((ri >> 1) + oi)]
                    with m.Else():
                        m.d.comb += [vo.eq(vi), ro.eq(ri >> 1)]
                with m.If(r_one == 1):
                    m.d.sync += [r_v.eq(v1), r_res.eq(res1)]
                    m.next = "NORM"
                with m.Else():
                    m.d.sync += [r_v.eq(v2), r_res.eq(res2), r_one.eq(r_one >> 4)]
                    with m.If(r_one == 4):
                        m.next = "NORM"
            with m.State("NORM"):
                root = r_res[:rw]
                nbits = Signal(unsigned(6))
                norm_sh = Signal(unsigned(6))
                for k in range(rw):
                    with m.If(root[k]):
                        m.d.comb += nbits.eq(k + 1)
                m.d.comb += norm_sh.eq(rw - nbits)
                m.d.sync += [r_nbits.eq(nbits), r_rem.eq(1 << (INV_FRAC + rw)), r_quo.eq(0),
                             r_count.eq(0), r_div.eq((root << norm_sh)[:rw] << (INV_BITS - 1))]
                m.next = "DIV"
            with m.State("DIV"):
                with m.If(r_count == INV_BITS):
                    m.d.comb += self.o.valid.eq(1)
                    with m.If(self.o.ready):
                        m.next = "IDLE"
                with m.Else():
                    # Two quotient bits per cycle (one when a single bit is left).
                    restoring_divide_step(m, r_rem, r_quo, r_div, r_count, INV_BITS)
        return m


class LayerNorm(wiring.Component):
    """Word-wide integer LayerNorm with per-channel affine and int8 requantized output.

    Parameters
    ----------
    cfg : AccelConfig
        ``max_dim`` bounds the row length; ``cols`` is the word width ``L`` (channels per
        beat); ``act_width`` is the input and output width; ``mult_width`` the requantization
        multiplier width.

    Members
    -------
    i : ``In(stream.Signature(layernorm_row_layout(cfg)))``
        Row words (channel order): ``data`` (``cols`` channels), ``count`` (channels used,
        ``cols`` except on the last word), ``last`` on each row's final word.
    o : ``Out(stream.Signature(layernorm_row_layout(cfg)))``
        Normalized, requantized outputs, word for word as the input (lanes past ``count``
        are unspecified).
    param : ``In(stream.Signature(layernorm_param_layout(cfg)))``
        Writes ``gamma``/``beta`` of channel ``word * cols + lane`` (always ready).
    cmd : ``In(layernorm_cmd_layout(mult_width))``
        ``mult``, ``shift`` (0..62) and ``eps`` (``golden.layernorm.LnParams.eps_int``); hold
        stable while rows are in flight.
    error : ``Out(1)``
        Sticky: a row longer than ``max_dim`` was received (and dropped).
    error_clear : ``In(1)``
        Clears ``error``.

    Latency: the first output word of a row of ``w`` words is valid ``w + latency`` cycles
    after the handshake of the row's first word (unit idle, no stalls), with :attr:`latency`
    = ``stats_stages + reducer_cycles + 11``. Throughput: one word per cycle for back-to-back
    rows of ``w >= max(ceil(reducer_cycles / reducers), ceil((stats_stages + reducer_cycles +
    4) / (banks - 2)))`` words (the reducers and the row buffers keep up; every row of
    ``max_dim`` channels on every preset); shorter rows are paced by the reducers
    (``reducers`` rows per :attr:`reducer_cycles` cycles) and the row buffers;
    :func:`ln_output_cycles` gives the exact output cycles. ``i.ready`` drops while all row
    buffers are busy; stalls on ``o`` stall the emitter only.

    Attributes: ``lanes`` (= ``cols``), ``words`` (:func:`ln_words`), ``banks``
    (:func:`ln_banks`), ``reducers`` (:func:`ln_reducers`).
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self.cfg = cfg
        self.max_dim = cfg.max_dim
        self.lanes = cfg.cols
        self.words = ln_words(cfg)
        self.banks = ln_banks(cfg)
        self.reducers = ln_reducers(cfg)
        self.in_width = cfg.act_width
        self.var_width = var_bits(cfg.act_width, cfg.max_dim)
        self.root_width = (self.var_width + 1) // 2
        row = layernorm_row_layout(cfg)
        super().__init__({
            "i": In(stream.Signature(row)),
            "o": Out(stream.Signature(row)),
            "param": In(stream.Signature(layernorm_param_layout(cfg))),
            "cmd": In(layernorm_cmd_layout(cfg.mult_width)),
            "error": Out(1),
            "error_clear": In(1),
        })

    @property
    def reducer_cycles(self):
        """Cycles one reducer spends per row (take to hand-off): :func:`reducer_cycles`."""
        return reducer_cycles(self.cfg)

    @property
    def stats_stages(self):
        """Cycles from a row's last word to its statistics: :func:`stats_stages`."""
        return stats_stages(self.cfg)

    @property
    def latency(self):
        return self.stats_stages + self.reducer_cycles + 11

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        t = self.max_dim
        L = self.lanes
        W = self.words
        K = self.reducers
        banks = self.banks
        w = self.in_width
        idx_w = ceil_log2(t + 1)
        s1_w = w + idx_w
        s2_w = 2 * w + idx_w
        vw = self.var_width
        cnt_w = ceil_log2(L + 1)

        mem = memory.Memory(shape=data.ArrayLayout(signed(w), L), depth=banks * W, init=[])
        m.submodules.rows = mem
        wr = mem.write_port()
        rd = mem.read_port()
        gb = data.StructLayout({"gamma": signed(GAMMA_BITS), "beta": signed(BETA_BITS)})
        pmem = memory.Memory(shape=data.ArrayLayout(gb, L), depth=W, init=[])
        m.submodules.params = pmem
        pwr = pmem.write_port(granularity=1)
        prd = pmem.read_port()
        m.d.comb += [self.param.ready.eq(1), pwr.addr.eq(self.param.payload.word)]
        for k in range(L):
            m.d.comb += [pwr.en[k].eq(self.param.valid & (self.param.payload.lane == k)),
                         pwr.data[k].gamma.eq(self.param.payload.gamma),
                         pwr.data[k].beta.eq(self.param.payload.beta)]

        tag = data.StructLayout({"len": unsigned(idx_w), "words": unsigned(ceil_log2(W + 1)),
                                 "count": unsigned(cnt_w), "s1": signed(s1_w)})
        desc_a = data.StructLayout({"tag": tag, "s2": unsigned(s2_w)})
        desc_b = data.StructLayout({"tag": tag, "inv": unsigned(INV_BITS),
                                    "nbits": unsigned(6)})
        m.submodules.q_loaded = q_a = fifo.SyncFIFOBuffered(width=desc_a.size, depth=banks)
        m.submodules.q_reduced = q_b = fifo.SyncFIFOBuffered(width=desc_b.size, depth=banks)

        # ---------------------------------------------------------------- loader
        beat = self.i.payload
        # statistics pipeline, always advancing: masked words, squares, adder trees, sums
        loader, st_a = word_row_loader(m, self.i, wr, banks=banks, lanes=L, words=W, max_elems=t,
                                       error=self.error, error_clear=self.error_clear,
                                       shape=signed(w), pad=0, prefix="st")
        a_v, a_first, a_end, a_x = st_a.valid, st_a.first, st_a.end, st_a.x
        a_tag = Signal(tag, name="st_a_tag")
        m.d.sync += [a_tag.len.eq(loader.idx * L + beat.count),
                     a_tag.words.eq(loader.idx + 1), a_tag.count.eq(beat.count)]
        b_x = [Signal(signed(w), name=f"st_b_x{k}") for k in range(L)]
        b_sq = [Signal(unsigned(2 * w), name=f"st_b_sq{k}") for k in range(L)]
        for k in range(L):
            m.d.sync += [b_x[k].eq(a_x[k]), b_sq[k].eq(a_x[k] * a_x[k])]
        p1, regs = pipelined_tree(m, b_x, operator.add, "st_s1")
        p2, _ = pipelined_tree(m, b_sq, operator.add, "st_s2")

        c_v = delay(m, a_v, 1 + regs, "st_valid")
        c_first = delay(m, a_first, 1 + regs, "st_first")
        c_end = delay(m, a_end, 1 + regs, "st_end")
        c_tag = delay(m, a_tag, 1 + regs, "st_tag")
        assert 2 + regs == self.stats_stages
        acc1 = Signal(signed(s1_w))
        acc2 = Signal(unsigned(s2_w))
        new_s1 = Signal(signed(s1_w))
        new_s2 = Signal(unsigned(s2_w))
        a_in = Signal(desc_a)
        m.d.comb += [
            new_s1.eq(Mux(c_first, 0, acc1) + p1), new_s2.eq(Mux(c_first, 0, acc2) + p2),
            a_in.tag.eq(c_tag), a_in.tag.s1.eq(new_s1), a_in.s2.eq(new_s2),
            q_a.w_data.eq(a_in), q_a.w_en.eq(c_v & c_end),
        ]
        with m.If(c_v):
            m.d.sync += [acc1.eq(new_s1), acc2.eq(new_s2)]

        # ---------------------------------------------------------------- dispatcher
        d_valid = Signal()
        d_v = Signal(unsigned(vw - 2 * SQRT_FRAC))
        d_tag = Signal(tag)
        rr_in = Signal(range(K))
        rr_out = Signal(range(K))
        reds = []
        for k in range(K):
            red = Reducer(vw, tag)
            m.submodules[f"reducer_{k}"] = red
            reds.append(red)
        take = Signal()
        m.d.comb += take.eq(d_valid & Cat(r.i.ready for r in reds).bit_select(rr_in, 1))
        pop = Signal(desc_a)
        m.d.comb += [pop.eq(q_a.r_data), q_a.r_en.eq(~d_valid | take)]
        with m.If(q_a.r_rdy & q_a.r_en):
            var = pop.tag.len * pop.s2 - pop.tag.s1 * pop.tag.s1 + self.cmd.eps
            m.d.sync += [d_valid.eq(1), d_v.eq(var), d_tag.eq(pop.tag)]
        with m.Elif(take):
            m.d.sync += d_valid.eq(0)
        with m.If(take):
            m.d.sync += rr_in.eq(next_bank(rr_in, K))
        # ---------------------------------------------------------------- collector
        b_in = Signal(desc_b)
        for k, red in enumerate(reds):
            m.d.comb += [red.i.valid.eq(d_valid & (rr_in == k)), red.i.payload.v.eq(d_v),
                         red.i.payload.tag.eq(d_tag), red.o.ready.eq(rr_out == k)]
            with m.If(rr_out == k):
                m.d.comb += [q_b.w_en.eq(red.o.valid), b_in.tag.eq(red.o.payload.tag),
                             b_in.inv.eq(red.o.payload.inv), b_in.nbits.eq(red.o.payload.nbits)]
        m.d.comb += q_b.w_data.eq(b_in)
        with m.If(q_b.w_en):
            m.d.sync += rr_out.eq(next_bank(rr_out, K))

        # ---------------------------------------------------------------- emitter
        adv = Signal()
        m.d.comb += adv.eq(~self.o.valid | self.o.ready)
        emitter = row_reader(m, q_b, rd, desc_b, banks=banks, max_len=W, en=adv,
                             row_freed=loader.row_freed, length=lambda d: d.tag.words,
                             prefix="o")
        m.d.comb += [prd.addr.eq(emitter.idx), prd.en.eq(adv)]
        o_desc = Signal(desc_b)
        m.d.comb += o_desc.eq(emitter.desc)

        def reg(shape, name, value):
            r = Signal(shape, name=name)
            with m.If(adv):
                m.d.sync += r.eq(value)
            return r

        def regs_of(shape, name, values):
            return [reg(shape, f"{name}{k}", v) for k, v in enumerate(values)]

        # stage 0: memory read data, with the row descriptor alongside
        v0 = reg(1, "e0_valid", emitter.issue)
        d0 = reg(desc_b, "e0_desc", o_desc)
        l0 = reg(1, "e0_last", emitter.last)
        n0 = reg(cnt_w, "e0_count", Mux(emitter.last, o_desc.tag.count, L))
        # stage 1: c = n*x - S1 (= n * (x - mean))
        c_w = w + idx_w + 2
        c1 = regs_of(signed(c_w), "e1_c", [d0.tag.len * rd.data[k] - d0.tag.s1
                                           for k in range(L)])
        v1, l1, n1 = reg(1, "e1_valid", v0), reg(1, "e1_last", l0), reg(cnt_w, "e1_count", n0)
        inv1 = reg(unsigned(INV_BITS), "e1_inv", d0.inv)
        nb1 = reg(6, "e1_nbits", d0.nbits)
        g1 = regs_of(signed(GAMMA_BITS), "e1_gamma", [prd.data[k].gamma for k in range(L)])
        b1 = regs_of(signed(BETA_BITS), "e1_beta", [prd.data[k].beta for k in range(L)])
        # stage 2: c * inv
        p2 = regs_of(signed(c_w + INV_BITS), "e2_prod", [c * inv1 for c in c1])
        v2, l2, n2 = reg(1, "e2_valid", v1), reg(1, "e2_last", l1), reg(cnt_w, "e2_count", n1)
        nb2 = reg(6, "e2_nbits", nb1)
        g2 = regs_of(signed(GAMMA_BITS), "e2_gamma", g1)
        b2 = regs_of(signed(BETA_BITS), "e2_beta", b1)
        # stage 3: z = round_shift(c * inv, INV_FRAC + L - NORM_FRAC)
        z_w = ((2 * math.isqrt(t) + 3) << NORM_FRAC).bit_length() + 1
        z_sh = Signal(unsigned(6))      # L > SQRT_FRAC whenever inv != 0
        m.d.comb += z_sh.eq(nb2 + (INV_FRAC - NORM_FRAC - SQRT_FRAC))
        z3 = regs_of(signed(z_w), "e3_z", [round_shift(p, z_sh) for p in p2])
        v3, l3, n3 = reg(1, "e3_valid", v2), reg(1, "e3_last", l2), reg(cnt_w, "e3_count", n2)
        g3 = regs_of(signed(GAMMA_BITS), "e3_gamma", g2)
        b3 = regs_of(signed(BETA_BITS), "e3_beta", b2)
        # stage 4: affine
        a_w = max(z_w + GAMMA_BITS, BETA_BITS) + 1
        a4 = regs_of(signed(a_w), "e4_affine", [z * g + b for z, g, b in zip(z3, g3, b3)])
        v4, l4, n4 = reg(1, "e4_valid", v3), reg(1, "e4_last", l3), reg(cnt_w, "e4_count", n3)
        # stage 5: requantization multiply
        m5 = regs_of(signed(a_w + cfg.mult_width), "e5_scaled", [a * self.cmd.mult for a in a4])
        v5, l5, n5 = reg(1, "e5_valid", v4), reg(1, "e5_last", l4), reg(cnt_w, "e5_count", n4)
        # stage 6: rounding shift and saturation into the output register
        with m.If(adv):
            m.d.sync += [self.o.valid.eq(v5), self.o.payload.last.eq(l5),
                         self.o.payload.count.eq(n5)]
            for k in range(L):
                m.d.sync += self.o.payload.data[k].eq(
                    saturate(round_shift(m5[k], self.cmd.shift), w))
        return m
