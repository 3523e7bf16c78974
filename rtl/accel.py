"""The accelerator: a controller that fetches, validates and executes a program (``docs/isa.md``).

:class:`Accelerator` is the whole instruction-driven engine: the on-chip buffers
(:class:`rtl.buffers.OnChipBuffers`), four execution units -- LOAD/STORE
(:class:`rtl.exec_move.MoveUnit`), GEMM with the block-sparse decoder
(:class:`rtl.exec_gemm.GemmUnit`), the row units SOFTMAX/LAYERNORM/GELU/ADD
(:class:`rtl.exec_row.RowUnit`) and TOKEN_SELECT (:class:`rtl.exec_token.TokenUnit`) -- and the
controller below, all behind one external memory port (``rtl.ports.mem_port_signature``).

Controller
----------
``start`` (one cycle, while idle) begins a program of at most ``prog_len`` instructions at byte
address ``prog_addr``. For each instruction the controller

1. fetches its 32 bytes with one read burst (the fetch engine: ``RECV``, ``LATCH``),
2. checks it in two cycles (``CHECK1`` computes the products, ``CHECK2`` compares) against every
   rule of ``golden.isa.validate_instr`` with ``mem_size`` as the external memory size,
3. pulses ``start`` of the execution unit of its opcode (a registered pulse, with the
   instruction on ``instr``) and waits for its ``done``.

Steps 1 and 2 of the next instruction overlap step 3: once the running unit lowers
``mem_busy`` (it will not use the memory's read channels again for this instruction), the fetch
engine reads and checks the next instruction, which is dispatched in the cycle of the unit's
``done`` (its unit sees ``start`` :data:`DISPATCH_CYCLES` later). Its check result only
counts once the running instruction has finished without error, so errors are reported in
program order; a fetch still in flight when the program ends is voided.

GEMM preload: when the running unit is a :class:`~rtl.exec_row.RowUnit` or a
:class:`~rtl.exec_token.TokenUnit` (neither writes external memory, and both are off the read
channels once the next instruction has been prefetched) and the prefetched instruction checked
clean as a GEMM whose ``B`` comes from memory (not ``B_BUF``), the controller pulses the
GemmUnit's ``preload`` (a register, once per prefetched instruction) with that instruction on
``preload_instr``: the engine command and the record and weight bursts run while the row unit
computes, and the GEMM's normal dispatch (``start``, :data:`DISPATCH_CYCLES` after the row
unit's ``done``) begins its activation reads and output writes. If the running instruction
fails while a preload is in flight, the controller pulses the GemmUnit's ``abort`` (the GEMM
runs to its end without writing a buffer, its bursts drained) and waits for its ``done``
(state ``ABORT``) before it reports the error and accepts a new program.

Record preload: when the running unit is not the MoveUnit (a LOAD reads memory to its end, a
STORE may be writing it) and the prefetched instruction checked clean as a GELU, LAYERNORM or
ADD, the controller pulses the RowUnit's ``preload`` (a register, once per prefetched
instruction, while ``preload_ready``: the unit's record reader is free and the running opcode
is another one) with that instruction on ``preload_instr``: its parameter record streams in
while the running instruction computes, and the instruction starts without reading it. If
the running instruction fails meanwhile, the controller pulses the RowUnit's ``abort`` and
waits until the record has been read and dropped (state ``ABORT_REC``).

The program ends at HALT (``done``), or with ``error``: ``error_index`` names the instruction
and ``error_code`` (:class:`ErrorCode`) the class of defect -- the field ``golden.isa`` names in
its :class:`~golden.isa.ProgramError`, or ``RUNTIME`` for a defect an execution unit found
while running (a corrupt compressed weight stream), or ``NO_HALT`` when ``prog_len``
instructions ran without a HALT. No program hangs: there are no branches, every instruction is
validated before it runs, and the units finish every validated instruction.

Between one unit's ``done`` and the next unit's ``start`` the controller spends
:data:`DISPATCH_CYCLES` cycles when the next instruction was prefetched, else
:func:`fetch_cycles` (the first instruction, or one after a LOAD, which reads memory to its
end).

Members
-------
mem : Out(mem_port_signature(cfg))
start : In(1)
prog_addr, prog_len, mem_size : In(32)
    Program address, instruction count bound, external memory size (bytes) for range checks.
busy, done, error : Out(1)
    ``done`` and ``error`` stay high from the end of a program until the next ``start``.
error_index : Out(16), error_code : Out(4)
index : Out(16)
    Index of the instruction being fetched or executed.
op : Out(8)
    Opcode of the instruction being executed (0 while fetching).
cycles : Out(32)
    Cycles since ``start``.
"""

