"""Interfaces shared by the accelerator's controller, execution units and on-chip buffers.

The accelerator (``rtl.accel``) is a controller that fetches instructions (``docs/isa.md``)
through one external memory port and hands each to the execution unit of its opcode. This
module defines the signatures they share; ``docs/accelerator.md`` describes the protocol.

* :func:`instr_layout` -- a decoded instruction: the 32-byte little-endian word of
  ``golden.isa`` reinterpreted as a struct (the layout *is* the byte format).
* :func:`mem_port_signature` -- the external memory port: byte-addressed read and write bursts.
* :func:`buf_read_signature`, :func:`buf_write_signature` -- access to the on-chip buffers
  (``rtl.buffers.OnChipBuffers``) by ``(buffer, row, word)``; a word is ``cols`` elements of one
  row, carried in 16-bit signed lanes whatever the buffer's element format.
* :func:`score_write_signature`, :func:`score_read_signature` -- the score buffer, stored token
  major (one word of ``max_heads`` uint8 lanes per token).
* :func:`exec_signature` -- what every execution unit exposes: ``start``/``instr``/``done``/
  ``error`` plus all of the ports above.

Bus rule: every execution unit drives all of its outgoing port members to zero while it is not
running an instruction, and ignores incoming ones. The top ORs the units' outgoing members
together (:func:`or_connect`), so exactly one unit (or the controller, while fetching) owns the
memory port and the buffers at a time.
"""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from golden.config import AccelConfig
from golden.isa import INSTR_BYTES, Buf, buffers

__all__ = [
    "LANE_BITS", "NUM_BUFS", "buf_read_signature", "buf_write_signature", "exec_signature",
    "instr_layout", "mem_beat_bytes", "mem_port_signature", "operand_layout", "or_connect",
    "preload_members",
    "row_bits", "row_words", "score_read_signature", "score_write_signature", "word_bits",
    "word_layout",
]

#: Lane width of buffer words on the buffer ports: holds int8, uint8 and int16 elements.
LANE_BITS = 16
#: Buffers reached through the buffer ports (``Buf.ACT0 .. Buf.PROB``); SCORE has its own.
NUM_BUFS = int(Buf.PROB) + 1


def operand_layout() -> data.StructLayout:
    """An operand word: ``col[15:0] | row[27:16] | buf[31:28]``."""
    return data.StructLayout({"col": unsigned(16), "row": unsigned(12), "buf": unsigned(4)})


def instr_layout() -> data.StructLayout:
    """The 32-byte instruction word, little-endian, as a struct (``golden.isa._INSTR``)."""
    opd = operand_layout()
    layout = data.StructLayout({
        "op": unsigned(8), "flags": unsigned(8),
        "m": unsigned(16), "k": unsigned(16), "n": unsigned(16),
        "dst": opd, "a": opd, "b": opd,
        "addr": unsigned(32), "addr2": unsigned(32), "imm": unsigned(32),
    })
    assert layout.size == 8 * INSTR_BYTES
    return layout


def mem_beat_bytes(cfg: AccelConfig) -> int:
    """Bytes per beat of the memory port: one weight word (``cols`` int8)."""
    return cfg.cols


def mem_port_signature(cfg: AccelConfig) -> wiring.Signature:
    """External memory port, seen from the accelerator (the initiator).

    ``rcmd`` requests a read burst of ``bytes`` bytes starting at byte ``addr`` (any alignment,
    ``bytes >= 1``); the memory answers with ``ceil(bytes / B)`` beats on ``rdata``
    (``B = mem_beat_bytes``), byte ``i`` of the burst in bits ``8*(i % B)`` upwards of beat
    ``i // B``, bytes past the end zero, ``last`` on the final beat. Bursts are answered in
    order. ``wcmd`` + ``wdata`` write a burst packed the same way; ``wresp`` carries one beat
    per completed write burst (the accelerator waits for it before finishing a STORE).
    """
    B = mem_beat_bytes(cfg)
    cmd = data.StructLayout({"addr": unsigned(32), "bytes": unsigned(32)})
    beat = data.StructLayout({"data": unsigned(8 * B), "last": unsigned(1)})
    return wiring.Signature({
        "rcmd": Out(stream.Signature(cmd)),
        "rdata": In(stream.Signature(beat)),
        "wcmd": Out(stream.Signature(cmd)),
        "wdata": Out(stream.Signature(beat)),
        "wresp": In(stream.Signature(unsigned(1))),
    })


