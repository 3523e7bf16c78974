"""Row execution unit: SOFTMAX, GELU, LAYERNORM and ADD (``docs/exec/exec_row.md``).

:class:`RowUnit` runs the four opcodes whose work is a pass over rows of an on-chip buffer,
wrapping the existing streaming units: :class:`rtl.softmax.Softmax`,
:class:`rtl.layernorm.LayerNorm`, :class:`rtl.gelu.Gelu` and :class:`rtl.add.ResidualAdd` each
take one word (``cols`` elements) per cycle. Everything is shared between the four paths:

* **record reader**: GELU, LAYERNORM and ADD read their parameter record (``docs/isa.md``) as
  one memory burst, issued in the ``start`` cycle. A byte gearbox (``B + 15`` bytes, ``B`` the
  beat width) turns the beats into fields whatever the record's length and the beat width:
  the header (16 bytes for GELU, 8 for LAYERNORM and ADD) in one pop, then LayerNorm's
  gammas (:func:`gamma_group` per pop) and betas (one per pop). Gammas wait in a small memory
  until their betas arrive; each beta then writes one entry of LayerNorm's parameter memory
  (word and lane counters beside the channel counter, no division).
* **record preload**: the reader can work for the *next* instruction while the unit (or
  another unit) runs: a ``preload`` pulse with a GELU, LAYERNORM or ADD on ``preload_instr``
  reads that record into the fields it sets (GELU's constants, ADD's multipliers, LayerNorm's
  header and parameter memory), which the running instruction does not use as long as its
  opcode differs (``preload_ready``). The instruction's ``start`` then reads no record: its
  first words go through as soon as the header is in (GELU/ADD), and LayerNorm's first row
  does not wait for the gammas and betas. A header check that fails is reported at that
  instruction's ``done``; ``abort`` drops a preloaded record once it is read.
* **row reader**: walks the source rows word by word (``rd0``, and ``rd1`` for ADD's second
  operand at the same position), starting in the ``start`` cycle. A buffer read port holds its
  data until the next read, so the read port itself is the one-word stage between the buffer
  and the consumer: the next word is read in the cycle the current one is consumed.
  The row-wise units (softmax, LayerNorm) take the held word itself with the lane ``count``
  (a row of ``n`` elements uses ``ceil(n / cols)`` words, the last one partly) and ``last``.
* **writer**: takes the unit's output words and writes them to the destination rows; the last
  word of a row has a lane mask. For SOFTMAX with ``SCORE`` the words of result row 0 also
  enter a FIFO, from which a serializer writes them into SCORE row ``imm`` through
  ``score_wr``, one element per cycle, while the other rows stream on.

The row-buffered units (softmax, LayerNorm) are fed back to back across rows: their row
buffers let them load the next rows while they reduce and emit the previous ones. For GELU/ADD
the first word is read in the ``start`` cycle and waits on the read port until the header has
been popped. LayerNorm's rows start streaming at once; only the last word of the first row
waits until every gamma/beta has been written (the unit's emitter reads them after that row's
reduction).

Errors (``error`` in the ``done`` cycle): the ``error`` outputs of the wrapped units (cleared at
``start``), and a record field outside its unit's range (the cases where
``golden.executor`` raises ``ProgramError`` for ``data``: a GELU/LayerNorm/ADD ``shift`` above
62, a GELU constant outside :class:`golden.gelu.GeluParams`' ranges, a multiplier wider than
``mult_width``). The instruction then runs to the end with the truncated fields, so the unit
always finishes cleanly.

Cycle count (no stalls): :func:`cycles` (with ``head`` for a preloaded record);
``docs/exec/exec_row.md`` gives the formulas.

Trade-off: the LayerNorm record keeps all gammas ahead of all betas, so the unit buffers the
gammas (``max_dim`` x 16 bits) rather than issuing one small burst per channel group: one burst
pays the memory latency once, and the gamma pops (``G`` per cycle) plus one beta per cycle
finish about ``n / G`` cycles after the first row has been loaded.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, memory, wiring
from amaranth.lib.wiring import Out
from amaranth.utils import ceil_log2

from golden.config import AccelConfig
from golden.gelu import MAX_IN_BITS
from golden.isa import ADD_RECORD_BYTES, GELU_RECORD_BYTES, LN_HEADER_BYTES, Flag, Op
from golden.layernorm import SHIFT_MAX

from .add import ResidualAdd
from .checks import check_config, validating
from .gelu import Gelu
from .layernorm import LayerNorm, ln_output_cycles, reducer_cycles, stats_stages
from .ports import (
    exec_signature,
    mem_beat_bytes,
    preload_members,
    word_bits,
)
from .softmax import Softmax, sm_output_cycles

__all__ = ["HEADER_MAX", "RowUnit", "cycles", "gamma_group"]

#: Pipeline latencies of the word units (``Gelu.latency``, ``ResidualAdd.latency``).
GELU_LATENCY, ADD_LATENCY = 6, 3
#: Cycles from a word's write into the score FIFO to its first element on ``score_wr``.
SCORE_FIFO_LATENCY = 2
#: Longest header popped from the gearbox at once (the GELU record).
HEADER_MAX = max(GELU_RECORD_BYTES, LN_HEADER_BYTES, ADD_RECORD_BYTES)


def ln_reducer_cycles(cfg: AccelConfig) -> int:
    """``rtl.layernorm.LayerNorm.reducer_cycles`` of ``cfg`` (cycles per row of its reducer)."""
    return reducer_cycles(cfg)


def gamma_group(cfg: AccelConfig) -> int:
    """LayerNorm gammas popped from the record per cycle: the largest power of two with
    ``2 * G <= min(beat bytes, 16)`` (at least 1)."""
    g = 1
    while 4 * g <= min(mem_beat_bytes(cfg), HEADER_MAX):
        g *= 2
    return g


def _word_div(col, cols: int):
    """``col // cols`` for a 16-bit ``col`` that is a multiple of ``cols``: a multiplication by
    ``ceil(2**16 / cols)`` and a shift (exact because ``col < 2**16``)."""
    if cols & (cols - 1) == 0:
        return col >> ceil_log2(cols)
    return (col * -(-(1 << 16) // cols)) >> 16


class RowUnit(wiring.Component):
    """Execution unit of SOFTMAX, GELU, LAYERNORM and ADD.

    Parameters
    ----------
    cfg : AccelConfig
        The accelerator configuration (``act_width`` at most 14, the GELU unit's limit).

    Members
    -------
    start, instr, done, error, mem_busy, mem, rd0, rd1, wr, score_wr, score_rd
        :func:`rtl.ports.exec_signature` (``mem`` reads the record only; ``rd1`` is used by
        ADD, ``score_wr`` by SOFTMAX with ``SCORE``; ``score_rd`` and the memory write
        channels stay idle). ``mem_busy`` is high from the cycle after ``start`` (or
        ``preload``) until the record's last beat has been taken.
    preload : In(1)
        Pulse (while ``preload_ready``): begin reading the record of ``preload_instr`` (a
        GELU, LAYERNORM or ADD), idle or while another opcode runs. The instruction's own
        ``start``, with the same instruction on ``instr``, follows at least one cycle later
        and after the running one's ``done``.
    preload_instr : In(instr_layout())
        The instruction to preload (sampled with ``preload``).
    preload_ready : Out(1)
        A preload of ``preload_instr`` may begin: it is a GELU, LAYERNORM or ADD, the record
        reader is free (no preloaded record held, the running instruction's record read to
        its end) and it is not the running opcode (whose fields the record would replace).
    abort : In(1)
        Pulse instead of ``start`` after a ``preload``: the record is read to its end and
        dropped (``preloaded`` falls when it is).
    preloaded : Out(1)
        A preloaded record is being read or held for the next ``start``.

    Throughput: one word per cycle (softmax rows shorter than 3 words, or LayerNorm rows
    shorter than ``w_min`` words below, are paced by their dividers/reducers and row buffers).

    Cycles from ``start`` to ``done`` with no stalls and memory latency ``L`` (``L' = max(1,
    L)``, ``B = cols`` bytes per beat), exactly :func:`cycles`:

    * GELU / ADD: ``L' + ceil(R / B) + m * ceil(n / cols) + latency`` with ``R`` = 16 / 8
      record bytes and ``latency`` = 6 / 3;
    * SOFTMAX (``w = ceil(n / cols)`` words a row): ``(m + 2) w + latency`` for ``w >= 3``,
      ``latency`` = ``Softmax.latency`` (30 for ``cols`` 3..8); with ``SCORE`` at least
      ``2w + latency + n + 2`` (row 0 leaves its FIFO one element per cycle); shorter rows
      follow the recurrences of :func:`rtl.softmax.sm_output_cycles`;
    * LAYERNORM (``w = ceil(n / cols)`` words a row): ``max(w, P + 1) + S + RC + 11 + m * w``
      with ``S`` = ``LayerNorm.stats_stages`` (3), ``RC`` = ``LayerNorm.reducer_cycles`` (25)
      and ``P = L' + max(ceil((8 + 6n) / B), ceil(8 / B) + ceil(n / G) + n)`` the last
      record pop (power-of-two ``B >= 4``), for rows of ``w >= w_min = max(ceil(RC / K),
      ceil((S + RC + 4) / (banks - 2)))`` words (``K`` reducers; 8 on ``tiny``, 16 on
      ``default``); shorter rows follow the recurrences of
      :func:`rtl.layernorm.ln_output_cycles` (``docs/exec/exec_row.md``).
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
            if cfg.act_width > MAX_IN_BITS:
                raise ValueError(f"RowUnit needs act_width at most {MAX_IN_BITS} (GELU), "
                                 f"not {cfg.act_width}")
        self.cfg = cfg
        super().__init__(dict(exec_signature(cfg).members) | preload_members() | {
            "preload_ready": Out(1),
            "preloaded": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        C = cfg.cols
        B = mem_beat_bytes(cfg)
        aw, mw = cfg.act_width, cfg.mult_width
        ins = self.instr

        m.submodules.softmax = sm = Softmax(cfg)
        m.submodules.layernorm = ln = LayerNorm(cfg)
        m.submodules.gelu = ge = Gelu(cfg, lanes=C)
        m.submodules.add = ad = ResidualAdd(cfg, lanes=C)
        # the timing model of cycles() relies on these
        assert (ge.latency, ad.latency) == (GELU_LATENCY, ADD_LATENCY)
        assert ln.reducer_cycles == ln_reducer_cycles(cfg)
        assert ln.latency == stats_stages(cfg) + ln.reducer_cycles + 11
        assert sm.latency == sm_output_cycles(cfg, 1, 1)[0][0] - 2

        is_sm = Signal()
        is_ge = Signal()
        is_ln = Signal()
        is_ad = Signal()
        m.d.comb += [is_sm.eq(ins.op == Op.SOFTMAX), is_ge.eq(ins.op == Op.GELU),
                     is_ln.eq(ins.op == Op.LAYERNORM), is_ad.eq(ins.op == Op.ADD)]
        busy = Signal()
        run = Signal()                  # the start cycle or later, until done
        done = Signal()
        m.d.comb += run.eq(busy | self.start)
        with m.If(self.start):
            m.d.sync += busy.eq(1)
        with m.If(done):
            m.d.sync += busy.eq(0)
        clear = [sm.error_clear.eq(self.start), ln.error_clear.eq(self.start),
                 ad.error_clear.eq(self.start)]
        m.d.comb += clear

        n = ins.n
        n_w = len(n)
        G = gamma_group(cfg)
        log_g = ceil_log2(G)
        err = Signal()                  # record field out of range

        # ------------------------------------------------------------ record reader
        # The reader works for the record's instruction: the instruction of ``start`` in its
        # cycle, else ``rins`` (its opcode, ``n`` and record address), latched at ``start`` or
        # at ``preload``. ``pre``: the record belongs to a preloaded instruction that has not
        # started yet (the running one's ``cmd_ok``/``err`` are then left alone; its header's
        # check goes to ``pre_err`` until its ``start``).
        rins = Signal(data.StructLayout({"op": 8, "n": len(ins.n), "addr": len(ins.addr)}))
        pre = Signal()
        kill = Signal()                 # the preloaded record is dropped once read
        r_op = Mux(self.start, ins.op, rins.op)
        r_n = Signal.like(n)
        r_addr = Signal.like(ins.addr)
        r_ge, r_ad, r_ln = Signal(), Signal(), Signal()
        r_rec = r_ge | r_ad | r_ln      # the opcode has a record
        m.d.comb += [r_n.eq(Mux(self.start, ins.n, rins.n)),
                     r_addr.eq(Mux(self.start, ins.addr, rins.addr)),
                     r_ge.eq(r_op == Op.GELU), r_ad.eq(r_op == Op.ADD),
                     r_ln.eq(r_op == Op.LAYERNORM)]
        with m.If(self.start):
            m.d.sync += [rins.op.eq(ins.op), rins.n.eq(ins.n), rins.addr.eq(ins.addr)]
        CAP = B + HEADER_MAX - 1
        gb_data = Signal(8 * CAP)
        gb_cnt = Signal(range(CAP + 1))
        sent = Signal()
        rec_bytes = Signal(32)
        m.d.comb += rec_bytes.eq(Mux(r_ge, GELU_RECORD_BYTES,
                                     Mux(r_ad, ADD_RECORD_BYTES, LN_HEADER_BYTES + 6 * r_n)))
        rec_act = Signal()              # a record is being read or popped
        m.d.comb += rec_act.eq(pre | (busy & r_rec))
        rec_in = Signal()               # the record's last beat has been taken
        m.d.comb += self.mem_busy.eq(rec_act & ~rec_in)
        with m.If(self.mem.rdata.valid & self.mem.rdata.ready & self.mem.rdata.payload.last):
            m.d.sync += rec_in.eq(1)
        with m.If((pre | (run & r_rec)) & ~sent):
            m.d.comb += [self.mem.rcmd.valid.eq(1), self.mem.rcmd.payload.addr.eq(r_addr),
                         self.mem.rcmd.payload.bytes.eq(rec_bytes)]
            with m.If(self.mem.rcmd.ready):
                m.d.sync += sent.eq(1)

        PH_HDR, PH_GAMMA, PH_BETA, PH_DONE = range(4)
        phase = Signal(2)
        pc = Signal(n_w)                # gamma/beta index
        cmd_ok = Signal()               # header popped: the unit's cmd fields are set
        params_ok = Signal()            # every LayerNorm gamma/beta popped
        pre_err = Signal()              # the preloaded record's header check
        sz = Signal(range(HEADER_MAX + 1))
        with m.Switch(phase):
            with m.Case(PH_HDR):
                m.d.comb += sz.eq(Mux(r_ge, GELU_RECORD_BYTES,
                                      Mux(r_ad, ADD_RECORD_BYTES, LN_HEADER_BYTES)))
            with m.Case(PH_GAMMA):
                m.d.comb += sz.eq(Mux(pc + G >= r_n, (r_n - pc) << 1, 2 * G))
            with m.Default():
                m.d.comb += sz.eq(4)
        pop = Signal()
        m.d.comb += pop.eq(rec_act & (phase != PH_DONE) & (gb_cnt >= sz))
        rec_done = Signal()             # the record is read and popped to its end
        m.d.comb += rec_done.eq(sent & rec_in & (phase == PH_DONE))
        p_op = self.preload_instr.op
        p_rec = (p_op == Op.GELU) | (p_op == Op.LAYERNORM) | (p_op == Op.ADD)
        m.d.comb += [self.preloaded.eq(pre),
                     self.preload_ready.eq(~pre & (~busy | ~r_rec | rec_done) & p_rec
                                           & ~(busy & (p_op == ins.op)))]
        win = gb_data[:8 * HEADER_MAX]
        cnt1 = Signal(range(CAP + 1))
        data1 = Signal(8 * CAP)
        m.d.comb += [cnt1.eq(Mux(pop, gb_cnt - sz, gb_cnt)), data1.eq(gb_data)]
        with m.If(pop):
            with m.Switch(sz):
                for size in sorted({*range(2, 2 * G + 1, 2), 4, GELU_RECORD_BYTES,
                                    ADD_RECORD_BYTES, LN_HEADER_BYTES}):
                    with m.Case(size):
                        m.d.comb += data1.eq(gb_data >> (8 * size))
        take = Signal()
        m.d.comb += [take.eq(rec_act & ~rec_in & (cnt1 + B <= CAP)),
                     self.mem.rdata.ready.eq(take)]
        beat = self.mem.rdata.payload.data
        with m.If(take & self.mem.rdata.valid):
            m.d.sync += [gb_data.eq(data1 | (beat << Cat(Const(0, 3), cnt1))[:8 * CAP]),
                         gb_cnt.eq(cnt1 + B)]
        with m.Else():
            m.d.sync += [gb_data.eq(data1), gb_cnt.eq(cnt1)]

        def field(offset, size, sign=False):
            v = win[8 * offset:8 * (offset + size)]
            return v.as_signed() if sign else v

        def out_of(value, lo, hi):
            return (value < lo) | (value > hi)

        def above(value, bound):
            # ``value > bound``, constant false (no comparator) when the field cannot exceed it.
            return value > bound if bound < (1 << len(value)) - 1 else Const(0)

        ge_cmd = Signal.like(ge.cmd)
        ln_cmd = Signal.like(ln.cmd)
        ad_cmd = Signal.like(ad.cmd)
        m.d.comb += [ge.cmd.eq(ge_cmd), ln.cmd.eq(ln_cmd), ad.cmd.eq(ad_cmd)]
        mult_max = (1 << mw) - 1
        hdr_pop = pop & (phase == PH_HDR)
        hdr_err = Signal()              # the header's fields out of range
        with m.If(hdr_pop):
            with m.If(pre):
                m.d.sync += pre_err.eq(hdr_err)
            with m.Else():
                m.d.sync += [cmd_ok.eq(1), err.eq(hdr_err)]
            with m.If(r_ge):
                b_int, c_int, one_int = field(0, 4, True), field(4, 4, True), field(8, 4, True)
                mult, shift = field(12, 2), field(14, 1)
                m.d.sync += [ge_cmd.b_int.eq(b_int), ge_cmd.c_int.eq(c_int),
                             ge_cmd.one_int.eq(one_int), ge_cmd.mult.eq(mult),
                             ge_cmd.shift.eq(shift)]
                m.d.comb += hdr_err.eq(out_of(b_int, -(1 << aw), -1)
                                       | out_of(c_int, -(1 << (2 * aw + 1)), -1)
                                       | (one_int < -(1 << (2 * aw + 3))) | (one_int > c_int)
                                       | above(mult, mult_max) | above(shift, SHIFT_MAX))
            with m.Elif(r_ad):
                ma, mb, shift = field(0, 2), field(2, 2), field(4, 1)
                m.d.sync += [ad_cmd.ma.eq(ma), ad_cmd.mb.eq(mb), ad_cmd.shift.eq(shift)]
                m.d.comb += hdr_err.eq(above(ma, mult_max) | above(mb, mult_max)
                                       | above(shift, SHIFT_MAX))
            with m.Else():
                mult, shift, eps = field(0, 2), field(2, 1), field(4, 4)
                m.d.sync += [ln_cmd.mult.eq(mult), ln_cmd.shift.eq(shift), ln_cmd.eps.eq(eps)]
                m.d.comb += hdr_err.eq(above(mult, mult_max) | above(shift, SHIFT_MAX))
            m.d.sync += phase.eq(Mux(r_ln, PH_GAMMA, PH_DONE))

        # LayerNorm gamma/beta: gammas, G per pop, wait in gmem until their betas arrive.
        gmem = memory.Memory(shape=data.ArrayLayout(signed(16), G), depth=-(-cfg.max_dim // G),
                             init=[])
        m.submodules.gammas = gmem
        g_wr = gmem.write_port()
        g_rd = gmem.read_port(transparent_for=())
        m.d.comb += [g_wr.addr.eq(pc >> log_g), g_wr.data.eq(win[:16 * G]),
                     g_wr.en.eq(pop & (phase == PH_GAMMA)), g_rd.addr.eq(pc >> log_g),
                     g_rd.en.eq(1)]
        with m.If(pop & (phase == PH_GAMMA)):
            m.d.sync += pc.eq(pc + G)
            with m.If(pc + G >= r_n):
                m.d.sync += [phase.eq(PH_BETA), pc.eq(0)]
        pc_last = pc == r_n - 1
        p_valid = Signal()
        p_word = Signal.like(ln.param.payload.word)     # channel pc = pc_word * C + pc_lane
        p_lane = Signal.like(ln.param.payload.lane)
        pc_word = Signal.like(p_word)
        pc_lane = Signal(range(C))
        p_beta = Signal(signed(32))
        p_glane = Signal(range(G))
        m.d.sync += p_valid.eq(pop & (phase == PH_BETA))
        with m.If(pop & (phase == PH_BETA)):
            m.d.sync += [p_word.eq(pc_word), p_lane.eq(pc_lane), p_beta.eq(field(0, 4, True)),
                         p_glane.eq(pc[:log_g]), pc.eq(Mux(pc_last, 0, pc + 1)),
                         pc_lane.eq(Mux(pc_lane == C - 1, 0, pc_lane + 1)),
                         pc_word.eq(pc_word + (pc_lane == C - 1))]
            with m.If(pc_last):
                m.d.sync += [phase.eq(PH_DONE), params_ok.eq(1), pc_word.eq(0), pc_lane.eq(0)]
        m.d.comb += [ln.param.valid.eq(p_valid), ln.param.payload.word.eq(p_word),
                     ln.param.payload.lane.eq(p_lane),
                     ln.param.payload.gamma.eq(g_rd.data[p_glane]),
                     ln.param.payload.beta.eq(p_beta)]

        # ------------------------------------------------------------ row reader
        wb = word_bits(cfg)
        r_row = Signal(range(1 << 12))
        r_word = Signal(wb)
        r_off = Signal(n_w + 1)          # element offset of the word to read
        r_end = Signal()                 # every word has been read
        hv = Signal()                    # rd0 (and rd1) hold a word of the stream
        h_lastlane = Signal(range(C))    # last lane of the held word used by the row
        h_rowend = Signal()              # the held word ends its row
        slot = Signal()                  # the held word is consumed this cycle
        issue = Signal()
        m.d.comb += issue.eq(run & ~r_end & (~hv | slot))
        r_last_word = r_off + C >= n
        a_word = _word_div(ins.a.col, C)
        b_word = _word_div(ins.b.col, C)
        with m.If(issue):
            m.d.comb += [self.rd0.en.eq(1), self.rd0.buf.eq(ins.a.buf),
                         self.rd0.row.eq(ins.a.row + r_row), self.rd0.word.eq(a_word + r_word)]
            with m.If(is_ad):
                m.d.comb += [self.rd1.en.eq(1), self.rd1.buf.eq(ins.b.buf),
                             self.rd1.row.eq(ins.b.row + r_row),
                             self.rd1.word.eq(b_word + r_word)]
            m.d.sync += [h_lastlane.eq(Mux(r_last_word, n - r_off - 1, C - 1)),
                         h_rowend.eq(r_last_word)]
            with m.If(r_last_word):
                m.d.sync += [r_word.eq(0), r_off.eq(0), r_row.eq(r_row + 1)]
                with m.If(r_row == ins.m - 1):
                    m.d.sync += r_end.eq(1)
            with m.Else():
                m.d.sync += [r_word.eq(r_word + 1), r_off.eq(r_off + C)]
        with m.If(issue):
            m.d.sync += hv.eq(1)
        with m.Elif(slot):
            m.d.sync += hv.eq(0)

        # word path: GELU, ADD, LAYERNORM (whose row's last word waits for the parameters)
        w_valid = hv & cmd_ok
        for k in range(C):
            m.d.comb += [ge.i.payload[k].eq(self.rd0.data[k]),
                         ln.i.payload.data[k].eq(self.rd0.data[k]),
                         ad.a.payload[k].eq(self.rd0.data[k]),
                         ad.b.payload[k].eq(self.rd1.data[k])]
        m.d.comb += [ge.i.valid.eq(w_valid & is_ge), ad.a.valid.eq(w_valid & is_ad),
                     ad.b.valid.eq(w_valid & is_ad),
                     ln.i.valid.eq(hv & is_ln & (params_ok | ~h_rowend)),
                     ln.i.payload.count.eq(h_lastlane + 1), ln.i.payload.last.eq(h_rowend)]

        # softmax: the held word with its lane count, as LayerNorm
        for k in range(C):
            m.d.comb += sm.i.payload.data[k].eq(self.rd0.data[k])
        m.d.comb += [sm.i.valid.eq(hv & is_sm), sm.i.payload.count.eq(h_lastlane + 1),
                     sm.i.payload.last.eq(h_rowend)]
        with m.If(is_sm):
            m.d.comb += slot.eq(sm.i.valid & sm.i.ready)
        with m.Elif(is_ge):
            m.d.comb += slot.eq(ge.i.valid & ge.i.ready)
        with m.Elif(is_ln):
            m.d.comb += slot.eq(ln.i.valid & ln.i.ready)
        with m.Else():
            m.d.comb += slot.eq(ad.a.valid & ad.a.ready)

        # ------------------------------------------------------------ writer
        m.d.comb += [sm.o.ready.eq(1), ln.o.ready.eq(1), ge.o.ready.eq(1), ad.o.ready.eq(1)]
        w_row = Signal(range(1 << 12))
        w_word = Signal(wb)
        w_off = Signal(n_w + 1)
        w_last_word = w_off + C >= n
        w_adv = Signal()                # a word is written this cycle
        w_data = Signal.like(self.wr.data)
        w_mask = Signal(C)
        m.d.comb += [w_adv.eq(busy & Mux(is_sm, sm.o.valid,
                                         Mux(is_ge, ge.o.valid,
                                             Mux(is_ln, ln.o.valid, ad.o.valid)))),
                     w_mask.eq(Cat((w_off + k < n) for k in range(C)))]
        for k in range(C):
            m.d.comb += w_data[k].eq(Mux(is_sm, sm.o.payload.data[k],
                                         Mux(is_ge, ge.o.payload[k],
                                             Mux(is_ln, ln.o.payload.data[k], ad.o.payload[k]))))
        w_fin = Signal()                # every word has been written
        w_done = Signal()
        m.d.comb += w_done.eq(w_fin | (w_adv & w_last_word & (w_row == ins.m - 1)))
        with m.If(w_adv):
            m.d.comb += [self.wr.en.eq(1), self.wr.buf.eq(ins.dst.buf),
                         self.wr.row.eq(ins.dst.row + w_row),
                         self.wr.word.eq(_word_div(ins.dst.col, C) + w_word),
                         self.wr.mask.eq(w_mask), self.wr.data.eq(w_data)]
            with m.If(w_last_word):
                m.d.sync += [w_word.eq(0), w_off.eq(0), w_row.eq(w_row + 1)]
                with m.If(w_row == ins.m - 1):
                    m.d.sync += w_fin.eq(1)
            with m.Else():
                m.d.sync += [w_word.eq(w_word + 1), w_off.eq(w_off + C)]

        # SOFTMAX with SCORE: row 0 of the result into SCORE row imm, one lane per cycle from
        # a FIFO of row 0's words (the other rows stream on meanwhile)
        score = Signal()
        m.d.comb += score.eq(is_sm & (ins.flags & int(Flag.SCORE)).any())
        m.submodules.score_words = sq = fifo.SyncFIFOBuffered(
            width=len(sm.o.payload.data.as_value()), depth=-(-cfg.max_tokens // C))
        m.d.comb += [sq.w_data.eq(sm.o.payload.data.as_value()),
                     sq.w_en.eq(w_adv & score & (w_row == 0))]
        sq_word = data.View(sm.o.payload.data.shape(), sq.r_data)
        sc_lane = Signal(range(C))
        sc_off = Signal(n_w + 1)
        sc_fin = Signal()               # row 0 is in SCORE
        sc_end = Signal()               # the last element of row 0 goes out this cycle
        sc_go = Signal()
        sc_word_end = (sc_lane == C - 1) | sc_end
        m.d.comb += [sc_go.eq(busy & score & sq.r_rdy), sc_end.eq(sc_off + sc_lane + 1 == n),
                     sq.r_en.eq(sc_go & sc_word_end)]
        with m.If(sc_go):
            m.d.comb += [self.score_wr.en.eq(1), self.score_wr.token.eq(sc_off + sc_lane),
                         self.score_wr.head.eq(ins.imm), self.score_wr.data.eq(sq_word[sc_lane])]
            m.d.sync += [sc_lane.eq(Mux(sc_word_end, 0, sc_lane + 1)),
                         sc_off.eq(Mux(sc_word_end, sc_off + C, sc_off))]
            with m.If(sc_end):
                m.d.sync += sc_fin.eq(1)
        m.d.comb += done.eq(busy & w_done & (~score | sc_fin | (sc_go & sc_end)))

        # ------------------------------------------------------------ done
        unit_err = Mux(is_sm, sm.error, 0) | Mux(is_ln, ln.error, 0) | Mux(is_ad, ad.error, 0)
        m.d.comb += [self.done.eq(done), self.error.eq(done & (err | unit_err))]

        def reader_idle(keep_params=0):
            # the record reader's counters and flags at their initial values
            return [sent.eq(0), rec_in.eq(0), gb_cnt.eq(0), gb_data.eq(0), phase.eq(PH_HDR),
                    pc.eq(0), pc_word.eq(0), pc_lane.eq(0),
                    params_ok.eq(params_ok & keep_params)]

        with m.If(done):
            # back to the idle state: every counter and flag at its initial value (the record
            # reader's only if it holds no preloaded record)
            m.d.sync += [cmd_ok.eq(0), err.eq(0), r_row.eq(0), r_word.eq(0),
                         r_off.eq(0), r_end.eq(0), hv.eq(0), w_row.eq(0), w_word.eq(0),
                         w_off.eq(0), w_fin.eq(0), sc_lane.eq(0), sc_off.eq(0), sc_fin.eq(0)]
            with m.If(~pre):
                m.d.sync += reader_idle()
        with m.If(self.preload):
            # a new record: LayerNorm's gammas/betas replace the parameters (the running
            # instruction is then not a LayerNorm, preload_ready)
            pi = self.preload_instr
            m.d.sync += [rins.op.eq(pi.op), rins.n.eq(pi.n), rins.addr.eq(pi.addr), pre.eq(1),
                         pre_err.eq(0)]
            m.d.sync += reader_idle(keep_params=p_op != Op.LAYERNORM)
        with m.If(self.start & pre):
            # the preloaded instruction begins: its header's fields and check, if popped
            m.d.sync += [pre.eq(0), cmd_ok.eq((phase != PH_HDR) | hdr_pop),
                         err.eq(Mux(hdr_pop, hdr_err, pre_err))]
        with m.If(self.abort):
            m.d.sync += kill.eq(1)
        with m.If(kill & rec_done):
            m.d.sync += [pre.eq(0), kill.eq(0)]
            m.d.sync += reader_idle()
        return m


def _record_pops(cfg: AccelConfig, op: int, n: int, mem_latency: int) -> tuple[int, int]:
    """Cycles (``start`` = 0) of the header pop and of the last pop of the record of ``op``:
    a cycle-by-cycle model of the memory model's beats and the gearbox."""
    B = mem_beat_bytes(cfg)
    cap = B + HEADER_MAX - 1
    hdr = {Op.GELU: GELU_RECORD_BYTES, Op.ADD: ADD_RECORD_BYTES}.get(op, LN_HEADER_BYTES)
    total = hdr + (6 * n if op == Op.LAYERNORM else 0)
    g = gamma_group(cfg)
    pops = [hdr] + ([2 * min(g, n - j) for j in range(0, n, g)] + [4] * n
                    if op == Op.LAYERNORM else [])
    beats = -(-total // B)
    t, cnt, beat, next_beat, k = 1, 0, 0, max(1, mem_latency), 0
    header = None
    while True:
        cnt1 = cnt
        if cnt >= pops[k]:
            cnt1 -= pops[k]
            if k == 0:
                header = t
            k += 1
            if k == len(pops):
                return header, t
        if beat < beats and t >= next_beat and cnt1 + B <= cap:
            cnt1 += B
            beat += 1
            next_beat = t + 1
        cnt = cnt1
        t += 1


def cycles(cfg: AccelConfig, instr, mem_latency: int = 2, *, head: int = 0) -> int:
    """Exact cycles ``sim.instr.run_instr`` measures for ``instr`` on :class:`RowUnit` with no
    stalls and the memory model's first-beat latency ``mem_latency`` (``docs/exec/exec_row.md``
    gives the closed forms).

    ``head``: the record was preloaded ``head`` cycles before ``start`` (0: not preloaded); its
    read command then goes out the cycle after ``preload`` instead of in the ``start`` cycle,
    so every pop comes ``head - 1`` cycles earlier relative to ``start``, and a header or last
    gamma/beta popped by ``start`` holds nothing up."""
    if not isinstance(head, int) or isinstance(head, bool):
        raise TypeError(f"head must be an integer, not {head!r}")
    if head < 0:
        raise ValueError(f"head must be non-negative, not {head}")
    op, m, n = Op(instr.op), instr.m, instr.n
    C = cfg.cols
    shift = head - 1 if head else 0
    if op in (Op.GELU, Op.ADD):
        header, _ = _record_pops(cfg, op, n, mem_latency)
        latency = GELU_LATENCY if op == Op.GELU else ADD_LATENCY
        return max(0, header - shift) + m * -(-n // C) + latency
    if op == Op.SOFTMAX:
        out = sm_output_cycles(cfg, m, -(-n // C), start=1)
        if instr.flags & Flag.SCORE:
            # row 0 leaves the score FIFO one element per cycle, SCORE_FIFO_LATENCY cycles
            # after its first word was written
            return max(out[-1][1], out[0][0] + SCORE_FIFO_LATENCY + n - 1)
        return out[-1][1]
    _, last_pop = _record_pops(cfg, op, n, mem_latency)
    return ln_output_cycles(cfg, m, -(-n // C), start=1,
                            first_end=max(0, last_pop - shift) + 1)[-1][1]
