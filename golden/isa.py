"""Instruction set of the accelerator: opcodes, on-chip buffers, binary encoding, validation.

The full specification (field layout, per-opcode semantics, parameter records in external
memory, requirements on the RTL) is ``docs/isa.md``. In short:

* An instruction is one fixed-width word of :data:`INSTR_BYTES` (32) bytes, little-endian::

      byte  0      opcode (u8)          byte  1  flags (u8)
      bytes 2..7   m, k, n (u16 each)
      bytes 8..19  dst, a, b operands (u32 each: buf[31:28] | row[27:16] | col[15:0])
      bytes 20..27 addr, addr2 (u32 external byte addresses)
      bytes 28..31 imm (u32)

* On-chip buffers (:func:`buffers`) are 2-D arrays of elements, ``rows`` tokens by ``cols``
  channels, addressed by (buffer, row, column): four int8 activation banks, a 16-bit logit
  buffer (softmax input, classifier logits), a uint8 probability buffer and the score buffer
  (one row of CLS-row probabilities per head).
* Weights, epilogue parameters and unit constants stay in external memory; an instruction
  names their byte address, and the engine streams them in through the one memory port.

This module also holds the semantics of the one operation that no unit module defines yet:
:func:`gemm_ext` (the GEMM engine with an unsigned-A and a 16-bit-output option). Everything
else is a golden unit function (the residual add, :func:`add_int` and :class:`AddParams`, is
:mod:`golden.add`, re-exported here).

Trade-off: a wide fixed-format word wastes bits on short instructions (HALT) but decodes with
no state and no variable-length fetch; an encoder block needs ``9 + 3 * heads`` instructions
(one more with token pruning), so the program is small next to the weights.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from .add import AddParams, add_int
from .config import AccelConfig
from .fixedpoint import check_int_array
from .gelu import GeluParams
from .gemm import OUT16_BITS, EpilogueParams, gemm
from .layernorm import LnParams

__all__ = [
    "ADD_RECORD_BYTES", "EXT_ADDR_LIMIT", "GELU_RECORD_BYTES", "INSTR_BYTES", "LN_HEADER_BYTES",
    "OUT16_BITS",
    "AddParams", "Buf", "BufferSpec", "Flag", "Instr", "Op", "Operand", "ProgramError",
    "add_int", "buffers", "decode_instr", "decode_program", "dense_weight_bytes",
    "encode_program", "epilogue_bytes", "ext_ranges", "gemm_ext", "ln_record_bytes",
    "operand_shapes", "out_rows_token_select", "pack_add", "validate_program",
    "pack_dense_weights", "pack_epilogue", "pack_gelu", "pack_ln", "unpack_add",
    "unpack_dense_weights", "unpack_epilogue", "unpack_gelu", "unpack_ln", "validate_instr",
]

INSTR_BYTES = 32
_INSTR = struct.Struct("<BBHHHIIIIII")
assert _INSTR.size == INSTR_BYTES
#: External byte addresses are 32-bit.
EXT_ADDR_LIMIT = 1 << 32
GELU_RECORD_BYTES = 16
ADD_RECORD_BYTES = 8
LN_HEADER_BYTES = 8


class Op(enum.IntEnum):
    """Opcodes (byte 0 of an instruction)."""
    LOAD = 0x01
    STORE = 0x02
    GEMM = 0x03
    SOFTMAX = 0x04
    GELU = 0x05
    LAYERNORM = 0x06
    ADD = 0x07
    TOKEN_SELECT = 0x08
    HALT = 0x0F


class Flag(enum.IntFlag):
    """Flag bits (byte 1). GEMM uses all but ``SCORE``; LOAD/STORE use ``W16``;
    SOFTMAX uses ``SCORE``."""
    SPARSE = 0x01   # GEMM: weights at addr are a compressed block-sparse stream (imm bytes)
    B_BUF = 0x02    # GEMM: B comes from an activation bank (operand b), not external memory
    B_T = 0x04      # GEMM: with B_BUF, operand b holds B transposed (n rows x k columns)
    A_U8 = 0x08     # GEMM: A is unsigned 8-bit (softmax probabilities)
    OUT16 = 0x10    # GEMM: the epilogue saturates to OUT16_BITS; LOAD/STORE (W16): 2-byte elements
    SCORE = 0x20    # SOFTMAX: copy output row 0 into score-buffer row imm


W16 = Flag.OUT16
_FLAGS = {
    Op.LOAD: W16, Op.STORE: W16,
    Op.GEMM: Flag.SPARSE | Flag.B_BUF | Flag.B_T | Flag.A_U8 | Flag.OUT16,
    Op.SOFTMAX: Flag.SCORE,
}


class Buf(enum.IntEnum):
    """On-chip buffer identifiers (bits 31..28 of an operand)."""
    ACT0 = 0
    ACT1 = 1
    ACT2 = 2
    ACT3 = 3
    LOGIT = 4
    PROB = 5
    SCORE = 6


ACT_BANKS = (Buf.ACT0, Buf.ACT1, Buf.ACT2, Buf.ACT3)


class BufferSpec(NamedTuple):
    name: str
    rows: int
    cols: int
    bits: int
    signed: bool


def buffers(cfg: AccelConfig) -> dict[Buf, BufferSpec]:
    """Shapes and element formats of the on-chip buffers of ``cfg``."""
    act_cols = max(3 * cfg.max_dim, cfg.max_hidden)
    t = cfg.max_tokens
    out = {b: BufferSpec(b.name, t, act_cols, cfg.act_width, True) for b in ACT_BANKS}
    out[Buf.LOGIT] = BufferSpec("LOGIT", t, t, OUT16_BITS, True)
    out[Buf.PROB] = BufferSpec("PROB", t, t, 8, False)
    out[Buf.SCORE] = BufferSpec("SCORE", cfg.max_heads, t, 8, False)
    return out


class Operand(NamedTuple):
    """A buffer region origin: ``(buf, row, col)``."""
    buf: int
    row: int = 0
    col: int = 0

    def pack(self) -> int:
        return (int(self.buf) << 28) | (int(self.row) << 16) | int(self.col)

    @classmethod
    def unpack(cls, word: int) -> "Operand":
        return cls((word >> 28) & 0xF, (word >> 16) & 0xFFF, word & 0xFFFF)


_NONE = Operand(0, 0, 0)


@dataclass(frozen=True)
class Instr:
    """One decoded instruction (see ``docs/isa.md`` for the meaning of each field per opcode)."""
    op: int
    flags: int = 0
    m: int = 0
    k: int = 0
    n: int = 0
    dst: Operand = _NONE
    a: Operand = _NONE
    b: Operand = _NONE
    addr: int = 0
    addr2: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        for name, value, bits in (("op", self.op, 8), ("flags", self.flags, 8),
                                  ("m", self.m, 16), ("k", self.k, 16), ("n", self.n, 16),
                                  ("addr", self.addr, 32), ("addr2", self.addr2, 32),
                                  ("imm", self.imm, 32)):
            if not 0 <= int(value) < (1 << bits):
                raise ValueError(f"{name} must be in the range [0, {(1 << bits) - 1}], "
                                 f"not {value}")
        for name, opd in (("dst", self.dst), ("a", self.a), ("b", self.b)):
            for fname, value, bits in (("buf", opd.buf, 4), ("row", opd.row, 12),
                                       ("col", opd.col, 16)):
                if not 0 <= int(value) < (1 << bits):
                    raise ValueError(f"{name}.{fname} must be in the range "
                                     f"[0, {(1 << bits) - 1}], not {value}")
        return _INSTR.pack(int(self.op), int(self.flags), self.m, self.k, self.n,
                           self.dst.pack(), self.a.pack(), self.b.pack(), self.addr,
                           self.addr2, self.imm)

    @property
    def name(self) -> str:
        try:
            return Op(self.op).name
        except ValueError:
            return f"0x{self.op:02x}"

    def __str__(self):
        def opd(o):
            return f"{Buf(o.buf).name if o.buf in Buf._value2member_map_ else o.buf}" \
                   f"[{o.row},{o.col}]"
        if self.op not in Op._value2member_map_:
            return f"{self.name} (unknown opcode)"
        parts = [self.name, f"m={self.m}", f"k={self.k}", f"n={self.n}"]
        parts += [f"{f}={opd(getattr(self, f))}" for f in operand_shapes(self)]
        parts += [f"{f}=0x{v:x}" for f, v in (("addr", self.addr), ("addr2", self.addr2)) if v]
        if self.imm:
            parts.append(f"imm={self.imm}")
        if self.flags:
            names = [fl.name for fl in Flag if self.flags & fl and fl.name]
            parts.append("flags=" + "|".join(names))
        return " ".join(parts)

    def replace(self, **kw) -> "Instr":
        return replace(self, **kw)


def decode_instr(word: bytes) -> Instr:
    """Decode one 32-byte word (no validation beyond its length)."""
    if len(word) != INSTR_BYTES:
        raise ValueError(f"an instruction is {INSTR_BYTES} bytes, not {len(word)}")
    op, flags, m, k, n, dst, a, b, addr, addr2, imm = _INSTR.unpack(bytes(word))
    return Instr(op, flags, m, k, n, Operand.unpack(dst), Operand.unpack(a), Operand.unpack(b),
                 addr, addr2, imm)


class ProgramError(ValueError):
    """A malformed instruction: ``index`` is its position, ``field`` the offending field."""

    def __init__(self, index: int, field: str, message: str, name: str = "?"):
        self.index, self.field = index, field
        super().__init__(f"instruction {index} ({name}): {field}: {message}")


# -- external-memory records -------------------------------------------------------------------

def dense_weight_bytes(cfg: AccelConfig, k: int, n: int) -> int:
    """Bytes of a dense ``k x n`` weight matrix in engine order (``weight_words * cols``)."""
    return cfg.weight_words(k, n) * cfg.cols


def pack_dense_weights(cfg: AccelConfig, b) -> bytes:
    """``B`` (``k x n`` int8) in the GEMM engine's beat order: ``for tj: for kk:`` one word of
    ``cols`` int8 weights ``B[kk, tj*cols : (tj+1)*cols]`` (lanes past ``n`` are zero)."""
    b = check_int_array("b", b, cfg.weight_width)
    k, n = b.shape
    c = cfg.cols
    bp = np.pad(b, ((0, 0), (0, -n % c)))
    words = bp.reshape(k, -1, c).transpose(1, 0, 2)
    return words.astype(np.int8).tobytes()


def unpack_dense_weights(cfg: AccelConfig, data: bytes, k: int, n: int) -> np.ndarray:
    c = cfg.cols
    nt = -(-n // c)
    arr = np.frombuffer(bytes(data), np.int8).astype(np.int64).reshape(nt, k, c)
    return arr.transpose(1, 0, 2).reshape(k, nt * c)[:, :n]


def epilogue_bytes(cfg: AccelConfig, n: int) -> int:
    return -(-n // cfg.cols) * cfg.cols * 7


def pack_epilogue(cfg: AccelConfig, ep: EpilogueParams) -> bytes:
    """Per column tile: ``cols`` x bias (i32), ``cols`` x mult (u16), ``cols`` x shift (u8)."""
    c = cfg.cols
    n = ep.bias.size
    pad = -n % c
    out = bytearray()
    for tj in range((n + pad) // c):
        sl = slice(tj * c, (tj + 1) * c)
        out += np.pad(ep.bias, (0, pad))[sl].astype("<i4").tobytes()
        out += np.pad(ep.mult, (0, pad))[sl].astype("<u2").tobytes()
        out += np.pad(ep.shift, (0, pad))[sl].astype("u1").tobytes()
    return bytes(out)


def unpack_epilogue(cfg: AccelConfig, data: bytes, n: int) -> EpilogueParams:
    c = cfg.cols
    bias, mult, shift = [], [], []
    for tj in range(-(-n // c)):
        rec = bytes(data[tj * 7 * c:(tj + 1) * 7 * c])
        bias.append(np.frombuffer(rec[:4 * c], "<i4"))
        mult.append(np.frombuffer(rec[4 * c:6 * c], "<u2"))
        shift.append(np.frombuffer(rec[6 * c:], "u1"))
    cat = [np.concatenate(x).astype(np.int64)[:n] for x in (bias, mult, shift)]
    return EpilogueParams(cfg, n, *cat)


def ln_record_bytes(n: int) -> int:
    return LN_HEADER_BYTES + 6 * n


def pack_ln(p: LnParams) -> bytes:
    """mult (u16), shift (u8), 0 (u8), eps_int (u32), gamma (i16 x n), beta (i32 x n)."""
    return (struct.pack("<HBBI", p.mult, p.shift, 0, p.eps_int)
            + p.gamma.astype("<i2").tobytes() + p.beta.astype("<i4").tobytes())


def unpack_ln(data: bytes, n: int, mult_width: int) -> LnParams:
    mult, shift, _, eps = struct.unpack("<HBBI", bytes(data[:LN_HEADER_BYTES]))
    g = np.frombuffer(bytes(data[8:8 + 2 * n]), "<i2").astype(np.int64)
    b = np.frombuffer(bytes(data[8 + 2 * n:8 + 6 * n]), "<i4").astype(np.int64)
    return LnParams(g, b, mult, shift, eps, mult_width=mult_width)


def pack_gelu(p: GeluParams) -> bytes:
    """b_int, c_int, one_int (i32 each), mult (u16), shift (u8), 0 (u8)."""
    return struct.pack("<iiiHBB", p.b_int, p.c_int, p.one_int, p.mult, p.shift, 0)


def unpack_gelu(data: bytes, in_bits: int, mult_width: int) -> GeluParams:
    b, c, one, mult, shift, _ = struct.unpack("<iiiHBB", bytes(data[:GELU_RECORD_BYTES]))
    return GeluParams(b, c, one, mult, shift, in_bits=in_bits, mult_width=mult_width)


def pack_add(p: AddParams) -> bytes:
    """ma (u16), mb (u16), shift (u8), three zero bytes."""
    return struct.pack("<HHB3x", p.ma, p.mb, p.shift)


def unpack_add(data: bytes) -> AddParams:
    return AddParams(*struct.unpack("<HHB3x", bytes(data[:ADD_RECORD_BYTES])))


# -- semantics of operations without a unit module -----------------------------------------

def gemm_ext(cfg: AccelConfig, a, b, ep: EpilogueParams, *, a_unsigned: bool = False,
             out_bits: int | None = None) -> np.ndarray:
    """The GEMM engine extended as ``docs/isa.md`` requires: ``A`` may be unsigned 8-bit
    (softmax probabilities) and the epilogue may saturate to 16 bits (attention logits,
    classifier logits); ``B`` may come from an activation bank, so the weight buffer's capacity
    does not apply. With neither option this is exactly :func:`golden.gemm.gemm`."""
    return gemm(cfg, a, b, ep, a_unsigned=a_unsigned, out_bits=out_bits, weight_buffer=False)


# -- validation ------------------------------------------------------------------------------

def _region(spec: BufferSpec, opd: Operand, rows: int, cols: int):
    return (opd.row, opd.row + rows, opd.col, opd.col + cols)


def _overlap(r1, r2) -> bool:
    return r1[0] < r2[1] and r2[0] < r1[1] and r1[2] < r2[3] and r2[2] < r1[3]


def out_rows_token_select(n_tokens: int, keep: int) -> int:
    """Rows written by TOKEN_SELECT: CLS, ``keep`` tokens and a package token if any pruned."""
    return keep + 1 + (1 if keep < n_tokens - 1 else 0)


def operand_shapes(ins: Instr) -> dict:
    """``{"dst"|"a"|"b": (rows, cols)}`` of the regions an instruction touches."""
    op, f, m, k, n = ins.op, Flag(ins.flags & 0xFF), ins.m, ins.k, ins.n
    if op == Op.LOAD:
        return {"dst": (m, n)}
    if op == Op.STORE:
        return {"a": (m, n)}
    if op == Op.GEMM:
        d = {"dst": (m, n), "a": (m, k)}
        if f & Flag.B_BUF:
            d["b"] = (n, k) if f & Flag.B_T else (k, n)
        return d
    if op in (Op.SOFTMAX, Op.GELU, Op.LAYERNORM):
        return {"dst": (m, n), "a": (m, n)}
    if op == Op.ADD:
        return {"dst": (m, n), "a": (m, n), "b": (m, n)}
    if op == Op.TOKEN_SELECT:
        keep = ins.imm
        return {"dst": (out_rows_token_select(m, keep) if 1 <= keep < m else m, n),
                "a": (m, n)}
    return {}


def ext_ranges(cfg: AccelConfig, ins: Instr) -> list[tuple[str, int, int]]:
    """External byte ranges ``(field, start, length)`` an instruction reads or writes."""
    op, f = ins.op, Flag(ins.flags & 0xFF)
    if op in (Op.LOAD, Op.STORE):
        size = 2 if f & W16 else 1
        if ins.m == 0:
            return []
        return [("addr", ins.addr, (ins.m - 1) * ins.imm + ins.n * size)]
    if op == Op.GEMM:
        out = [("addr2", ins.addr2, epilogue_bytes(cfg, ins.n))]
        if f & Flag.SPARSE:
            out.append(("addr", ins.addr, ins.imm))
        elif not f & Flag.B_BUF:
            out.append(("addr", ins.addr, dense_weight_bytes(cfg, ins.k, ins.n)))
        return out
    if op == Op.GELU:
        return [("addr", ins.addr, GELU_RECORD_BYTES)]
    if op == Op.LAYERNORM:
        return [("addr", ins.addr, ln_record_bytes(ins.n))]
    if op == Op.ADD:
        return [("addr", ins.addr, ADD_RECORD_BYTES)]
    return []


def validate_instr(cfg: AccelConfig, ins: Instr, index: int = 0,
                   mem_size: int | None = None) -> None:
    """Raise :class:`ProgramError` naming ``index`` and the field unless ``ins`` is well formed:
    known opcode and flags, dimensions in range, every buffer region inside its buffer and of
    the element format the opcode needs, no destination overlapping a source, every external
    range inside ``[0, mem_size)`` (or the 32-bit address space)."""
    name = ins.name

    def err(field, msg):
        raise ProgramError(index, field, msg, name)

    if ins.op not in Op._value2member_map_:
        err("opcode", f"unknown opcode 0x{ins.op:02x}")
    op = Op(ins.op)
    allowed = _FLAGS.get(op, Flag(0))
    if ins.flags & ~int(allowed):
        err("flags", f"unknown flag bits 0x{ins.flags & ~int(allowed):02x} for {op.name}")
    if op == Op.HALT:
        return
    f = Flag(ins.flags)
    bufs = buffers(cfg)
    # Dimensions.
    if op == Op.GEMM:
        lims = (("m", ins.m, cfg.max_tokens), ("k", ins.k, cfg.max_gemm_dim),
                ("n", ins.n, cfg.max_gemm_dim))
    elif op == Op.TOKEN_SELECT:
        lims = (("m", ins.m, cfg.max_tokens), ("n", ins.n, cfg.max_dim),
                ("k", ins.k, cfg.max_heads))
    else:
        lims = (("m", ins.m, 1 << 12), ("n", ins.n, 1 << 16))
    for field, value, hi in lims:
        if not 1 <= value <= hi:
            err(field, f"must be in the range [1, {hi}], not {value}")
    # Operand formats.
    need = {}
    act = set(ACT_BANKS)
    movable = set(Buf) - {Buf.SCORE}       # SCORE is written by SOFTMAX and read by TOKEN_SELECT
    if op == Op.LOAD:
        need["dst"] = movable
    elif op == Op.STORE:
        need["a"] = movable
    elif op == Op.GEMM:
        need["a"] = {Buf.PROB} if f & Flag.A_U8 else act
        need["dst"] = {Buf.LOGIT} if f & Flag.OUT16 else act
        if f & Flag.B_BUF:
            need["b"] = act
            if f & Flag.SPARSE:
                err("flags", "SPARSE and B_BUF exclude each other")
        elif f & Flag.B_T:
            err("flags", "B_T needs B_BUF")
        if cfg.weight_words(ins.k, ins.n) > cfg.weight_buffer_depth:
            err("n", f"weights of {ins.k} x {ins.n} need {cfg.weight_words(ins.k, ins.n)} "
                     f"words of the weight buffer; weight_buffer_depth is "
                     f"{cfg.weight_buffer_depth}")
        if f & Flag.SPARSE and ins.imm < 24:
            err("imm", f"compressed weight length must be at least 24 bytes, not {ins.imm}")
    elif op == Op.SOFTMAX:
        need = {"a": {Buf.LOGIT}, "dst": {Buf.PROB}}
        if ins.n > cfg.max_tokens:
            err("n", f"softmax rows must be in the range [1, {cfg.max_tokens}], not {ins.n}")
        if f & Flag.SCORE and not 0 <= ins.imm < bufs[Buf.SCORE].rows:
            err("imm", f"score row must be in the range [0, {bufs[Buf.SCORE].rows - 1}], "
                       f"not {ins.imm}")
    elif op == Op.LAYERNORM:
        need = {"a": act, "dst": act}
        if ins.n > cfg.max_dim:
            err("n", f"LayerNorm rows must be in the range [1, {cfg.max_dim}], not {ins.n}")
    elif op in (Op.GELU,):
        need = {"a": act, "dst": act}
    elif op == Op.ADD:
        need = {"a": act, "b": act, "dst": act}
    elif op == Op.TOKEN_SELECT:
        need = {"a": act, "dst": act}
        if ins.m < 2:
            err("m", f"token count must be in the range [2, {cfg.max_tokens}], not {ins.m}")
        if not 1 <= ins.imm <= ins.m - 1:
            err("imm", f"keep count must be in the range [1, {ins.m - 1}], not {ins.imm}")
    shapes = operand_shapes(ins)
    regions = {}
    for field, (rows, cols) in shapes.items():
        opd = getattr(ins, field)
        if opd.buf not in need[field]:
            allowed_names = ", ".join(Buf(b).name for b in sorted(need[field]))
            got = Buf(opd.buf).name if opd.buf in Buf._value2member_map_ else str(opd.buf)
            err(f"{field}.buf", f"must be one of {allowed_names}, not {got}")
        spec = bufs[Buf(opd.buf)]
        if opd.col % cfg.cols:
            err(f"{field}.col", f"column {opd.col} of buffer {spec.name} must be a multiple "
                                f"of cols ({cfg.cols})")
        if opd.row + rows > spec.rows:
            err(f"{field}.row", f"rows [{opd.row}, {opd.row + rows}) overflow buffer "
                                f"{spec.name} of {spec.rows} rows")
        if opd.col + cols > spec.cols:
            err(f"{field}.col", f"columns [{opd.col}, {opd.col + cols}) overflow buffer "
                                f"{spec.name} of {spec.cols} columns")
        regions[field] = (opd.buf, _region(spec, opd, rows, cols))
    if op in (Op.LOAD, Op.STORE):
        field = "dst" if op == Op.LOAD else "a"
        wide = bufs[Buf(getattr(ins, field).buf)].bits > 8
        if bool(f & W16) != wide:
            err("flags", f"W16 must be {'set' if wide else 'clear'} for buffer "
                         f"{Buf(getattr(ins, field).buf).name}")
        if ins.imm < ins.n * (2 if wide else 1):
            err("imm", f"row pitch {ins.imm} is shorter than a row of {ins.n} elements")
    if "dst" in regions:
        for field in ("a", "b"):
            if field in regions and regions[field][0] == regions["dst"][0] \
                    and _overlap(regions[field][1], regions["dst"][1]):
                err("dst", f"destination region overlaps source operand {field}")
    limit = EXT_ADDR_LIMIT if mem_size is None else mem_size
    for field, start, length in ext_ranges(cfg, ins):
        if start + length > limit:
            err(field, f"external range [0x{start:x}, 0x{start + length:x}) is outside memory "
                       f"of {limit} bytes")


def encode_program(program) -> bytes:
    """Concatenate the 32-byte words of ``program``."""
    return b"".join(ins.encode() for ins in program)


def decode_program(data: bytes, cfg: AccelConfig, mem_size: int | None = None) -> list[Instr]:
    """Decode and validate a program; it must end with HALT (its last word)."""
    if len(data) % INSTR_BYTES:
        raise ValueError(f"program length {len(data)} is not a multiple of {INSTR_BYTES} bytes")
    prog = [decode_instr(data[i:i + INSTR_BYTES]) for i in range(0, len(data), INSTR_BYTES)]
    validate_program(prog, cfg, mem_size)
    return prog


def validate_program(program, cfg: AccelConfig, mem_size: int | None = None) -> None:
    for i, ins in enumerate(program):
        validate_instr(cfg, ins, i, mem_size)
        if ins.op == Op.HALT and i != len(program) - 1:
            raise ProgramError(i, "opcode", "HALT before the end of the program", "HALT")
    if not program or program[-1].op != Op.HALT:
        raise ProgramError(len(program), "opcode", "the program does not end with HALT", "-")