from __future__ import annotations

import enum

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden.config import AccelConfig
from golden.isa import (
    ADD_RECORD_BYTES,
    GELU_RECORD_BYTES,
    INSTR_BYTES,
    LN_HEADER_BYTES,
    Buf,
    Flag,
    Op,
    buffers,
)

from .buffers import OnChipBuffers
from .checks import check_config, validating
from .fixedpoint_ops import div_const
from .ports import instr_layout, mem_beat_bytes, mem_port_signature, or_connect

__all__ = ["DISPATCH_CYCLES", "Accelerator", "ErrorCode", "InstrChecker", "error_code_of_field",
           "fetch_cycles"]


class ErrorCode(enum.IntEnum):
    """``error_code`` values: the class of the first defect of the failing instruction."""
    NONE = 0
    OPCODE = 1      # unknown opcode                        (golden field "opcode")
    FLAGS = 2       # unknown or contradictory flag bits    ("flags")
    FIELD = 3       # m, k, n or imm out of range           ("m", "k", "n", "imm")
    OPERAND = 4     # operand buffer, alignment or overflow ("dst.buf", "a.row", ...)
    OVERLAP = 5     # destination overlaps a source         ("dst")
    EXTERNAL = 6    # external range outside the memory     ("addr", "addr2")
    RUNTIME = 7     # found while running (corrupt stream)  ("data", run-time "addr")
    NO_HALT = 8     # prog_len instructions without HALT    ("program")


def error_code_of_field(field: str) -> ErrorCode:
    """The :class:`ErrorCode` of a ``golden.isa.ProgramError`` field (validation errors)."""
    if field in ("opcode", "flags"):
        return ErrorCode[field.upper()]
    if field in ("m", "k", "n", "imm"):
        return ErrorCode.FIELD
    if "." in field:
        return ErrorCode.OPERAND
    if field == "dst":
        return ErrorCode.OVERLAP
    if field in ("addr", "addr2"):
        return ErrorCode.EXTERNAL
    if field == "program":
        return ErrorCode.NO_HALT
    return ErrorCode.RUNTIME


#: Cycles from the end of one instruction to the ``start`` of the next one's unit when the
#: next one was prefetched (and checked) while the previous unit computed.
DISPATCH_CYCLES = 1


