"""Execution unit of TOKEN_SELECT: attention-score token pruning between two activation banks.

``TOKEN_SELECT`` (``docs/isa.md``, golden: ``golden.executor._step``) runs
:func:`golden.token_prune.prune_tokens_attention` on ``a[m x n]`` (int8, token 0 is CLS) with the
CLS-row probabilities ``SCORE[0:k, 0:m]`` (``k`` heads) and keeps ``imm`` tokens: it writes CLS,
the kept tokens in order and, if any token was pruned, the package token, ``imm + 1 (+1)`` rows
at ``dst``. :class:`TokenUnit` wraps :class:`rtl.compaction.TokenPrune` (``ClsScore -> TopK ->
TokenCompaction``) and adapts its ports to the accelerator's buses (``rtl.ports``):

* **Scores.** The probabilities of tokens ``1 .. m - 1`` are read through ``score_rd`` (one
  token's ``max_heads`` lanes per read, one read per cycle) and streamed to the pruning unit,
  which is elaborated for ``max_heads`` heads; lanes ``>= k`` are forced to zero, since the
  score buffer may hold stale rows of an earlier layer with more heads. A read is issued when
  the beat register is empty or drained in the same cycle; the port holds its data until the
  next read, so the beat needs no copy.
* **Rows.** The pruning unit addresses its source and destination buffers as
  ``row * stride + segment``; the unit is elaborated with a power-of-two ``stride`` (the
  smallest at least ``ceil(max_dim / cols)``), so that ``row = addr >> log2(stride)`` and
  ``segment = addr & (stride - 1)`` are wires. The operand origins are added
  (``a.row``/``dst.row`` to the row, ``a.col // cols``/``dst.col // cols`` to the word) and the
  int8 elements are converted to and from the ports' 16-bit lanes (the banks are ``act_width``
  bits wide, so truncation is exact). ``rd0`` reads on every cycle of a run (the compaction
  consumes the word one cycle after its address); ``wr`` writes the lanes ``< n`` of each word
  only (``mask``), so that the columns past ``n`` of the destination keep their contents, as in
  the golden model, which writes exactly ``n`` columns.
* The external memory port, ``rd1`` and ``score_wr`` are not used (all their outgoing members
  are constant zero).

Data movement order (:class:`rtl.compaction.TokenPrune`): the CLS row is copied while the
``m - 1`` scores load into the top-k selector (one per cycle); the selector then scans its
``2**score_width``-bin histogram (``scan_words = 2**score_width / scan_lanes`` words of 8 bins,
one word per cycle, :func:`rtl.topk.scan_words`) and emits one keep decision per token, at the
pace of the compaction, which copies each kept row (``segs = ceil(n / cols)`` words, one per
cycle) and accumulates each pruned one; finally a divider (``mult_width`` quotient bits, two per
cycle) and ``segs`` cycles write the package token.

Cycles (``done`` comes this many cycles after ``start``, as ``sim.instr.run_instr`` counts
them; there is no memory traffic, so they do not depend on memory latency or stalls),
:func:`cycles`, with ``segs = ceil(n / cols)``::

    (m - 1) * (segs + 1) + scan_words + 7
        + (ceil(mult_width / 2) + segs + 1 if imm < m - 1 else 0)   package token
        + max(0, segs - m - scan_words - 3)                         CLS row past the scores

The last term is zero for every preset (the CLS row is copied while the scores load and the
histogram is scanned). This is :meth:`TokenPrune.cycles` plus 2: the ``start`` cycle (the
pruning unit is started from registered operands in the next one) and the score read ahead of
the first probability beat. Against the ideal ``(m - 1) * (segs + 1) (+ segs)`` (one score,
then one word per cycle) the overhead is the selector's histogram scan and the package token's
divider, both fixed per instruction. The tiny model's selection (``tiny`` preset, ``m = 17``,
``n = 32``, ``imm = 8``) takes 200 cycles; DeiT-Tiny's on the ``default`` preset (``m = 197``,
``n = 192``, ``imm = 138``) 4972.

Error: ``error`` is raised (with ``done`` in the cycle after ``start``, nothing read or
written) by an instruction that :func:`golden.isa.validate_instr` would reject in a way the unit
can see: ``m`` outside ``[2, max_tokens]``, ``imm`` outside ``[1, m - 1]``, ``n`` outside
``[1, max_dim]`` or ``k`` outside ``[1, max_heads]``; otherwise the pruning unit's ``error``
is passed on in the ``done`` cycle (with these arguments in range it never rises).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.utils import bits_for, ceil_log2

from golden.config import AccelConfig
from golden.isa import Instr
from rtl.compaction import TokenPrune, divider_cycles, row_stride
from rtl.topk import scan_words

from .checks import check_config, validating
from .fixedpoint_ops import div_const
from .ports import exec_signature

__all__ = ["TokenUnit", "cycles", "token_stride"]


def token_stride(cfg: AccelConfig) -> int:
    """Row stride of the wrapped :class:`TokenPrune`: the smallest power of two that is at
    least ``ceil(max_dim / cols)`` (the most words of a token row)."""
    return 1 << ceil_log2(row_stride(cfg))


def cycles(cfg: AccelConfig, instr: Instr, mem_latency: int = 2) -> int:
    """Cycles from ``start`` to ``done`` of a TOKEN_SELECT without stalls (``mem_latency``
    does not matter: the unit does not use the memory port); see the module docstring."""
    m, keep = instr.m, instr.imm
    segs = -(-instr.n // cfg.cols)
    words = scan_words(cfg.score_width)
    total = (m - 1) * (segs + 1) + words + 7
    total += max(0, segs - m - words - 3)
    if keep < m - 1:
        total += divider_cycles(cfg.mult_width) + segs + 1
    return total


class TokenUnit(wiring.Component):
    """TOKEN_SELECT execution unit: :class:`rtl.compaction.TokenPrune` on the accelerator buses.

    Parameters
    ----------
    cfg : AccelConfig
        As for :class:`rtl.compaction.TokenPrune` (``max_tokens >= 2``, ``mult_width >= 2``);
        the pruning unit is elaborated for ``max_heads`` heads and :func:`token_stride`.

    Members
    -------
    start, instr, done, error, mem, rd0, rd1, wr, score_wr, score_rd :
        ``rtl.ports.exec_signature(cfg)``. Used: ``score_rd`` (probabilities), ``rd0`` (source
        rows ``a``), ``wr`` (destination rows ``dst``); ``mem``, ``rd1`` and ``score_wr`` stay
        zero.

    Latency and throughput: :func:`cycles` from ``start`` to ``done``; one score per cycle
    while loading, one row word per cycle while compacting. The unit has no memory traffic, so
    stalls on the memory port do not affect it.
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
            if cfg.max_tokens < 2:
                raise ValueError(f"max_tokens must be in the range [2, 4096] for token "
                                 f"selection, not {cfg.max_tokens}")
            if cfg.mult_width < 2:
                raise ValueError(f"mult_width must be in the range [2, {61 - cfg.acc_width}] "
                                 f"for token selection, not {cfg.mult_width}")
        self.cfg = cfg
        #: row pitch of the wrapped unit's address space (a power of two)
        self.stride = token_stride(cfg)
        self.prune = TokenPrune(cfg, cfg.max_heads, self.stride)
        super().__init__(exec_signature(cfg))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        C = cfg.cols
        H = cfg.max_heads
        m.submodules.prune = prune = self.prune
        ins = self.instr
        sbits = ceil_log2(self.stride)
        max_segs = row_stride(cfg)

        cnt_shape = unsigned(bits_for(cfg.max_tokens))
        n_tokens = Signal(cnt_shape)            # m
        keep = Signal(cnt_shape)                # imm
        heads = Signal(range(H + 1))            # k
        width = Signal(range(cfg.max_dim + 1))  # n
        segs = Signal(range(max_segs + 1))      # ceil(n / cols)
        a_word = Signal(self.rd0.word.shape())
        d_word = Signal(self.wr.word.shape())
        go = Signal()                           # start the pruning unit
        err = Signal()                          # the instruction's arguments are out of range
        tok = Signal(cnt_shape)                 # next token whose scores are read
        pv = Signal()                           # a probability beat is on prune.probs

        m.d.sync += go.eq(0)
        m.d.comb += [
            prune.start.eq(go), prune.n_tokens.eq(n_tokens), prune.k.eq(keep),
            prune.segs.eq(segs),
        ]

        with m.FSM(name="fsm"):
            with m.State("IDLE"), m.If(self.start):
                bad = ((ins.m < 2) | (ins.m > cfg.max_tokens) | (ins.imm == 0)
                       | (ins.imm >= ins.m) | (ins.n == 0) | (ins.n > cfg.max_dim)
                       | (ins.k == 0) | (ins.k > H))
                m.d.sync += [
                    err.eq(bad), go.eq(~bad),
                    n_tokens.eq(ins.m), keep.eq(ins.imm), heads.eq(ins.k), width.eq(ins.n),
                    segs.eq(div_const(ins.n + (C - 1), C)),
                    a_word.eq(div_const(ins.a.col, C)), d_word.eq(div_const(ins.dst.col, C)),
                    tok.eq(1), pv.eq(0),
                ]
                m.next = "RUN"

            with m.State("RUN"):
                with m.If(err):
                    m.d.comb += [self.done.eq(1), self.error.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    # probabilities of tokens 1 .. m - 1, lanes >= k zero
                    read = (tok != n_tokens) & (~pv | prune.probs.ready)
                    m.d.comb += [
                        self.score_rd.en.eq(read), self.score_rd.token.eq(tok),
                        prune.probs.valid.eq(pv),
                    ]
                    for h in range(H):
                        m.d.comb += prune.probs.payload[h].eq(
                            Mux(heads > h, self.score_rd.data[h], 0))
                    m.d.sync += pv.eq(read | (pv & ~prune.probs.ready))
                    with m.If(read):
                        m.d.sync += tok.eq(tok + 1)

                    # source rows: rd0 (read every cycle, data the next one)
                    src_row = prune.src.addr[sbits:]
                    src_seg = prune.src.addr[:sbits]
                    m.d.comb += [
                        self.rd0.en.eq(1), self.rd0.buf.eq(ins.a.buf),
                        self.rd0.row.eq(ins.a.row + src_row),
                        self.rd0.word.eq(a_word + src_seg),
                    ]
                    for c in range(C):
                        m.d.comb += prune.src.data[c].eq(self.rd0.data[c])

                    # destination rows: wr, lanes < n only
                    dst_row = prune.dst.addr[sbits:]
                    dst_seg = prune.dst.addr[:sbits]
                    m.d.comb += [
                        self.wr.en.eq(prune.dst.en), self.wr.buf.eq(ins.dst.buf),
                        self.wr.row.eq(ins.dst.row + dst_row),
                        self.wr.word.eq(d_word + dst_seg),
                    ]
                    for c in range(C):
                        m.d.comb += [
                            self.wr.mask[c].eq(dst_seg * C + c < width),
                            self.wr.data[c].eq(prune.dst.data[c]),
                        ]

                    with m.If(prune.done):
                        m.d.comb += [self.done.eq(1), self.error.eq(prune.error)]
                        m.next = "IDLE"
        return m
