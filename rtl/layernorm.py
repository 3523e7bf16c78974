"""Streaming integer LayerNorm over rows of up to ``max_dim`` channels (spec:
:mod:`golden.layernorm`).

LayerNorm needs the row's mean and variance before it can emit the first output, so the unit
buffers rows in a ring of ``BANKS = 3`` row buffers and overlaps three engines:

1. **loader** (:func:`rtl.rowbuffer.row_loader`): stores the incoming row and accumulates
   ``S1 = sum(x)`` and ``S2 = sum(x*x)`` (one pass: the variance comes from ``n*S2 - S1**2``,
   exact in integers, so no second pass over the data is needed);
2. **reducer** (per row, on the sums only): ``V = n*S2 - S1**2 + eps`` in one cycle; the floor
   square root of ``V << 16`` (8 fractional result bits) by the bitwise digit-by-digit
   (restoring) method, two result bits per cycle (``RW = ceil(var_bits / 2)`` bits);
   normalization of ``r`` to ``[2**(RW-1), 2**RW)`` with a priority encoder; and
   ``inv = floor(2**(15+RW) / r_norm)`` by a restoring divider, two quotient bits per cycle
   (17 bits). In total ``4 + ceil(RW / 2) + 9`` cycles per row (:func:`reducer_cycles`: 26 for
   ``tiny`` and ``default``), overlapped with the loading of the next row and the emission of
   the previous;
3. **emitter**: reads the row and the channel's ``gamma``/``beta`` again and runs a 6-stage
   pipeline: ``c = n*x - S1``; ``c * inv``; rounding shift to the normalized value ``z`` (10
   fractional bits); ``z*gamma + beta``; ``* mult``; rounding shift and saturation to int8.

Each engine handles one element per cycle, so rows of at least ``reducer cycles`` channels stream
at one element per cycle; only the first row pays the fill latency.

Per-channel ``gamma``/``beta`` live in a parameter memory of ``max_dim`` entries written through
the ``param`` stream (always ready; entry ``addr``), so a controller can load a layer's
parameters from its buffers; ``mult``, ``shift`` and ``eps`` are per-layer ``cmd`` fields. Rows
end with ``last``; a row longer than ``max_dim`` raises ``error`` and is dropped.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
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
from .fixedpoint_ops import round_shift, saturate
from .rowbuffer import row_loader, row_reader

__all__ = ["BANKS", "LayerNorm", "layernorm_cmd_layout", "layernorm_param_layout",
           "reducer_cycles"]

BANKS = 3
INV_BITS = INV_FRAC + 2          # quotient in (2**15, 2**16]


def layernorm_cmd_layout(mult_width):
    return data.StructLayout({"mult": unsigned(mult_width), "shift": unsigned(6),
                              "eps": unsigned(EPS_BITS)})


def layernorm_param_layout(max_dim):
    return data.StructLayout({"addr": unsigned(max(ceil_log2(max_dim), 1)),
                              "gamma": signed(GAMMA_BITS), "beta": signed(BETA_BITS)})


def reducer_cycles(cfg: AccelConfig) -> int:
    """Cycles the reducer of ``cfg``'s LayerNorm spends per row: pop, variance, the square
    root at two bits per cycle, normalization, the reciprocal at two bits per cycle, hand-off."""
    root_width = (var_bits(cfg.act_width, cfg.max_dim) + 1) // 2
    return 4 + -(-root_width // 2) + -(-INV_BITS // 2)


class LayerNorm(wiring.Component):
    """Integer LayerNorm with per-channel affine and int8 requantized output.

    Parameters
    ----------
    cfg : AccelConfig
        ``max_dim`` bounds the row length; ``act_width`` is the input and output width;
        ``mult_width`` the requantization multiplier width.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"data": signed(act_width), "last": 1})))``
        Row elements (channel order); ``last`` marks each row's final channel.
    o : ``Out(stream.Signature(StructLayout({"data": signed(act_width), "last": 1})))``
        Normalized, requantized outputs in input order.
    param : ``In(stream.Signature(layernorm_param_layout(max_dim)))``
        Writes ``gamma``/``beta`` of channel ``addr`` (always ready).
    cmd : ``In(layernorm_cmd_layout(mult_width))``
        ``mult``, ``shift`` (0..62) and ``eps`` (``golden.layernorm.LnParams.eps_int``); hold
        stable while rows are in flight.
    error : ``Out(1)``
        Sticky: a row longer than ``max_dim`` was received (and dropped).
    error_clear : ``In(1)``
        Clears ``error``.

    Latency: the first output of a row of ``n`` channels is valid ``n + latency`` cycles after
    the handshake of the row's first input (unit idle, no stalls), with ``latency`` =
    :attr:`latency` = ``reducer_cycles + 10``. Throughput: one element per cycle for back-to-back
    rows of at least :attr:`reducer_cycles` channels; shorter rows are paced at one row per
    :attr:`reducer_cycles` cycles. ``i.ready`` drops while all three row buffers are busy; stalls
    on ``o`` stall the emitter only.
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self.cfg = cfg
        self.max_dim = cfg.max_dim
        self.in_width = cfg.act_width
        self.var_width = var_bits(cfg.act_width, cfg.max_dim)
        self.root_width = (self.var_width + 1) // 2
        row = data.StructLayout({"data": signed(cfg.act_width), "last": unsigned(1)})
        super().__init__({
            "i": In(stream.Signature(row)),
            "o": Out(stream.Signature(row)),
            "param": In(stream.Signature(layernorm_param_layout(cfg.max_dim))),
            "cmd": In(layernorm_cmd_layout(cfg.mult_width)),
            "error": Out(1),
            "error_clear": In(1),
        })

    @property
    def reducer_cycles(self):
        """Cycles the reducer spends per row (pop to hand-off): :func:`reducer_cycles`."""
        return reducer_cycles(self.cfg)

    @property
    def latency(self):
        return self.reducer_cycles + 10

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        t = self.max_dim
        w = self.in_width
        idx_w = ceil_log2(t + 1)
        s1_w = w + idx_w
        s2_w = 2 * w + idx_w
        vw = self.var_width
        rw = self.root_width

        mem = memory.Memory(shape=signed(w), depth=BANKS * t, init=[])
        m.submodules.rows = mem
        wr = mem.write_port()
        rd = mem.read_port()
        gb = data.StructLayout({"gamma": signed(GAMMA_BITS), "beta": signed(BETA_BITS)})
        pmem = memory.Memory(shape=gb, depth=t, init=[])
        m.submodules.params = pmem
        pwr = pmem.write_port()
        prd = pmem.read_port()
        m.d.comb += [
            self.param.ready.eq(1), pwr.en.eq(self.param.valid),
            pwr.addr.eq(self.param.payload.addr), pwr.data.gamma.eq(self.param.payload.gamma),
            pwr.data.beta.eq(self.param.payload.beta),
        ]

        desc_a = data.StructLayout({"len": unsigned(idx_w), "s1": signed(s1_w),
                                    "s2": unsigned(s2_w)})
        desc_b = data.StructLayout({"len": unsigned(idx_w), "s1": signed(s1_w),
                                    "inv": unsigned(INV_BITS), "nbits": unsigned(6)})
        m.submodules.q_loaded = q_a = fifo.SyncFIFOBuffered(width=desc_a.size, depth=BANKS)
        m.submodules.q_reduced = q_b = fifo.SyncFIFOBuffered(width=desc_b.size, depth=BANKS)

        # ---------------------------------------------------------------- loader
        loader = row_loader(m, self.i, wr, banks=BANKS, max_len=t, error=self.error,
                            error_clear=self.error_clear)
        l_s1 = Signal(signed(s1_w))
        l_s2 = Signal(unsigned(s2_w))
        x = self.i.payload.data
        new_s1 = Signal(signed(s1_w))
        new_s2 = Signal(unsigned(s2_w))
        a_in = Signal(desc_a)
        m.d.comb += [
            new_s1.eq(Mux(loader.first, 0, l_s1) + x),
            new_s2.eq(Mux(loader.first, 0, l_s2) + x * x),
            a_in.len.eq(loader.length), a_in.s1.eq(new_s1), a_in.s2.eq(new_s2),
            q_a.w_data.eq(a_in), q_a.w_en.eq(loader.row_end),
        ]
        with m.If(loader.advance):
            m.d.sync += [l_s1.eq(new_s1), l_s2.eq(new_s2)]

        # ---------------------------------------------------------------- reducer
        r_desc = Signal(desc_a)
        r_v = Signal(unsigned(vw))
        r_res = Signal(unsigned(2 * rw))
        r_one = Signal(unsigned(2 * rw))
        r_nbits = Signal(unsigned(6))
        r_rem = Signal(unsigned(INV_FRAC + rw + 1))
        r_div = Signal(unsigned(rw + INV_BITS))
        r_quo = Signal(unsigned(INV_BITS))
        r_count = Signal(range(INV_BITS + 1))
        b_out = Signal(desc_b)
        m.d.comb += [b_out.len.eq(r_desc.len), b_out.s1.eq(r_desc.s1), b_out.inv.eq(r_quo),
                     b_out.nbits.eq(r_nbits), q_b.w_data.eq(b_out)]
        pop = Signal(desc_a)
        m.d.comb += pop.eq(q_a.r_data)
        with m.FSM(name="reducer"):
            with m.State("IDLE"):
                m.d.comb += q_a.r_en.eq(1)
                with m.If(q_a.r_rdy):
                    m.d.sync += r_desc.eq(pop)
                    m.next = "VAR"
            with m.State("VAR"):
                var = r_desc.len * r_desc.s2 - r_desc.s1 * r_desc.s1 + self.cmd.eps
                m.d.sync += [r_v.eq(var << (2 * SQRT_FRAC)), r_res.eq(0),
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
                    with m.If(r_nbits == 0):
                        m.d.comb += b_out.inv.eq(0)
                    m.d.comb += q_b.w_en.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    # Two quotient bits per cycle (one when a single bit is left).
                    rem1 = Signal.like(r_rem)
                    quo1 = Signal.like(r_quo)
                    rem2 = Signal.like(r_rem)
                    quo2 = Signal.like(r_quo)
                    div1 = Signal.like(r_div)
                    m.d.comb += div1.eq(r_div >> 1)
                    for (ri, qi, di), (ro, qo) in (((r_rem, r_quo, r_div), (rem1, quo1)),
                                                   ((rem1, quo1, div1), (rem2, quo2))):
                        with m.If(ri >= di):
                            m.d.comb += [ro.eq(ri - di), qo.eq(Cat(Const(1, 1), qi))]
                        with m.Else():
                            m.d.comb += [ro.eq(ri), qo.eq(Cat(Const(0, 1), qi))]
                    with m.If(r_count == INV_BITS - 1):
                        m.d.sync += [r_rem.eq(rem1), r_quo.eq(quo1), r_div.eq(div1),
                                     r_count.eq(r_count + 1)]
                    with m.Else():
                        m.d.sync += [r_rem.eq(rem2), r_quo.eq(quo2), r_div.eq(r_div >> 2),
                                     r_count.eq(r_count + 2)]

        # ---------------------------------------------------------------- emitter
        adv = Signal()
        m.d.comb += adv.eq(~self.o.valid | self.o.ready)
        emitter = row_reader(m, q_b, rd, desc_b, banks=BANKS, max_len=t, en=adv,
                             row_freed=loader.row_freed, prefix="o")
        o_desc, o_issue, o_last = emitter.desc, emitter.issue, emitter.last
        m.d.comb += [prd.addr.eq(emitter.idx), prd.en.eq(adv)]

        def reg(shape, name, value):
            r = Signal(shape, name=name)
            with m.If(adv):
                m.d.sync += r.eq(value)
            return r

        # stage 0: memory read data, with the row descriptor alongside
        v0 = reg(1, "e0_valid", o_issue)
        d0 = reg(desc_b, "e0_desc", o_desc)
        l0 = reg(1, "e0_last", o_last)
        # stage 1: c = n*x - S1 (= n * (x - mean))
        c_w = w + idx_w + 2
        c1 = reg(signed(c_w), "e1_c", d0.len * rd.data - d0.s1)
        v1, l1 = reg(1, "e1_valid", v0), reg(1, "e1_last", l0)
        inv1, nb1 = reg(unsigned(INV_BITS), "e1_inv", d0.inv), reg(6, "e1_nbits", d0.nbits)
        g1, b1 = reg(signed(GAMMA_BITS), "e1_gamma", prd.data.gamma), \
            reg(signed(BETA_BITS), "e1_beta", prd.data.beta)
        # stage 2: c * inv
        p2 = reg(signed(c_w + INV_BITS), "e2_prod", c1 * inv1)
        v2, l2, nb2 = reg(1, "e2_valid", v1), reg(1, "e2_last", l1), reg(6, "e2_nbits", nb1)
        g2, b2 = reg(signed(GAMMA_BITS), "e2_gamma", g1), reg(signed(BETA_BITS), "e2_beta", b1)
        # stage 3: z = round_shift(c * inv, INV_FRAC + L - NORM_FRAC)
        z_w = ((2 * math.isqrt(t) + 3) << NORM_FRAC).bit_length() + 1
        z_sh = Signal(unsigned(6))      # L > SQRT_FRAC whenever inv != 0
        m.d.comb += z_sh.eq(nb2 + (INV_FRAC - NORM_FRAC - SQRT_FRAC))
        z3 = reg(signed(z_w), "e3_z", round_shift(p2, z_sh))
        v3, l3 = reg(1, "e3_valid", v2), reg(1, "e3_last", l2)
        g3, b3 = reg(signed(GAMMA_BITS), "e3_gamma", g2), reg(signed(BETA_BITS), "e3_beta", b2)
        # stage 4: affine
        a_w = max(z_w + GAMMA_BITS, BETA_BITS) + 1
        a4 = reg(signed(a_w), "e4_affine", z3 * g3 + b3)
        v4, l4 = reg(1, "e4_valid", v3), reg(1, "e4_last", l3)
        # stage 5: requantization multiply
        m5 = reg(signed(a_w + cfg.mult_width), "e5_scaled", a4 * self.cmd.mult)
        v5, l5 = reg(1, "e5_valid", v4), reg(1, "e5_last", l4)
        # stage 6: rounding shift and saturation into the output register
        with m.If(adv):
            m.d.sync += [
                self.o.valid.eq(v5), self.o.payload.last.eq(l5),
                self.o.payload.data.eq(saturate(round_shift(m5, self.cmd.shift), w)),
            ]
        return m