def fetch_cycles(cfg: AccelConfig, mem_latency: int) -> int:
    """Cycles from the end of one instruction to the ``start`` of the next one's unit when the
    next one is fetched only then (no stalls): the fetch command, the memory latency, the
    beats, the latch, two check cycles, the hand-over and the dispatch."""
    beats = -(-INSTR_BYTES // mem_beat_bytes(cfg))
    return 1 + mem_latency + beats + 4


# Allowed flag bits per opcode (golden.isa._FLAGS).
_FLAGS = {
    Op.LOAD: int(Flag.OUT16), Op.STORE: int(Flag.OUT16),
    Op.GEMM: int(Flag.SPARSE | Flag.B_BUF | Flag.B_T | Flag.A_U8 | Flag.OUT16),
    Op.SOFTMAX: int(Flag.SCORE),
}
_ACT = sum(1 << int(b) for b in (Buf.ACT0, Buf.ACT1, Buf.ACT2, Buf.ACT3))
_MOVABLE = _ACT | (1 << Buf.LOGIT) | (1 << Buf.PROB)


class Accelerator(wiring.Component):
    """The instruction-driven accelerator (see the module docstring)."""

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self._cfg = cfg
        from .exec_gemm import GemmUnit
        from .exec_move import MoveUnit
        from .exec_row import RowUnit
        from .exec_token import TokenUnit
        self.buffers = OnChipBuffers(cfg)
        self.units = {"move": MoveUnit(cfg), "gemm": GemmUnit(cfg), "row": RowUnit(cfg),
                      "token": TokenUnit(cfg)}
        super().__init__({
            "mem": Out(mem_port_signature(cfg)),
            "start": In(1),
            "prog_addr": In(32),
            "prog_len": In(32),
            "mem_size": In(32),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_index": Out(16),
            "error_code": Out(4),
            "index": Out(16),
            "op": Out(8),
            "cycles": Out(32),
        })

    @property
    def config(self) -> AccelConfig:
        return self._cfg

    _UNIT_OPS = {"move": (Op.LOAD, Op.STORE), "gemm": (Op.GEMM,),
                 "row": (Op.SOFTMAX, Op.GELU, Op.LAYERNORM, Op.ADD),
                 "token": (Op.TOKEN_SELECT,)}

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        B = mem_beat_bytes(cfg)
        m.submodules.buffers = bufs = self.buffers
        for name, unit in self.units.items():
            m.submodules[f"exec_{name}"] = unit

        # ---- fetch port (the controller's own share of the memory port) --------------------
        fetch = mem_port_signature(cfg).create(path=("fetch",))
        or_connect(m, self.mem, [fetch] + [u.mem for u in self.units.values()])
        for port in ("rd0", "rd1", "wr", "score_wr", "score_rd"):
            or_connect(m, getattr(bufs, port), [getattr(u, port) for u in self.units.values()])

        ins = Signal(instr_layout())           # the instruction being executed
        nxt = Signal(instr_layout())           # the fetched (or prefetched) instruction
        for unit in self.units.values():
            m.d.comb += unit.instr.eq(ins)
        gemm = self.units["gemm"]
        pl_pulse = Signal()                    # registered: GemmUnit.preload
        pl_issued = Signal()                   # the prefetched GEMM is preloading
        abort = Signal()                       # registered: GemmUnit.abort
        m.d.sync += [pl_pulse.eq(0), abort.eq(0)]
        m.d.comb += [gemm.preload.eq(pl_pulse), gemm.preload_instr.eq(nxt),
                     gemm.abort.eq(abort)]
        row = self.units["row"]
        rpl_pulse = Signal()                   # registered: RowUnit.preload
        rpl_issued = Signal()                  # the prefetched row instruction's record is read
        rabort = Signal()                      # registered: RowUnit.abort
        m.d.sync += [rpl_pulse.eq(0), rabort.eq(0)]
        m.d.comb += [row.preload.eq(rpl_pulse), row.preload_instr.eq(nxt),
                     row.abort.eq(rabort)]
        beats = -(-INSTR_BYTES // B)
        shreg = Signal(beats * 8 * B)
        pc = Signal(32)
        left = Signal(32)
        code = Signal(4)
        unit_start = Signal()                  # registered: the units see ``ins`` with it

        with m.If(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        m.submodules.checker = checker = InstrChecker(cfg)
        m.d.comb += [checker.instr.eq(nxt), checker.mem_size.eq(self.mem_size)]

        # ---- fetch engine: one instruction into ``nxt`` and its check code into ``nxt_code`` ---
        # ``fe_go`` (with ``fe_addr``) starts it while idle; ``fe_ready`` holds the result until
        # ``fe_take``. ``fe_flush`` voids a fetch in progress (the program ended meanwhile).
        fe_go = Signal()
        fe_addr = Signal(32)
        fe_addr_r = Signal(32)
        fe_take = Signal()
        fe_ready = Signal()
        fe_idle = Signal()
        fe_flush = Signal()
        fe_void = Signal()
        nxt_code = Signal(4)
        with m.If(fe_flush):
            m.d.sync += fe_void.eq(1)
        with m.FSM(name="fetch"):
            with m.State("IDLE"):
                m.d.comb += fe_idle.eq(1)
                m.d.sync += fe_void.eq(0)
                with m.If(fe_go):
                    m.d.comb += [fetch.rcmd.valid.eq(1), fetch.rcmd.payload.addr.eq(fe_addr),
                                 fetch.rcmd.payload.bytes.eq(INSTR_BYTES)]
                    m.d.sync += fe_addr_r.eq(fe_addr)
                    with m.If(fetch.rcmd.ready):
                        m.next = "RECV"
                    with m.Else():
                        m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [fetch.rcmd.valid.eq(1), fetch.rcmd.payload.addr.eq(fe_addr_r),
                             fetch.rcmd.payload.bytes.eq(INSTR_BYTES)]
                with m.If(fetch.rcmd.ready):
                    m.next = "RECV"
            with m.State("RECV"):
                m.d.comb += fetch.rdata.ready.eq(1)
                with m.If(fetch.rdata.valid):
                    m.d.sync += shreg.eq(Cat(shreg[8 * B:], fetch.rdata.payload.data))
                    with m.If(fetch.rdata.payload.last):
                        m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += nxt.eq(shreg[:8 * INSTR_BYTES])
                m.next = "CHECK1"
            with m.State("CHECK1"):
                m.next = "CHECK2"
            with m.State("CHECK2"):
                m.d.sync += nxt_code.eq(checker.code)
                m.next = "READY"
            with m.State("READY"):
                m.d.comb += fe_ready.eq(~fe_void)
                with m.If(fe_take | fe_void | fe_flush):
                    m.next = "IDLE"

        def dispatch():
            # ``nxt`` becomes the running instruction; its unit sees ``start`` next cycle
            return [ins.eq(nxt), unit_start.eq(1), pl_issued.eq(0), rpl_issued.eq(0)]

        unit_busy = 0
        for unit in self.units.values():
            unit_busy = unit_busy | unit.mem_busy
        for name, unit in self.units.items():
            sel = 0
            for op in self._UNIT_OPS[name]:
                sel = sel | (ins.op == op)
            m.d.comb += unit.start.eq(unit_start & sel)
        m.d.sync += unit_start.eq(0)

        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(self.prog_addr), left.eq(self.prog_len),
                                 self.index.eq(0), self.busy.eq(1), self.done.eq(0),
                                 self.error.eq(0), self.error_code.eq(0),
                                 self.error_index.eq(0), self.cycles.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                # Instruction ``index`` at ``pc``: prefetched during the previous one, or
                # fetched now.
                with m.If(left == 0):
                    m.d.sync += code.eq(ErrorCode.NO_HALT)
                    m.next = "FAIL"
                with m.Elif(fe_ready):
                    m.d.comb += fe_take.eq(1)
                    with m.If(nxt_code != 0):
                        m.d.sync += code.eq(nxt_code)
                        m.next = "FAIL"
                    with m.Elif(nxt.op == Op.HALT):
                        m.d.sync += [self.done.eq(1), self.busy.eq(0)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += dispatch()
                        m.next = "EXEC"
                with m.Else():
                    m.d.comb += [fe_go.eq(fe_idle), fe_addr.eq(pc)]
            with m.State("EXEC"):
                with m.If(unit_start):
                    m.d.sync += self.op.eq(ins.op)         # from the cycle after start
                # Prefetch the next instruction once the unit is off the memory's read
                # channels (not in its start cycle, when it has not yet raised mem_busy).
                with m.If(~unit_start & ~unit_busy & (left > 1)):
                    m.d.comb += [fe_go.eq(fe_idle), fe_addr.eq(pc + INSTR_BYTES)]
                done = 0
                err = 0
                for unit in self.units.values():
                    done = done | unit.done
                    err = err | (unit.done & unit.error)
                # GEMM preload: while a unit that neither writes memory nor reads it any more
                # (RowUnit, TokenUnit: their records are in, the next instruction is
                # prefetched) runs, a checked GEMM that reads B from memory starts its load.
                off_mem = 0
                for op in self._UNIT_OPS["row"] + self._UNIT_OPS["token"]:
                    off_mem = off_mem | (ins.op == op)
                nxt_bbuf = nxt.flags[Flag.B_BUF.bit_length() - 1]
                # the next instruction is prefetched and clean, the running one goes on
                nxt_clean = ~unit_start & ~done & fe_ready & (nxt_code == 0)
                with m.If(off_mem & nxt_clean & (nxt.op == Op.GEMM) & ~nxt_bbuf & ~pl_issued):
                    m.d.sync += [pl_pulse.eq(1), pl_issued.eq(1)]
                # Record preload: while a unit other than LOAD/STORE runs (the memory's read
                # channels are free once the next instruction is prefetched), a checked
                # GELU/LAYERNORM/ADD reads its parameter record (RowUnit.preload_ready: one of
                # those opcodes, the reader is free and the running opcode is another one).
                not_move = (ins.op != Op.LOAD) & (ins.op != Op.STORE)
                with m.If(not_move & nxt_clean & row.preload_ready & ~rpl_issued):
                    m.d.sync += [rpl_pulse.eq(1), rpl_issued.eq(1)]
                with m.If(done):
                    m.d.sync += self.op.eq(0)
                    with m.If(err):
                        m.d.sync += code.eq(ErrorCode.RUNTIME)
                        m.next = "FAIL"
                    with m.Else():
                        m.d.sync += [pc.eq(pc + INSTR_BYTES), left.eq(left - 1),
                                     self.index.eq(self.index + 1)]
                        with m.If(fe_ready & (nxt_code == 0) & (nxt.op != Op.HALT)):
                            # prefetched and clean: dispatched at once (its unit sees
                            # ``start`` in the next cycle)
                            m.d.comb += fe_take.eq(1)
                            m.d.sync += dispatch()
                        with m.Else():
                            m.next = "FETCH"
            with m.State("FAIL"):
                m.d.comb += fe_flush.eq(1)
                with m.If(pl_issued):
                    # A preloaded GEMM runs to its end without writing a buffer (its engine
                    # command and read bursts complete) before the program ends.
                    m.d.sync += [abort.eq(1), pl_issued.eq(0)]
                    m.next = "ABORT"
                with m.Elif(rpl_issued):
                    # A preloaded record is read to its end and dropped.
                    m.d.sync += [rabort.eq(1), rpl_issued.eq(0)]
                    m.next = "ABORT_REC"
                with m.Else():
                    m.d.sync += [self.error.eq(1), self.done.eq(1), self.busy.eq(0),
                                 self.error_code.eq(code), self.error_index.eq(self.index)]
                    m.next = "IDLE"
            with m.State("ABORT"):
                with m.If(gemm.done):
                    m.next = "FAIL"
            with m.State("ABORT_REC"):
                with m.If(~rabort & ~row.preloaded):
                    m.next = "FAIL"
        return m



class InstrChecker(wiring.Component):
    """Hardware form of ``golden.isa.validate_instr``: the :class:`ErrorCode` of an
    instruction (0 if it is well formed).

    Latency: ``code`` is valid :attr:`latency` (1) cycle after ``instr``/``mem_size`` settle
    (the products ``k * ceil(n / cols)`` and ``(m - 1) * imm`` are registered). The checks are
    prioritised as golden's, so a single defect yields the code of the field golden names.

    Members
    -------
    instr : In(instr_layout())
    mem_size : In(32)
    code : Out(4)
    """

    latency = 1

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self._cfg = cfg
        super().__init__({"instr": In(instr_layout()), "mem_size": In(32), "code": Out(4)})

    def elaborate(self, platform):
        m = Module()
        ins = self.instr
        cfg = self._cfg
        C = cfg.cols
        specs = buffers(cfg)
        op, f = ins.op, ins.flags
        mm, kk, nn, imm = ins.m, ins.k, ins.n, ins.imm
        is_op = {o: Signal(name=f"is_{o.name.lower()}") for o in Op}
        for o, s in is_op.items():
            m.d.comb += s.eq(op == o)
        known = 0
        for s in is_op.values():
            known = known | s
        allowed = Signal(8)
        for o, bits in _FLAGS.items():
            with m.If(is_op[o]):
                m.d.comb += allowed.eq(bits)
        gemm, ts, ld, st = is_op[Op.GEMM], is_op[Op.TOKEN_SELECT], is_op[Op.LOAD], is_op[Op.STORE]
        sparse, b_buf, b_t = f[0], f[1], f[2]
        a_u8, out16, score = f[3], f[4], f[5]

        # Stage 1 (registered): products and derived lengths.
        nt = Signal(16)        # ceil(n / cols)
        m.d.comb += nt.eq(div_const(nn + C - 1, C))
        wwords = Signal(32)
        pitch_span = Signal(48)
        m.d.sync += [wwords.eq(kk * nt), pitch_span.eq((mm - 1) * imm)]
        esize = Mux(f[4], 2, 1)
        ts_rows = Signal(16)
        m.d.comb += ts_rows.eq(imm[:16] + 1 + (imm < mm - 1))

        def rng(v, lo, hi):
            return (v < lo) | (v > hi)

        # Stage 2: comparisons.
        # In golden's order: unknown flags, field ranges, GEMM flag combinations, limits that
        # depend on several fields.
        flags_bad = (f & ~allowed) != 0
        combo_bad = gemm & ((b_t & ~b_buf) | (sparse & b_buf))
        lims_bad = Signal()
        extra_bad = Signal()
        with m.If(gemm):
            m.d.comb += [lims_bad.eq(rng(mm, 1, cfg.max_tokens) | rng(kk, 1, cfg.max_gemm_dim)
                                     | rng(nn, 1, cfg.max_gemm_dim)),
                         extra_bad.eq((wwords > cfg.weight_buffer_depth)
                                      | (sparse & (imm < 24)))]
        with m.Elif(ts):
            m.d.comb += [lims_bad.eq(rng(mm, 1, cfg.max_tokens) | rng(nn, 1, cfg.max_dim)
                                     | rng(kk, 1, cfg.max_heads)),
                         extra_bad.eq((mm < 2) | (imm < 1) | (imm > mm - 1))]
        with m.Elif(~is_op[Op.HALT]):
            m.d.comb += [lims_bad.eq(rng(mm, 1, 1 << 12) | (nn < 1)),
                         extra_bad.eq((is_op[Op.SOFTMAX] & (nn > cfg.max_tokens))
                                      | (is_op[Op.SOFTMAX] & score & (imm >= cfg.max_heads))
                                      | (is_op[Op.LAYERNORM] & (nn > cfg.max_dim)))]

        # Operands: (used, allowed-buffer mask, rows, cols).
        opd = {}
        b_rows = Mux(b_t, nn, kk)
        b_cols = Mux(b_t, kk, nn)
        unit_rows = is_op[Op.SOFTMAX] | is_op[Op.GELU] | is_op[Op.LAYERNORM]
        act_u, prob_u, logit_u = Const(_ACT, 8), Const(1 << Buf.PROB, 8), Const(1 << Buf.LOGIT, 8)
        opd["dst"] = (ld | gemm | unit_rows | is_op[Op.ADD] | ts,
                      Mux(ld, _MOVABLE, Mux(gemm & out16, logit_u,
                                            Mux(is_op[Op.SOFTMAX], prob_u, act_u))),
                      Mux(ts, ts_rows, mm), nn)
        opd["a"] = (st | gemm | unit_rows | is_op[Op.ADD] | ts,
                    Mux(st, _MOVABLE, Mux(gemm & a_u8, prob_u,
                                          Mux(is_op[Op.SOFTMAX], logit_u, act_u))),
                    mm, Mux(gemm, kk, nn))
        opd["b"] = ((gemm & b_buf) | is_op[Op.ADD], act_u,
                    Mux(gemm, b_rows, mm), Mux(gemm, b_cols, nn))
        operand_bad = 0
        regions = {}
        for name, (used, mask, rows, cols) in opd.items():
            o = getattr(ins, name)
            buf_ok = Signal(name=f"{name}_buf_ok")
            brows = Signal(16, name=f"{name}_buf_rows")
            bcols = Signal(16, name=f"{name}_buf_cols")
            with m.Switch(o.buf):
                for b, spec in specs.items():
                    with m.Case(int(b)):
                        m.d.comb += [buf_ok.eq((mask >> int(b))[0]),
                                     brows.eq(spec.rows), bcols.eq(spec.cols)]
            bad = (~buf_ok | (o.col % C != 0) | (o.row + rows > brows)
                   | (o.col + cols > bcols))
            operand_bad = operand_bad | (used & bad)
            regions[name] = (used, o, rows, cols)

        # LOAD/STORE: W16 matches the buffer, the pitch holds a row.
        ls_buf = Mux(ld, ins.dst.buf, ins.a.buf)
        w16_bad = (ld | st) & ((ls_buf == Buf.LOGIT) != f[4])
        pitch_bad = (ld | st) & (imm < nn * esize)

        # Overlap of the destination with a source in the same buffer.
        overlap = 0
        d_used, d, d_rows, d_cols = regions["dst"]
        for name in ("a", "b"):
            used, o, rows, cols = regions[name]
            overlap = overlap | (d_used & used & (o.buf == d.buf)
                                 & (o.row < d.row + d_rows) & (d.row < o.row + rows)
                                 & (o.col < d.col + d_cols) & (d.col < o.col + cols))

        # External ranges.
        ep_bytes = 7 * C * nt
        ext_end = Signal(48)
        ext2_end = Signal(48)
        with m.Switch(op):
            with m.Case(Op.LOAD, Op.STORE):
                m.d.comb += ext_end.eq(ins.addr + pitch_span + nn * esize)
            with m.Case(Op.GEMM):
                m.d.comb += [ext_end.eq(Mux(sparse, ins.addr + imm,
                                            Mux(b_buf, 0, ins.addr + wwords * C))),
                             ext2_end.eq(ins.addr2 + ep_bytes)]
            with m.Case(Op.GELU):
                m.d.comb += ext_end.eq(ins.addr + GELU_RECORD_BYTES)
            with m.Case(Op.LAYERNORM):
                m.d.comb += ext_end.eq(ins.addr + LN_HEADER_BYTES + 6 * nn)
            with m.Case(Op.ADD):
                m.d.comb += ext_end.eq(ins.addr + ADD_RECORD_BYTES)
        ext_bad = (ext_end > self.mem_size) | (ext2_end > self.mem_size)

        code = self.code
        with m.If(~known):
            m.d.comb += code.eq(ErrorCode.OPCODE)
        with m.Elif(flags_bad):
            m.d.comb += code.eq(ErrorCode.FLAGS)
        with m.Elif(is_op[Op.HALT]):
            m.d.comb += code.eq(0)
        with m.Elif(lims_bad):
            m.d.comb += code.eq(ErrorCode.FIELD)
        with m.Elif(combo_bad):
            m.d.comb += code.eq(ErrorCode.FLAGS)
        with m.Elif(extra_bad):
            m.d.comb += code.eq(ErrorCode.FIELD)
        with m.Elif(operand_bad):
            m.d.comb += code.eq(ErrorCode.OPERAND)
        with m.Elif(w16_bad):
            m.d.comb += code.eq(ErrorCode.FLAGS)
        with m.Elif(pitch_bad):
            m.d.comb += code.eq(ErrorCode.FIELD)
        with m.Elif(overlap):
            m.d.comb += code.eq(ErrorCode.OVERLAP)
        with m.Elif(ext_bad):
            m.d.comb += code.eq(ErrorCode.EXTERNAL)
        with m.Else():
            m.d.comb += code.eq(0)
        return m
