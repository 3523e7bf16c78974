"""On-chip buffers of the accelerator: four activation banks, LOGIT, PROB and SCORE.

One :class:`OnChipBuffers` holds every buffer of ``golden.isa.buffers(cfg)`` as an
``amaranth.lib.memory.Memory``. Buffers ``ACT0 .. PROB`` store one row (token) as
``row_words(cfg, buf)`` words of ``cols`` elements in their own element format (int8, int16,
uint8); ``SCORE`` is stored token major, one word of ``max_heads`` uint8 lanes per token.

Ports (``rtl.ports``): two read ports ``rd0``/``rd1`` and one write port ``wr`` that reach any
of ``ACT0 .. PROB`` by ``(buf, row, word)``, plus ``score_wr``/``score_rd``. Each buffer has
two read ports of its own (so both operands of a GEMM or an ADD may sit in the same bank) and
one write port with per-lane enables (so a row whose length is not a multiple of ``cols``
leaves the neighbouring columns untouched).

Latency: a read returns its word one cycle after ``en`` (synchronous read, the output held
until the next read); a write takes effect at the clock edge. Reads and writes of one word in
the same cycle return the old contents. A read or write outside the buffer (row or word too
large, ``buf`` above ``PROB``) is ignored.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In

from golden.config import AccelConfig
from golden.isa import Buf, buffers

from .checks import check_config, validating
from .ports import (
    LANE_BITS,
    NUM_BUFS,
    buf_read_signature,
    buf_write_signature,
    row_words,
    score_read_signature,
    score_write_signature,
)

__all__ = ["OnChipBuffers"]


class OnChipBuffers(wiring.Component):
    """Every on-chip buffer of ``cfg`` behind two read ports and one write port.

    Members
    -------
    rd0, rd1 : In(buf_read_signature(cfg))
    wr : In(buf_write_signature(cfg))
    score_wr : In(score_write_signature(cfg))
    score_rd : In(score_read_signature(cfg))

    Latency 1 (read ``en`` to ``data``); throughput one read per port and one write per cycle.

    ``init`` optionally maps a :class:`golden.isa.Buf` to an integer array of that buffer's
    shape (``golden.isa.buffers``), its initial contents (simulation and tests).
    """

    def __init__(self, cfg: AccelConfig, init=None):
        with validating(self):
            check_config(cfg)
        self._cfg = cfg
        self._init = dict(init or {})
        self._mems = self._build()
        super().__init__({
            "rd0": In(buf_read_signature(cfg)),
            "rd1": In(buf_read_signature(cfg)),
            "wr": In(buf_write_signature(cfg)),
            "score_wr": In(score_write_signature(cfg)),
            "score_rd": In(score_read_signature(cfg)),
        })

    latency = 1

    @property
    def memories(self) -> dict:
        """``{Buf: Memory}``: every buffer (testbenches read them through ``Memory.data``)."""
        return self._mems

    def _words(self, buf, spec, words):
        x = self._init.get(buf)
        if x is None:
            return []
        if tuple(x.shape) != (spec.rows, spec.cols):
            raise ValueError(f"init[{spec.name}] must have shape {(spec.rows, spec.cols)}, "
                             f"not {tuple(x.shape)}")
        C = self._cfg.cols
        pad = [[int(v) for v in row] + [0] * (words * C - spec.cols) for row in x]
        return [row[j * C:(j + 1) * C] for row in pad for j in range(words)]

    def _build(self):
        cfg = self._cfg
        mems = {}
        for b in range(NUM_BUFS):
            spec = buffers(cfg)[Buf(b)]
            words = row_words(cfg, b)
            shape = data.ArrayLayout(signed(spec.bits) if spec.signed else unsigned(spec.bits),
                                     cfg.cols)
            mems[Buf(b)] = memory.Memory(shape=shape, depth=spec.rows * words,
                                         init=self._words(Buf(b), spec, words))
        score = self._init.get(Buf.SCORE)
        shape = buffers(cfg)[Buf.SCORE]
        if score is not None and tuple(score.shape) != (shape.rows, shape.cols):
            raise ValueError(f"init[SCORE] must have shape {(shape.rows, shape.cols)}, "
                             f"not {tuple(score.shape)}")
        mems[Buf.SCORE] = memory.Memory(
            shape=data.ArrayLayout(unsigned(8), cfg.max_heads), depth=cfg.max_tokens,
            init=[] if score is None else
            [[int(v) for v in score[:, t]] + [0] * (cfg.max_heads - shape.rows)
             for t in range(cfg.max_tokens)])
        return mems

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        C = cfg.cols
        specs = buffers(cfg)
        rds = (self.rd0, self.rd1)
        sel = [Signal(range(NUM_BUFS + 1), name=f"rd{i}_sel") for i in range(2)]
        outs = [[] for _ in rds]
        for b in range(NUM_BUFS):
            spec = specs[Buf(b)]
            words = row_words(cfg, b)
            mem = self._mems[Buf(b)]
            m.submodules[f"buf_{spec.name.lower()}"] = mem

            def inside(port, b=b, rows=spec.rows, words=words):
                return (port.buf == b) & (port.row < rows) & (port.word < words)

            wp = mem.write_port(granularity=1)
            m.d.comb += [
                wp.addr.eq(self.wr.row * words + self.wr.word),
                wp.en.eq(Mux(self.wr.en & inside(self.wr), self.wr.mask, 0)),
            ]
            for lane in range(C):
                m.d.comb += wp.data[lane].eq(self.wr.data[lane])
            for i, rd in enumerate(rds):
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(rd.row * words + rd.word), rp.en.eq(rd.en & inside(rd))]
                outs[i].append(rp.data)
        for i, rd in enumerate(rds):
            with m.If(rd.en):
                m.d.sync += sel[i].eq(Mux(rd.buf < NUM_BUFS, rd.buf, NUM_BUFS))
            with m.Switch(sel[i]):
                for b in range(NUM_BUFS):
                    with m.Case(b):
                        for lane in range(C):
                            m.d.comb += rd.data[lane].eq(outs[i][b][lane])

        # Score buffer: token major, per-head lane enables.
        H = cfg.max_heads
        smem = self._mems[Buf.SCORE]
        m.submodules.buf_score = smem
        swp = smem.write_port(granularity=1)
        m.d.comb += [swp.addr.eq(self.score_wr.token),
                     swp.en.eq(Mux(self.score_wr.en & (self.score_wr.token < cfg.max_tokens),
                                   1 << self.score_wr.head, 0))]
        for lane in range(H):
            m.d.comb += swp.data[lane].eq(self.score_wr.data)
        srp = smem.read_port()
        m.d.comb += [srp.addr.eq(self.score_rd.token), srp.en.eq(self.score_rd.en),
                     self.score_rd.data.eq(srp.data)]
        assert LANE_BITS >= max(s.bits for s in specs.values())
        return m
