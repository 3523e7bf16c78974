"""LOAD and STORE: move a block of elements between external memory and an on-chip buffer.

Spec: ``golden.executor._step`` (LOAD/STORE), ``docs/isa.md``; design: ``docs/exec/exec_move.md``.

* LOAD (``Op.LOAD``): ``dst[r, 0:n] <- ext[addr + r*imm : addr + r*imm + n*e]`` for each row
  ``r < m``; ``e`` is 1 (int8 activation banks, uint8 PROB) or 2 with ``W16`` (int16 LOGIT,
  little-endian).
* STORE (``Op.STORE``): the reverse, from operand ``a``.

Data movement. One memory burst per row, of exactly ``n * e`` bytes at ``addr + r * imm`` (any
byte alignment: the memory port realigns a burst, so byte 0 of the row is always lane 0 of
its first beat). A beat is ``cols`` bytes: one buffer word of an 8-bit buffer, half a word of
LOGIT (``2 * cols`` bytes per word). Row ``r`` maps to buffer row ``opd.row + r`` and words
``opd.col // cols + j``; the last word of a row is written with the lanes past ``n`` masked
off, so neighbouring columns are untouched.

LOAD issues the read commands of all rows back to back, as fast as the memory accepts them
(bursts are answered in order); it never back-pressures ``rdata`` (a beat is written to the
buffer in the cycle it arrives, a LOGIT word on its second beat), so any number of bursts may
be outstanding and no data buffer is needed. STORE issues the write commands of all rows back
to back likewise; the data path reads one buffer word ahead: the buffer read port holds its
word until the next read, so it is the output register of ``wdata`` and the next word is read
in the cycle the current one's last beat is accepted, one beat per cycle with no bubble, also
across rows. STORE finishes when every burst's ``wresp`` has arrived.

Cycles (``start`` to ``done``, no stalls) depend on the memory as well; :func:`cycles` gives
them for :class:`sim.memory.MemoryModel`, which overlaps bursts like an AXI memory with
outstanding transactions: the latency of row ``r + 1`` hides behind the beats of row ``r``,
so the unit moves one beat per cycle throughout::

    LOAD:  1 + latency + m * b
    STORE: 3 + m * b              b = ceil(n * e / cols) beats per row

(the unit's own overhead is the cycle that latches the instruction; ``done`` is registered).

Trade-off: the unit reaches the buffers through the shared word ports, so an element of a
LOGIT word arrives in halves; a 2-byte beat format would double the memory port's width for
one opcode. LOAD writes beats straight from ``rdata`` to the buffer write port
(combinationally), trading a register stage for a cycle per instruction.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.utils import bits_for

from golden.config import AccelConfig
from golden.isa import Buf, Flag, Op, buffers

from .checks import check_config, validating
from .fixedpoint_ops import div_const
from .ports import LANE_BITS, NUM_BUFS, exec_signature, mem_beat_bytes, operand_layout

__all__ = ["MoveUnit", "cycles"]


def cycles(cfg: AccelConfig, instr, mem_latency: int = 2) -> int:
    """Cycles from ``start`` to ``done`` of a LOAD or STORE ``instr`` (``golden.isa.Instr``)
    without stalls, with :class:`sim.memory.MemoryModel` of first-beat latency
    ``mem_latency`` (bursts overlap: the next burst's beats follow the previous one's, write
    responses stay off the data path): what :func:`sim.instr.run_instr` measures.
    """
    check_config(cfg)
    e = 2 if instr.flags & Flag.OUT16 else 1
    beats = -(-instr.n * e // mem_beat_bytes(cfg))
    lat = max(1, mem_latency)
    if instr.op == Op.LOAD:
        return 1 + lat + instr.m * beats
    if instr.op == Op.STORE:
        return 3 + instr.m * beats
    raise ValueError(f"instruction must be a LOAD or a STORE, not {instr.name}")


class MoveUnit(wiring.Component):
    """Execution unit of LOAD (0x01) and STORE (0x02), for every buffer ``ACT0 .. PROB``.

    Parameters
    ----------
    cfg : AccelConfig
        Supplies ``cols`` (beat and word width) and the buffer shapes.

    Members
    -------
    start, instr, done, error, mem, rd0, rd1, wr, score_wr, score_rd : ``exec_signature(cfg)``
        The execution-unit protocol (``rtl.ports``). LOAD uses ``mem.rcmd``/``mem.rdata`` and
        ``wr``; STORE uses ``mem.wcmd``/``mem.wdata``/``mem.wresp`` and ``rd0``. ``rd1``,
        ``score_wr`` and ``score_rd`` stay zero; ``error`` is always 0 (a validated LOAD or
        STORE cannot fail).

    The instruction is assumed valid (``golden.isa.validate_instr``; the operand's column is a
    multiple of ``cols``; the buffer is not SCORE). ``W16`` selects 2-byte elements.

    Cycles, no stalls, with :class:`sim.memory.MemoryModel` (see :func:`cycles`):
    LOAD ``1 + m * (latency + b)``, STORE ``1 + m * (b + 2)``, ``b = ceil(n * e / cols)``.
    Throughput: one beat per cycle in both directions (a LOAD of LOGIT writes one word per
    two beats); memory stalls stall the unit and nothing else.
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self.cfg = cfg
        super().__init__(exec_signature(cfg))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        C = cfg.cols
        specs = [buffers(cfg)[Buf(b)] for b in range(NUM_BUFS)]
        max_rows = max(s.rows for s in specs)
        max_cols = max(s.cols for s in specs)
        ins = self.instr
        mem = self.mem

        # -- instruction state (latched at start; instr itself stays stable until done) --
        busy = Signal()
        store = Signal()
        wide = Signal()
        opd_row = Signal(range(max_rows))
        base = Signal(range(-(-max_cols // C)))     # first word of a row
        row_bytes = Signal(range(2 * max_cols + 1))
        last_row = Signal(range(max_rows))          # m - 1
        n_elems = Signal(range(max_cols + 1))

        is_store = ins.op == Op.STORE
        opd = Mux(is_store, ins.a.as_value(), ins.dst.as_value())
        opd_v = operand_layout()(opd)
        col = opd_v.col[:bits_for(max_cols)]
        col_word = div_const(col, C)
        w16 = ins.flags[int(Flag.OUT16).bit_length() - 1]

        m.d.sync += self.done.eq(0)
        with m.If(~busy & self.start):
            m.d.sync += [
                busy.eq(1),
                store.eq(is_store),
                wide.eq(w16),
                opd_row.eq(opd_v.row),
                base.eq(col_word),
                row_bytes.eq(Mux(w16, ins.n << 1, ins.n)),
                last_row.eq(ins.m - 1),
                n_elems.eq(ins.n),
            ]
        finish = Signal()
        with m.If(finish):
            m.d.sync += [busy.eq(0), self.done.eq(1)]

        # -- command channel: one burst per row, issued back to back ------------------------
        cmd_rows = Signal(range(max_rows + 1))
        cmd_addr = Signal(32)
        cmd_more = Signal()
        with m.If(~busy & self.start):
            m.d.sync += [cmd_rows.eq(0), cmd_addr.eq(ins.addr), cmd_more.eq(1)]
        for port, sel in ((mem.rcmd, ~store), (mem.wcmd, store)):
            with m.If(busy & sel & cmd_more):
                m.d.comb += [
                    port.valid.eq(1),
                    port.payload.addr.eq(cmd_addr),
                    port.payload.bytes.eq(row_bytes),
                ]
        cmd_fire = busy & cmd_more & Mux(store, mem.wcmd.ready, mem.rcmd.ready)
        with m.If(cmd_fire):
            m.d.sync += [cmd_rows.eq(cmd_rows + 1), cmd_addr.eq(cmd_addr + ins.imm)]
            with m.If(cmd_rows == last_row):
                m.d.sync += cmd_more.eq(0)

        # -- LOAD: rdata beats -> buffer words -----------------------------------------------
        l_row = Signal(range(max_rows))        # row offset of the beat
        l_word = Signal(range(-(-max_cols // C) + 1))
        l_rem = Signal(range(2 * max_cols + 1))  # bytes of the row from this beat on
        l_erem = Signal(range(max_cols + 1))   # elements of the row from this word on
        l_half = Signal()                      # LOGIT: this beat is a word's second half
        l_lo = Signal(8 * C)                   # LOGIT: the word's first half
        with m.If(~busy & self.start):
            m.d.sync += [l_row.eq(0), l_word.eq(col_word), l_half.eq(0),
                         l_rem.eq(Mux(w16, ins.n << 1, ins.n)), l_erem.eq(ins.n)]

        beat = mem.rdata.payload.data
        l_fire = Signal()
        l_last = Signal()       # the beat ends its row
        l_write = Signal()      # the beat completes a word
        m.d.comb += [
            l_fire.eq(busy & ~store & mem.rdata.valid),
            l_last.eq(l_rem <= C),
            l_write.eq(~wide | l_half | l_last),
        ]
        with m.If(busy & ~store):
            m.d.comb += [mem.rdata.ready.eq(1), self.mem_busy.eq(1)]
        wide_word = Mux(l_half, Cat(l_lo, beat), Cat(beat, Const(0, 8 * C)))
        with m.If(l_fire & l_write):
            m.d.comb += [
                self.wr.en.eq(1),
                self.wr.buf.eq(ins.dst.buf),
                self.wr.row.eq(opd_row + l_row),
                self.wr.word.eq(l_word),
            ]
            for i in range(C):
                m.d.comb += [
                    self.wr.mask[i].eq(l_erem > i),
                    self.wr.data[i].eq(Mux(wide, wide_word.word_select(i, LANE_BITS),
                                           beat.word_select(i, 8))),
                ]
        with m.If(l_fire):
            with m.If(~l_write):
                m.d.sync += [l_lo.eq(beat), l_half.eq(1)]
            with m.If(l_last):
                m.d.sync += [l_row.eq(l_row + 1), l_word.eq(base), l_half.eq(0),
                             l_rem.eq(row_bytes), l_erem.eq(n_elems)]
                with m.If(l_row == last_row):
                    m.d.comb += finish.eq(1)
            with m.Else():
                m.d.sync += l_rem.eq(l_rem - C)
                with m.If(l_write):
                    m.d.sync += [l_word.eq(l_word + 1), l_half.eq(0), l_erem.eq(l_erem - C)]

        # -- STORE: buffer words -> wdata beats -----------------------------------------------
        # read side: the next word to read
        r_row = Signal(range(max_rows))
        r_word = Signal(range(-(-max_cols // C) + 1))
        r_erem = Signal(range(max_cols + 1))
        r_more = Signal()
        # output side: rd0.data holds the word being sent
        o_valid = Signal()
        o_half = Signal()
        o_rem = Signal(range(2 * max_cols + 1))
        resp = Signal(range(max_rows + 1))
        with m.If(~busy & self.start):
            m.d.sync += [r_row.eq(0), r_word.eq(col_word), r_erem.eq(ins.n), r_more.eq(1),
                         o_valid.eq(0), o_half.eq(0), o_rem.eq(Mux(w16, ins.n << 1, ins.n)),
                         resp.eq(0)]

        word_bits_v = self.rd0.data.as_value()
        o_last = Signal()
        o_fire = Signal()
        o_done = Signal()       # the beat finishes its word
        m.d.comb += [
            o_last.eq(o_rem <= C),
            o_fire.eq(o_valid & mem.wdata.ready),
            o_done.eq(o_fire & (~wide | o_half | o_last)),
        ]
        with m.If(busy & store & o_valid):
            m.d.comb += [
                mem.wdata.valid.eq(1),
                mem.wdata.payload.last.eq(o_last),
                mem.wdata.payload.data.eq(Mux(
                    wide, word_bits_v.word_select(o_half, 8 * C),
                    Cat(word_bits_v.word_select(i, LANE_BITS)[:8] for i in range(C)))),
            ]
        with m.If(o_fire):
            with m.If(o_last):
                m.d.sync += [o_rem.eq(row_bytes), o_half.eq(0)]
            with m.Else():
                m.d.sync += [o_rem.eq(o_rem - C), o_half.eq(wide & ~o_half)]
        read = Signal()
        m.d.comb += read.eq(busy & store & r_more & (~o_valid | o_done))
        with m.If(read):
            m.d.comb += [
                self.rd0.en.eq(1),
                self.rd0.buf.eq(ins.a.buf),
                self.rd0.row.eq(opd_row + r_row),
                self.rd0.word.eq(r_word),
            ]
            m.d.sync += o_valid.eq(1)
            with m.If(r_erem <= C):
                m.d.sync += [r_row.eq(r_row + 1), r_word.eq(base), r_erem.eq(n_elems)]
                with m.If(r_row == last_row):
                    m.d.sync += r_more.eq(0)
            with m.Else():
                m.d.sync += [r_word.eq(r_word + 1), r_erem.eq(r_erem - C)]
        with m.Elif(o_done):
            m.d.sync += o_valid.eq(0)

        with m.If(busy & store):
            m.d.comb += mem.wresp.ready.eq(1)
            with m.If(mem.wresp.valid):
                m.d.sync += resp.eq(resp + 1)
                with m.If(resp == last_row):
                    m.d.comb += finish.eq(1)

        return m