def row_words(cfg: AccelConfig, buf: int) -> int:
    """Words per row of buffer ``buf`` (``ceil(columns / cols)``)."""
    return -(-buffers(cfg)[Buf(buf)].cols // cfg.cols)


def row_bits(cfg: AccelConfig) -> int:
    """Width of a buffer row index (all buffers have ``max_tokens`` rows or fewer)."""
    return bits_for(max(s.rows for s in buffers(cfg).values()) - 1)


def word_bits(cfg: AccelConfig) -> int:
    """Width of a word index within a row."""
    return bits_for(max(row_words(cfg, b) for b in range(NUM_BUFS)) - 1)


def word_layout(cfg: AccelConfig) -> data.ArrayLayout:
    """A buffer word on the ports: ``cols`` signed 16-bit lanes."""
    return data.ArrayLayout(signed(LANE_BITS), cfg.cols)


def buf_read_signature(cfg: AccelConfig) -> wiring.Signature:
    """A buffer read port (client side): ``en`` with ``buf``/``row``/``word`` reads one word;
    ``data`` holds it from the next cycle until the next read (sign- or zero-extended into
    16-bit lanes as the buffer's element format)."""
    return wiring.Signature({
        "en": Out(1),
        "buf": Out(unsigned(3)),
        "row": Out(unsigned(row_bits(cfg))),
        "word": Out(unsigned(word_bits(cfg))),
        "data": In(word_layout(cfg)),
    })


def buf_write_signature(cfg: AccelConfig) -> wiring.Signature:
    """A buffer write port (client side): ``en`` writes the lanes of ``data`` selected by
    ``mask`` (truncated to the buffer's element width) at ``buf``/``row``/``word``."""
    return wiring.Signature({
        "en": Out(1),
        "buf": Out(unsigned(3)),
        "row": Out(unsigned(row_bits(cfg))),
        "word": Out(unsigned(word_bits(cfg))),
        "mask": Out(unsigned(cfg.cols)),
        "data": Out(word_layout(cfg)),
    })


def score_write_signature(cfg: AccelConfig) -> wiring.Signature:
    """Score buffer write (client side): ``data`` into lane ``head`` of token ``token``'s word
    (``SCORE[head, token]`` of ``golden.isa``)."""
    return wiring.Signature({
        "en": Out(1),
        "token": Out(unsigned(row_bits(cfg))),
        "head": Out(unsigned(bits_for(cfg.max_heads - 1))),
        "data": Out(unsigned(8)),
    })


def score_read_signature(cfg: AccelConfig) -> wiring.Signature:
    """Score buffer read (client side): ``en`` with ``token``; ``data`` (all ``max_heads``
    lanes of that token) from the next cycle."""
    return wiring.Signature({
        "en": Out(1),
        "token": Out(unsigned(row_bits(cfg))),
        "data": In(data.ArrayLayout(unsigned(8), cfg.max_heads)),
    })


def exec_signature(cfg: AccelConfig) -> wiring.Signature:
    """An execution unit (unit side).

    ``start`` pulses for one cycle with ``instr`` (held stable until ``done``); ``done``
    pulses once when the instruction has completed (every result written to the buffers,
    a STORE's write acknowledged), with ``error`` in the same cycle if the unit found a
    defect while running (e.g. a corrupt compressed weight stream). A unit never hangs on a
    well-formed instruction that the controller has validated.

    ``mem_busy`` is high from the cycle after ``start`` (a unit with :func:`preload_members`:
    after its ``preload`` when preloaded) for as long as the unit may still issue a read command or
    take a read beat (``rdata.ready``) for the instruction; once it falls the unit leaves the
    memory's read channels alone until its next ``start`` (or ``preload``), so the controller
    may fetch the next instruction while the unit computes. It is 0 while idle.
    """
    return wiring.Signature({
        "start": In(1),
        "instr": In(instr_layout()),
        "done": Out(1),
        "error": Out(1),
        "mem_busy": Out(1),
        "mem": Out(mem_port_signature(cfg)),
        "rd0": Out(buf_read_signature(cfg)),
        "rd1": Out(buf_read_signature(cfg)),
        "wr": Out(buf_write_signature(cfg)),
        "score_wr": Out(score_write_signature(cfg)),
        "score_rd": Out(score_read_signature(cfg)),
    })


def preload_members() -> dict:
    """The members an execution unit adds to :func:`exec_signature` to take its next
    instruction early (:class:`rtl.exec_gemm.GemmUnit`, :class:`rtl.exec_row.RowUnit`):
    ``preload`` pulses with the instruction on ``preload_instr`` while another instruction
    may still hold the shared ``instr``; its ``start`` follows, or ``abort`` instead when the
    program failed before its turn."""
    return {"preload": In(1), "preload_instr": In(instr_layout()), "abort": In(1)}


def or_connect(m, target, sources):
    """Drive ``target`` (an interface with the signature of each of ``sources``, or its flip)
    from several ``sources``: members flowing out of the sources are ORed into ``target``,
    members flowing into them are broadcast from ``target``."""
    flat_t = list(target.signature.flatten(target))
    flat_s = [list(s.signature.flatten(s)) for s in sources]
    for i, (path, _, tval) in enumerate(flat_t):
        vals = [fs[i][2] for fs in flat_s]
        assert all(fs[i][0] == path for fs in flat_s)
        if flat_s[0][i][1].flow == Out:     # flows out of the sources into the target
            acc = vals[0].as_value() if hasattr(vals[0], "as_value") else vals[0]
            for v in vals[1:]:
                acc = acc | (v.as_value() if hasattr(v, "as_value") else v)
            m.d.comb += tval.eq(acc)
        else:
            for v in vals:
                m.d.comb += v.eq(tval)
