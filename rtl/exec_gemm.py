"""GEMM execution unit: runs one GEMM instruction (opcode ``0x03``) on a :class:`GemmEngine`.

The unit wraps one :class:`rtl.gemm.GemmEngine` between the accelerator's external memory port
and its on-chip buffers (``rtl.ports.exec_signature``) and implements the GEMM instruction of
``docs/isa.md`` bit-exactly as ``golden.executor`` does (``docs/exec/exec_gemm.md``):

* **Command.** ``m, k, n``, ``load_weights = 1`` and the mode flags go to the engine's ``cmd``
  in the ``start`` cycle (or the ``preload`` cycle, below).
* **Weights.** Dense: one read burst of ``weight_words(k, n) * cols`` bytes at ``addr``; every
  memory beat (``cols`` bytes) is one ``w`` beat. ``SPARSE``: one burst of ``imm`` bytes at
  ``addr`` whose beats feed the engine's sparse decoder (``cw``). ``B_BUF``: ``w`` beats come
  from bank operand ``b`` through a word reader (:class:`WordReader`, read port ``rd1``), one
  word per beat; ``B_BUF | B_T``: through a transposing reader (:class:`TransposeReader`).
* **Epilogue.** One read burst of ``7 * cols`` bytes per column tile at ``addr2``, issued right
  before the weight burst; the seven beats of a tile's record (bias i32, mult u16, shift u8, each
  ``cols`` wide) are collected in a shift register and handed over as one ``ep`` beat.
* **Activations.** A transposing reader on ``rd0`` turns ``rows`` words of one channel group of
  bank operand ``a`` (ACT, or PROB with ``A_U8``) into the engine's column beats.
* **Outputs.** Every ``o`` beat is written at once through ``wr`` (``o`` is always ready, so the
  array never waits for the writer): word ``(dst.row + ti*rows + r, dst.col/cols + tj)``, lanes
  past ``n`` masked.

Cycle count (``start`` = cycle 0, no stalls): the engine's own schedule
(:func:`sim.perf.gemm_cycles` / :func:`sim.perf.sparse_gemm_cycles`) with the weight phase
stretched by the memory (latency before the first weight beat, when it exceeds the engine's
``ceil(n/cols) + 1`` validation cycles; the epilogue record at ``7`` beats per column tile
instead of one; the burst gap of the memory), plus one cycle for ``done``. :func:`cycles` is the
exact model. The readers never starve the array once the weights are in (they run one beat per
cycle with ``rows <= cols``), except for a single column tile (``n <= cols``) with ``k`` not a
multiple of ``cols``, where the transposing reader needs ``rows`` reads per channel group; the
model covers that case too.

Preload. The load phase (the engine command, the record and weight bursts, the engine taking
them) needs nothing but the instruction and the memory's read channels, so the controller may
start it early: a ``preload`` pulse with the instruction on ``preload_instr`` (while the
shared ``instr`` still holds the running row unit's instruction) begins it, and the
instruction proper begins at its ``start``. The unit keeps its own copy of the instruction,
latched at ``preload`` (or at ``start`` when not preloaded). Until ``start`` the A reader, the
B readers and the output writes stay idle (the buffer ports belong to the running unit) and
``done``/``error`` stay low; a malformed stream found meanwhile is reported with ``done`` after
``start``. ``abort`` in place of ``start`` (the program failed before the GEMM's turn) runs
the preloaded instruction to its end with every buffer write suppressed, so that the engine
finishes its command and every beat of the bursts is taken. :func:`cycles` with ``head=h``
counts a GEMM preloaded ``h`` cycles before its ``start``.

Errors: a corrupt compressed stream (the engine's decoder raises ``error`` after draining the
stream to its ``last`` beat) or a command the engine rejects. The unit then drains every beat
of the bursts it requested and pulses ``done`` with ``error``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import AccelConfig
from golden.isa import Flag

from .checks import check_config, check_width, validating
from .fixedpoint_ops import div_const, mod_const
from .gemm import GemmEngine, command_layout
from .ports import (
    buf_read_signature,
    exec_signature,
    instr_layout,
    mem_beat_bytes,
    preload_members,
    word_bits,
)

__all__ = ["EP_BEATS", "GemmUnit", "TransposeReader", "WordReader", "cycles"]

#: Memory beats of one column tile's epilogue record: bias (4), mult (2), shift (1).
EP_BEATS = 7


class TransposeReader(wiring.Component):
    """Reads ``lanes`` rows of a buffer region word by word and emits its columns as beats.

    For ``t < tiles``, for each channel group ``g < ceil(k / cols)`` it reads the words
    ``(row + t*lanes + l, word + g)`` for ``l < lanes`` (one read per cycle on ``rd``), then
    emits ``min(cols, k - g*cols)`` beats on ``o``; beat ``j`` carries lane ``l`` = element
    ``j`` of word ``l`` (the low ``width`` bits of the buffer's 16-bit lane): the column
    ``row.. + lanes`` of channel ``g*cols + j``. This is the GEMM engine's A order (``lanes =
    rows``) and the transposed-B order of ``B_BUF | B_T`` (``lanes = cols``).

    Two staging banks of ``lanes`` words alternate: the reads of a group go into one while the
    other is emitted, and a bank is refilled from the cycle its last beat is taken. With
    ``lanes <= cols`` the reader sustains one beat per cycle, except after a short last group
    (``k`` not a multiple of ``cols``), which still needs ``lanes`` reads. Latency: the first
    beat is valid ``lanes + 2`` cycles after ``start``. Rows past the region (padding lanes)
    are read too, so their lanes hold whatever the buffer returns.

    Members
    -------
    start : In(1)
        Pulse: latch ``buf``, ``row``, ``word``, ``tiles``, ``k`` and begin.
    clear : In(1)
        Abandon the run (drops staged beats).
    buf, row, word, tiles, k : In
        The region, sampled at ``start``.
    rd : Out(buf_read_signature(cfg))
        The buffer read port (all outgoing members 0 while not reading).
    o : Out(stream.Signature(ArrayLayout(signed(width), lanes)))
    busy : Out(1)
        Reading or holding staged beats.
    """

    def __init__(self, cfg: AccelConfig, lanes: int, width: int):
        with validating(self):
            check_config(cfg)
            check_width("lanes", lanes, 1, 64)
            check_width("width", width, 1, 16)
        self._cfg, self._lanes, self._width = cfg, lanes, width
        dmax = cfg.max_gemm_dim
        super().__init__({
            "start": In(1),
            "clear": In(1),
            "buf": In(unsigned(3)),
            "row": In(unsigned(12)),
            "word": In(unsigned(word_bits(cfg))),
            "tiles": In(range(dmax + 1)),
            "k": In(range(dmax + 1)),
            "rd": Out(buf_read_signature(cfg)),
            "o": Out(stream.Signature(data.ArrayLayout(signed(width), lanes))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, L, E = self._cfg, self._lanes, self._width
        C = cfg.cols
        dmax = cfg.max_gemm_dim

        active = Signal()
        r_buf = Signal(3)
        r_tbase = Signal(13)
        r_row = Signal(13)
        r_word0 = Signal.like(self.word)
        r_word = Signal.like(self.word)
        r_l = Signal(range(L))
        r_kleft = Signal(range(dmax + 1))
        r_k = Signal(range(dmax + 1))
        r_tiles = Signal(range(dmax + 1))
        r_bank = Signal()
        full = Signal(2)
        cnt_m1 = [Signal(range(C), name=f"cnt_m1_{b}") for b in range(2)]
        banks = [[Signal(E * C, name=f"bank{b}_lane{i}") for i in range(L)] for b in range(2)]
        cap_v = Signal()
        cap_bank = Signal()
        cap_l = Signal(range(L))
        cap_last = Signal()
        cap_cnt_m1 = Signal(range(C))
        e_bank = Signal()
        e_j = Signal(range(C))

        # ---- emitter ------------------------------------------------------------------------
        e_full = full.bit_select(e_bank, 1)
        fire = self.o.valid & self.o.ready
        e_cnt = Mux(e_bank, cnt_m1[1], cnt_m1[0])
        fire_last = fire & (e_j == e_cnt)
        m.d.comb += self.o.valid.eq(e_full)
        for lane in range(L):
            m.d.comb += self.o.payload[lane].eq(
                Mux(e_bank, banks[1][lane][:E], banks[0][lane][:E]))
        with m.If(fire):
            m.d.sync += e_j.eq(e_j + 1)
            with m.If(fire_last):
                m.d.sync += [e_j.eq(0), e_bank.eq(~e_bank)]

        # ---- reader: a bank may be refilled from the cycle its last beat is taken -----------
        bank_free = ~full.bit_select(r_bank, 1) | (fire_last & (e_bank == r_bank))
        issue = active & bank_free
        with m.If(issue):
            m.d.comb += [self.rd.en.eq(1), self.rd.buf.eq(r_buf), self.rd.row.eq(r_row),
                         self.rd.word.eq(r_word)]
        last_group = r_kleft <= C
        m.d.sync += [cap_v.eq(issue), cap_bank.eq(r_bank), cap_l.eq(r_l),
                     cap_last.eq(r_l == L - 1),
                     cap_cnt_m1.eq(Mux(last_group, r_kleft - 1, C - 1))]
        with m.If(issue):
            m.d.sync += [r_l.eq(r_l + 1), r_row.eq(r_row + 1)]
            with m.If(r_l == L - 1):
                m.d.sync += [r_l.eq(0), r_bank.eq(~r_bank)]
                with m.If(~last_group):
                    m.d.sync += [r_kleft.eq(r_kleft - C), r_word.eq(r_word + 1),
                                 r_row.eq(r_tbase)]
                with m.Else():
                    m.d.sync += [r_kleft.eq(r_k), r_word.eq(r_word0), r_tbase.eq(r_tbase + L),
                                 r_row.eq(r_tbase + L), r_tiles.eq(r_tiles - 1)]
                    with m.If(r_tiles == 1):
                        m.d.sync += active.eq(0)

        # ---- capture: the word read last cycle into its bank -------------------------------
        set_full = Signal(2)
        clr_full = Signal(2)
        with m.If(cap_v & cap_last):
            m.d.comb += set_full.eq(Mux(cap_bank, 0b10, 0b01))
            with m.If(cap_bank):
                m.d.sync += cnt_m1[1].eq(cap_cnt_m1)
            with m.Else():
                m.d.sync += cnt_m1[0].eq(cap_cnt_m1)
        with m.If(fire_last):
            m.d.comb += clr_full.eq(Mux(e_bank, 0b10, 0b01))
        m.d.sync += full.eq((full & ~clr_full) | set_full)
        word_in = Cat(self.rd.data[c][:E] for c in range(C))
        for b in range(2):
            for lane in range(L):
                with m.If(cap_v & (cap_bank == b) & (cap_l == lane)):
                    m.d.sync += banks[b][lane].eq(word_in)
                with m.Elif(fire & (e_bank == b)):
                    m.d.sync += banks[b][lane].eq(banks[b][lane] >> E)

        m.d.comb += self.busy.eq(active | cap_v | full.any())

        with m.If(self.start):
            m.d.sync += [active.eq(self.tiles != 0), r_buf.eq(self.buf), r_tbase.eq(self.row),
                         r_row.eq(self.row), r_word0.eq(self.word), r_word.eq(self.word),
                         r_l.eq(0), r_kleft.eq(self.k), r_k.eq(self.k),
                         r_tiles.eq(self.tiles), r_bank.eq(0), e_bank.eq(0), e_j.eq(0),
                         full.eq(0), cap_v.eq(0)]
        with m.If(self.clear):
            m.d.sync += [active.eq(0), full.eq(0), cap_v.eq(0), e_j.eq(0), e_bank.eq(0)]
        return m


class WordReader(wiring.Component):
    """Streams buffer words: for ``t < tiles``, for ``kk < k``: word ``(row + kk, word + t)``.

    The ``B_BUF`` weight order of the GEMM engine (``for tj: for kk:`` the row segment
    ``b[kk, tj*cols ...]``). One read per cycle on ``rd``; the read data (held by the buffer
    until the next read) is the beat, so a read is issued whenever the previous beat is taken.
    Throughput one beat per cycle; first beat valid two cycles after ``start``.

    Members
    -------
    start, clear : In(1)
    buf, row, word, tiles, k : In
        The region, sampled at ``start``.
    rd : Out(buf_read_signature(cfg))
    o : Out(stream.Signature(ArrayLayout(signed(width), cols)))
    """

    def __init__(self, cfg: AccelConfig, width: int):
        with validating(self):
            check_config(cfg)
            check_width("width", width, 1, 16)
        self._cfg, self._width = cfg, width
        dmax = cfg.max_gemm_dim
        super().__init__({
            "start": In(1),
            "clear": In(1),
            "buf": In(unsigned(3)),
            "row": In(unsigned(12)),
            "word": In(unsigned(word_bits(cfg))),
            "tiles": In(range(dmax + 1)),
            "k": In(range(dmax + 1)),
            "rd": Out(buf_read_signature(cfg)),
            "o": Out(stream.Signature(data.ArrayLayout(signed(width), cfg.cols))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, E = self._cfg, self._width
        dmax = cfg.max_gemm_dim
        active = Signal()
        pend = Signal()
        r_buf = Signal(3)
        r_row0 = Signal(12)
        r_row = Signal(13)
        r_word = Signal.like(self.word)
        r_kk = Signal(range(dmax + 1))
        r_km1 = Signal(range(dmax + 1))
        r_tiles = Signal(range(dmax + 1))

        issue = active & (~pend | self.o.ready)
        m.d.comb += self.o.valid.eq(pend)
        for c in range(cfg.cols):
            m.d.comb += self.o.payload[c].eq(self.rd.data[c][:E])
        with m.If(issue):
            m.d.comb += [self.rd.en.eq(1), self.rd.buf.eq(r_buf), self.rd.row.eq(r_row),
                         self.rd.word.eq(r_word)]
            m.d.sync += [pend.eq(1), r_kk.eq(r_kk + 1), r_row.eq(r_row + 1)]
            with m.If(r_kk == r_km1):
                m.d.sync += [r_kk.eq(0), r_row.eq(r_row0), r_word.eq(r_word + 1),
                             r_tiles.eq(r_tiles - 1)]
                with m.If(r_tiles == 1):
                    m.d.sync += active.eq(0)
        with m.Elif(self.o.ready):
            m.d.sync += pend.eq(0)
        with m.If(self.start):
            m.d.sync += [active.eq((self.tiles != 0) & (self.k != 0)), pend.eq(0),
                         r_buf.eq(self.buf), r_row0.eq(self.row), r_row.eq(self.row),
                         r_word.eq(self.word), r_kk.eq(0), r_km1.eq(self.k - 1),
                         r_tiles.eq(self.tiles)]
        with m.If(self.clear):
            m.d.sync += [active.eq(0), pend.eq(0)]
        return m


class GemmUnit(wiring.Component):
    """Execution unit of the GEMM instruction (``docs/exec/exec_gemm.md``).

    Members
    -------
    start, instr, done, error, mem_busy, mem, rd0, rd1, wr, score_wr, score_rd :
        ``rtl.ports.exec_signature(cfg)``. ``rd0`` reads ``A``, ``rd1`` reads ``B`` (``B_BUF``),
        ``wr`` writes the result; the score ports and the memory write channels stay idle.
        ``mem_busy`` is high from the cycle after ``preload`` (or ``start``).
    preload : In(1)
        Pulse while idle: take ``preload_instr`` and begin its load phase (engine command,
        record and weight bursts); its ``start`` follows at least one cycle later, with the
        same instruction on ``instr``. ``start`` in the same cycle wins.
    preload_instr : In(instr_layout())
        The instruction to preload (sampled with ``preload``).
    abort : In(1)
        Pulse instead of ``start`` after a ``preload``: run the instruction to ``done``
        without writing any buffer (``error`` may come with that ``done``).

    Data movement and order: see the module docstring. Throughput: one weight beat per cycle
    from memory or from the bank, one activation beat and one output write per cycle, so the
    array runs at the engine's own rate (``rows * cols`` MACs per cycle while ``k >=
    max(rows, cols)``) once the weights are loaded. Latency: :func:`cycles`.
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self._cfg = cfg
        super().__init__(dict(exec_signature(cfg).members) | preload_members())

    @property
    def config(self) -> AccelConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        R, C = cfg.rows, cfg.cols
        B = mem_beat_bytes(cfg)
        assert B == C
        dmax = cfg.max_gemm_dim
        ntmax = -(-dmax // C)

        m.submodules.engine = eng = GemmEngine(cfg)
        m.submodules.a_reader = ard = TransposeReader(cfg, R, cfg.act_width)
        m.submodules.bt_reader = btr = TransposeReader(cfg, C, cfg.weight_width)
        m.submodules.b_reader = brd = WordReader(cfg, cfg.weight_width)

        # ---- the instruction: a copy latched when the unit takes it ----------------------------
        # ``go``: the command and the read bursts begin (``preload``, or ``start`` while idle);
        # ``begin``: the instruction proper (``start``, or ``abort`` of a preloaded one), from
        # which the A reader runs and the results are written. ``src`` is the instruction taken
        # at ``go``, ``li`` its latched copy (valid from the cycle after ``go``) and ``cur`` the
        # instruction at ``begin`` (``instr`` when it coincides with ``go``).
        running = Signal()        # between go and done
        started = Signal()        # between begin and done
        mute = Signal()           # begun by ``abort``: no buffer write
        go = ~running & (self.start | self.preload)
        begin = ~started & (self.start | (self.abort & running))
        src = Signal(instr_layout())
        li = Signal(instr_layout())
        cur = Signal(instr_layout())
        with m.If(self.start):
            m.d.comb += src.eq(self.instr)
        with m.Else():
            m.d.comb += src.eq(self.preload_instr)
        with m.If(running):
            m.d.comb += cur.eq(li)
        with m.Else():
            m.d.comb += cur.eq(self.instr)
        with m.If(go):
            m.d.sync += li.eq(src)

        def flag(ins, f):
            return ins.flags[f.bit_length() - 1]

        f_sparse, f_bbuf, f_bt = (flag(li, f) for f in (Flag.SPARSE, Flag.B_BUF, Flag.B_T))

        # ---- per-instruction values, registered at ``go`` ----------------------------------
        # m, k, n at the widths validation allows (the byte-count multiplier stays small).
        dims = command_layout(cfg).members
        s_n = src.n[:dims["n"].width]
        nt_now = div_const(s_n + (C - 1), C)
        nt = Signal(range(ntmax + 1))
        nt_cur = Mux(running, nt, nt_now)   # ceil(n / cols) of ``cur`` at ``begin``
        w_bytes = Signal(32)
        ep_bytes = Signal(range(EP_BEATS * C * ntmax + 1))
        last_n = Signal(range(C + 1))       # bytes in the last beat of the sparse burst
        word_d = div_const(li.dst.col, C)
        # The weight burst's length, from the latched copy: its command follows the records'
        # (two cycles after ``go`` at the earliest).
        m.d.sync += w_bytes.eq(Mux(f_sparse, li.imm, li.k[:dims["k"].width] * nt * C))

        in_run = Signal()         # the engine has the command
        in_error = Signal()       # the engine reported an error: drain the memory
        clear = Signal()
        out_last = Signal()       # the last output row is written in this cycle
        outs_done = Signal()      # every output row has been written
        with m.If(begin):
            m.d.sync += [started.eq(1), mute.eq(~self.start)]

        # ---- control --------------------------------------------------------------------------
        cmd = eng.cmd.payload
        cmd_src = Signal(instr_layout())
        with m.If(running):
            m.d.comb += cmd_src.eq(li)
        with m.Else():
            m.d.comb += cmd_src.eq(src)
        m.d.comb += [cmd.m.eq(cmd_src.m), cmd.k.eq(cmd_src.k), cmd.n.eq(cmd_src.n),
                     cmd.load_weights.eq(1), cmd.sparse.eq(flag(cmd_src, Flag.SPARSE)),
                     cmd.a_unsigned.eq(flag(cmd_src, Flag.A_U8)),
                     cmd.out16.eq(flag(cmd_src, Flag.OUT16))]

        bursts_left = Signal(2)   # read bursts whose last beat has not been taken
        issue_done = Signal()     # every read command has been accepted
        finish = [running.eq(0), started.eq(0), mute.eq(0)]
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.comb += eng.cmd.valid.eq(go)
                with m.If(go):
                    m.d.sync += [nt.eq(nt_now), ep_bytes.eq(nt_now * (EP_BEATS * C)),
                                 last_n.eq(mod_const(src.imm - 1, C) + 1),
                                 bursts_left.eq(Mux(flag(src, Flag.B_BUF), 1, 2)),
                                 running.eq(1)]
                    with m.If(eng.cmd.ready):
                        m.next = "RUN"
                    with m.Else():
                        m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += eng.cmd.valid.eq(1)
                with m.If(eng.cmd.ready):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += in_run.eq(1)
                # Done with the last row, unless the engine is still checking a compressed
                # stream (then once it has finished) or has found it malformed.
                fin = out_last | outs_done
                with m.If(fin & ~eng.loading & ~eng.error):
                    # The last row is written at the end of this cycle (or was).
                    m.d.comb += [self.done.eq(1), clear.eq(1)]
                    m.d.sync += [outs_done.eq(0)] + finish
                    m.next = "IDLE"
                with m.Elif(~eng.busy & eng.error):
                    m.d.sync += outs_done.eq(0)
                    m.next = "ERROR"
                with m.Elif(out_last):
                    m.d.sync += outs_done.eq(1)
            with m.State("ERROR"):
                # A defect found during a preload is reported once the instruction has begun.
                m.d.comb += in_error.eq(1)
                with m.If(started & issue_done & (bursts_left == 0)):
                    m.d.comb += [self.done.eq(1), self.error.eq(1), clear.eq(1)]
                    m.d.sync += finish
                    m.next = "IDLE"
        m.d.comb += [ard.clear.eq(clear), btr.clear.eq(clear), brd.clear.eq(clear)]
        m.d.comb += [ard.start.eq(begin), btr.start.eq(begin & flag(cur, Flag.B_BUF)
                                                     & flag(cur, Flag.B_T)),
                     brd.start.eq(begin & flag(cur, Flag.B_BUF) & ~flag(cur, Flag.B_T))]

        # ---- readers: A from bank a (rd0), B from bank b (rd1) -----------------------------
        # Their parameters are sampled at ``begin``.
        c_m = cur.m[:dims["m"].width]
        for rdr in (ard, btr, brd):
            m.d.comb += [rdr.k.eq(cur.k)]
        m.d.comb += [ard.buf.eq(cur.a.buf), ard.row.eq(cur.a.row),
                     ard.word.eq(div_const(cur.a.col, C)),
                     ard.tiles.eq(div_const(c_m + (R - 1), R))]
        for rdr in (btr, brd):
            m.d.comb += [rdr.buf.eq(cur.b.buf), rdr.row.eq(cur.b.row),
                         rdr.word.eq(div_const(cur.b.col, C)), rdr.tiles.eq(nt_cur)]
        wiring.connect(m, ard.rd, wiring.flipped(self.rd0))
        for name in ("en", "buf", "row", "word"):
            m.d.comb += getattr(self.rd1, name).eq(getattr(btr.rd, name)
                                                   | getattr(brd.rd, name))
        m.d.comb += [btr.rd.data.eq(self.rd1.data), brd.rd.data.eq(self.rd1.data)]
        wiring.connect(m, ard.o, eng.a)

        # ---- memory read commands: the epilogue records, then the weights (unless B_BUF) ----
        # The records come first: the engine takes them while the weights load, and starts
        # column tile tj as soon as its weights and its record are in.
        rq = self.mem.rcmd
        with m.FSM(name="rq"):
            with m.State("IDLE"):
                m.d.comb += issue_done.eq(~go)
                with m.If(go):
                    m.next = "FIRST"
            with m.State("FIRST"):
                m.d.comb += [rq.valid.eq(1), rq.payload.addr.eq(li.addr2),
                             rq.payload.bytes.eq(ep_bytes)]
                with m.If(rq.ready & f_bbuf):
                    m.next = "IDLE"
                with m.Elif(rq.ready):
                    m.next = "SECOND"
            with m.State("SECOND"):
                m.d.comb += [rq.valid.eq(1), rq.payload.addr.eq(li.addr),
                             rq.payload.bytes.eq(w_bytes)]
                with m.If(rq.ready):
                    m.next = "IDLE"

        # ---- read data: the epilogue records, then the weight burst -------------------------
        rdata = self.mem.rdata
        beat = rdata.payload.data
        in_ep = Signal()          # the epilogue burst is being received
        ep_cnt = Signal(range(EP_BEATS))
        ep_hold = Signal(8 * B * (EP_BEATS - 1))
        with m.If(go):
            m.d.sync += [in_ep.eq(1), ep_cnt.eq(0)]
        with m.If(rdata.valid & rdata.ready & rdata.payload.last):
            m.d.sync += [bursts_left.eq(bursts_left - 1), in_ep.eq(0)]

        record = Cat(ep_hold, beat)
        ep = eng.ep.payload
        for c in range(C):
            m.d.comb += [ep.bias[c].eq(record[32 * c:32 * c + 32].as_signed()),
                         ep.mult[c].eq(record[32 * C + 16 * c:32 * C + 16 * c + 16]),
                         ep.shift[c].eq(record[48 * C + 8 * c:48 * C + 8 * c + 8])]
            m.d.comb += [eng.cw.payload.data[c].eq(beat[8 * c:8 * c + 8]),
                         eng.w.payload[c].eq(Mux(
                             f_bbuf, Mux(f_bt, btr.o.payload[c], brd.o.payload[c]),
                             beat[8 * c:8 * c + 8].as_signed()))]
        m.d.comb += [eng.cw.payload.n.eq(Mux(rdata.payload.last, last_n, C)),
                     eng.cw.payload.last.eq(rdata.payload.last)]

        m.d.comb += self.mem_busy.eq(running & (~issue_done | (bursts_left != 0)))
        with m.If(in_error & (bursts_left != 0)):
            m.d.comb += rdata.ready.eq(1)                  # drop what is left
        with m.Elif(running & in_ep):
            with m.If(ep_cnt == EP_BEATS - 1):
                m.d.comb += [eng.ep.valid.eq(rdata.valid), rdata.ready.eq(eng.ep.ready)]
            with m.Else():
                m.d.comb += rdata.ready.eq(1)
            with m.If(rdata.valid & rdata.ready):
                m.d.sync += [ep_cnt.eq(Mux(ep_cnt == EP_BEATS - 1, 0, ep_cnt + 1)),
                             ep_hold.eq(record[8 * B:])]
        with m.Elif(running & (bursts_left != 0)):
            with m.If(f_sparse):
                m.d.comb += [eng.cw.valid.eq(rdata.valid), rdata.ready.eq(eng.cw.ready)]
            with m.Else():
                m.d.comb += [eng.w.valid.eq(rdata.valid), rdata.ready.eq(eng.w.ready)]
        with m.If(running & f_bbuf):
            with m.If(f_bt):
                m.d.comb += [eng.w.valid.eq(btr.o.valid), btr.o.ready.eq(eng.w.ready)]
            with m.Else():
                m.d.comb += [eng.w.valid.eq(brd.o.valid), brd.o.ready.eq(eng.w.ready)]

        # ---- outputs: o beats (for ti: for tj: for r) into the destination -----------------
        o = eng.o
        o_row = Signal(13)
        o_base = Signal(13)
        o_r = Signal(range(R))
        o_word = Signal.like(self.wr.word)
        o_tj_left = Signal(range(ntmax + 1))
        o_cols_left = Signal(range(dmax + 1))
        o_rows_left = Signal(range(cfg.max_tokens + 1))
        o_rv_m1 = Mux(o_rows_left < R, o_rows_left - 1, R - 1)
        # The engine's first row needs activations, which the A reader sends from ``begin``.
        m.d.comb += o.ready.eq(in_run & started)
        with m.If(o.valid & o.ready):
            with m.If(~mute):
                m.d.comb += [self.wr.en.eq(1), self.wr.buf.eq(li.dst.buf),
                             self.wr.row.eq(o_row), self.wr.word.eq(o_word)]
                for c in range(C):
                    m.d.comb += [self.wr.mask[c].eq(o_cols_left > c),
                                 self.wr.data[c].eq(o.payload[c])]
            m.d.sync += [o_r.eq(o_r + 1), o_row.eq(o_row + 1)]
            with m.If(o_r == o_rv_m1):
                m.d.sync += [o_r.eq(0), o_row.eq(o_base), o_word.eq(o_word + 1),
                             o_cols_left.eq(o_cols_left - C), o_tj_left.eq(o_tj_left - 1)]
                with m.If(o_tj_left == 1):
                    m.d.sync += [o_base.eq(o_base + R), o_row.eq(o_base + R),
                                 o_word.eq(word_d), o_cols_left.eq(li.n),
                                 o_tj_left.eq(nt), o_rows_left.eq(o_rows_left - R)]
                    with m.If(o_rows_left <= R):
                        m.d.comb += out_last.eq(1)
        with m.If(begin):
            m.d.sync += [o_row.eq(cur.dst.row), o_base.eq(cur.dst.row), o_r.eq(0),
                         o_word.eq(div_const(cur.dst.col, C)), o_tj_left.eq(nt_cur),
                         o_cols_left.eq(cur.n), o_rows_left.eq(cur.m)]
        return m


class _TransposeTiming:
    """Cycle model of :class:`TransposeReader` (started in cycle ``first_read - 1``)."""

    def __init__(self, lanes: int, cols: int, k: int, first_read: int):
        self.L, self.C, self.k = lanes, cols, k
        self.next_read = first_read
        self.elast = []          # cycle the last beat of each group is taken
        self.prev = -1           # cycle the latest beat was taken

    def tile(self, begin: int) -> int:
        """One tile's beats, taken by a consumer ready from ``begin`` on: returns the cycle
        its last beat is taken."""
        L, C = self.L, self.C
        for g in range(-(-self.k // C)):
            q = len(self.elast)
            rs = self.next_read if q < 2 else max(self.next_read, self.elast[q - 2])
            self.next_read = rs + L
            first = max(rs + L + 1, self.prev + 1, begin)
            self.prev = first + min(C, self.k - g * C) - 1
            self.elast.append(self.prev)
        return self.prev


def cycles(cfg: AccelConfig, instr, mem_latency: int = 2, compressed=None, *,
           head: int = 0) -> int:
    """Cycles of one GEMM instruction on :class:`GemmUnit`, from ``start`` (cycle 0) to
    ``done`` inclusive, as ``sim.instr.run_instr`` counts them with no stalls and a memory of
    first-beat latency ``mem_latency`` (``sim.memory.MemoryModel``: a burst's first beat comes
    ``mem_latency`` cycles after its command, or right after the previous burst).

    ``head``: the instruction was preloaded ``head`` cycles before ``start`` (0: not
    preloaded). The command, the records and the weights then run from the ``preload`` cycle,
    the activation reader from ``start``; the engine (idle at ``preload``) does the rest.

    The engine's tile schedule is :mod:`sim.perf`'s (``_tiles``, the recurrence behind
    :func:`~sim.perf.gemm_cycles` and :func:`~sim.perf.sparse_gemm_cycles`), fed with the
    unit's weight-ready cycle and the activation reader's timing. ``compressed``: the weight
    stream of a ``SPARSE`` instruction (its schedule sets the tile lengths and the decoder's
    time).
    """
    from golden.isa import Instr
    from golden.sparse_format import decode, tile_schedule
    from sim.perf import _tiles, ceil_div, decode_timeline, tile_ready_dense, tile_ready_sparse

    from .gemm import SETUP_CYCLES, SPARSE_EXTRA_STAGES, engine_latency

    if not isinstance(instr, Instr):
        raise TypeError(f"instr must be a golden.isa.Instr, not {instr!r}")
    if not isinstance(head, int) or isinstance(head, bool):
        raise TypeError(f"head must be an integer, not {head!r}")
    if head < 0:
        raise ValueError(f"head must be non-negative, not {head}")
    R, C = cfg.rows, cfg.cols
    L = max(1, mem_latency)
    f = Flag(instr.flags)
    m, k, n = instr.m, instr.k, instr.n
    nt = ceil_div(n, C)
    S = SETUP_CYCLES                 # the engine validates the command in cycles 1 .. S
    latency = engine_latency(cfg)
    macs = m * k * n
    lengths = [k] * nt
    # Times from the cycle of ``go`` (``preload``, or ``start`` when not preloaded).
    # The epilogue burst (command in cycle 1): a record's last beat waits for the engine,
    # which takes records from cycle S + 1.
    t = None
    ep_taken = []
    for b in range(EP_BEATS * nt):
        t = 1 + L if t is None else t + 1
        if b % EP_BEATS == EP_BEATS - 1:
            t = max(t, S + 1)
            ep_taken.append(t)
    w_first = max(2 + L, t + 1)      # the weight burst (command in cycle 2) follows
    if f & Flag.SPARSE:
        if compressed is None:
            raise ValueError("a SPARSE instruction needs its compressed weight stream")
        pattern = decode(bytes(compressed)).pattern
        lengths = [max(1, len(ks)) for ks in tile_schedule(pattern, cfg)]
        latency += SPARSE_EXTRA_STAGES
        macs = m * pattern.kept_weights
        counts_done = []             # the decoder starts in cycle S
        decode_timeline(cfg, pattern, first_beat=w_first - S, counts_done=counts_done)
        ready = tile_ready_sparse(cfg, pattern, S, counts_done, ep_taken)
    else:
        if f & Flag.B_BUF and f & Flag.B_T:
            bt = _TransposeTiming(C, C, k, first_read=1)
            w_last = [bt.tile(S + 1) for _ in range(nt)]
        elif f & Flag.B_BUF:         # one beat per cycle from cycle S + 1
            w_last = [S + (tj + 1) * k for tj in range(nt)]
        else:                        # memory beats from w_first, taken from cycle S + 1
            w_last = [max(w_first, S + 1) + (tj + 1) * k - 1 for tj in range(nt)]
        ready = tile_ready_dense(w_last, ep_taken)
    at = _TransposeTiming(R, C, k, first_read=head + 1)      # started with ``start``
    g = _tiles(cfg, m, k, lengths, S, ready, latency, macs, a_supply=at.tile)
    last = g.setup + g.load + g.compute      # the last reduction step issued
    rows_last = m - (ceil_div(m, R) - 1) * R
    # The last row is written in the done cycle.
    return last + latency + rows_last - 1 - head
