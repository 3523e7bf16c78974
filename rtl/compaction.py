"""Token compaction and package token: gathers the kept token rows into a dense buffer.

:class:`TokenCompaction` consumes the top-k selector's per-token stream (``rtl.topk.TopK``,
one beat per candidate token with its keep bit and score) and, through memory ports of two
activation buffers that its parent owns,

* copies the CLS row (row 0) and every kept row, in order, from the source buffer to the
  destination buffer (rows ``0, 1, 2, ...``), and
* accumulates the pruned rows, weighted by their scores, into an internal accumulator buffer;
  after the last token it computes the reciprocal of the total weight with a restoring divider
  (two quotient bits per cycle)
  and writes the requantized package token as the last destination row
  (:func:`golden.token_prune.merge_package`, bit-exact).

Buffer layout: a token row of ``D`` int8 values is ``segs = ceil(D / cols)`` words of ``cols``
values (the buffer's port width; lanes past ``D`` are zero padding); row ``r`` segment ``j``
lives at word ``r * stride + j``. The row stride is an elaboration parameter: at least
``ceil(max_dim / cols)`` (:func:`row_stride`, the default: rows packed back to back), or the
row pitch of the buffers the unit is connected to, e.g. the accelerator's activation banks,
whose rows hold ``max(3 * max_dim, max_hidden)`` elements (:func:`bank_stride`). A token row is
at most ``max_dim`` wide, so ``segs`` stays within ``[1, ceil(max_dim / cols)]`` whatever the
stride, and the words of a row past its ``segs`` are neither read nor written. The unit moves
one segment per cycle.

Stride trade-off: the bank layout is fixed per configuration, so an elaboration parameter
costs nothing at run time (the address is ``row * stride + seg`` with a constant ``stride``, a
few adders); a run-time stride port would need a real multiplier (or a running row base) and a
range check, for no use in the accelerator.

Interface trade-off: memory ports rather than streams let the unit sit between two buffers
that other units also use, with no extra copy; the parent instantiates the
``amaranth.lib.memory.Memory`` objects and connects one read port (source) and one write port
(destination) to :attr:`TokenCompaction.src` / :attr:`TokenCompaction.dst`.

Cycles without stalls, ``N`` rows (CLS and ``N - 1`` candidates), ``p`` of them pruned:
``N * segs + 2`` for copying and accumulating, plus, if ``p > 0``,
``ceil(mult_width / 2) + segs + 1`` for the divider (:func:`divider_cycles`: ``mult_width``
restoring steps, two per cycle) and the package row (:meth:`TokenCompaction.cycles`). The
ideal, one segment per cycle through the buffer port, is
``N * segs`` (+ ``segs`` for the package row).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped
from amaranth.utils import bits_for, ceil_log2

from golden.config import AccelConfig
from golden.isa import Buf, buffers
from rtl.topk import PROB_BITS, ClsScore, TopK, scan_words, token_layout

from .checks import check_config, check_width, validating

__all__ = ["MAX_STRIDE", "TokenCompaction", "TokenPrune", "bank_stride", "check_stride",
           "divider_cycles", "row_stride"]

#: Largest row stride (words) :class:`TokenCompaction` accepts.
MAX_STRIDE = 1 << 16


def divider_cycles(mult_width: int) -> int:
    """Cycles of the package token's reciprocal divider: ``mult_width`` quotient bits, two per
    cycle, ``ceil(mult_width / 2)``."""
    return (mult_width + 1) // 2


def row_stride(cfg: AccelConfig) -> int:
    """Words of a ``max_dim``-wide token row: ``ceil(max_dim / cols)``, the smallest stride
    (and the most segments per row)."""
    return -(-cfg.max_dim // cfg.cols)


def bank_stride(cfg: AccelConfig) -> int:
    """Words per row of the accelerator's activation banks (:func:`golden.isa.buffers`):
    ``ceil(max(3 * max_dim, max_hidden) / cols)``."""
    return -(-buffers(cfg)[Buf.ACT0].cols // cfg.cols)


def check_stride(cfg: AccelConfig, stride):
    """The ``stride`` argument of :class:`TokenCompaction` (``None``: :func:`row_stride`)."""
    lo = row_stride(cfg)
    if stride is None:
        return lo
    if isinstance(stride, bool) or not isinstance(stride, int):
        raise TypeError(f"stride must be an integer, not {stride!r}")
    if not lo <= stride <= MAX_STRIDE:
        raise ValueError(f"stride must be in the range [{lo}, {MAX_STRIDE}] (at least "
                         f"ceil(max_dim / cols)), not {stride}")
    return stride


class TokenCompaction(wiring.Component):
    """Copies kept token rows to a dense buffer and fuses the pruned ones into a package token.

    Parameters
    ----------
    cfg : AccelConfig
        Uses ``max_tokens``, ``max_dim``, ``cols`` (port width), ``act_width``,
        ``score_width`` (weight width) and ``mult_width`` (reciprocal precision).
    stride : int or None
        Words between the starts of consecutive rows in both buffers, in
        ``[ceil(max_dim / cols), 65536]``; ``None`` (the default) is ``ceil(max_dim / cols)``
        (:func:`row_stride`). The accelerator's activation banks use :func:`bank_stride`.

    Members
    -------
    start : In(1)
        Pulse (while not ``busy``) to begin; ``segs`` is sampled in that cycle.
    segs : In(unsigned)
        Segments per row, ``ceil(D / cols)``; valid range ``[1, max_segs]``,
        ``max_segs = ceil(max_dim / cols)``.
    sel : In(stream.Signature(rtl.topk.token_layout(max_tokens, score_width)))
        One beat per candidate token ``index = 0, 1, ...`` (source row ``index + 1``), with its
        ``keep`` bit, its ``score`` (the package-token weight) and ``last`` on the final one.
    src : In(memory.ReadPort.Signature(addr_width, shape=ArrayLayout(signed(act_width), cols)))
        Read port of the source activation buffer (synchronous, one cycle latency).
    dst : In(memory.WritePort.Signature(addr_width, shape=...))
        Write port of the destination activation buffer.
    rows : Out(unsigned)
        Rows written (CLS + kept + package); valid when ``done`` pulses.
    package_weight : Out(unsigned)
        Total weight of the package token (0 if none), for re-merging it later.
    busy, done : Out(1)
        ``busy`` while running; ``done`` pulses for one cycle at the end.
    error : Out(1)
        Set by a ``start`` with ``segs`` out of range, or by a ``sel`` beat whose index is not
        the next expected one or addresses a row outside the buffer (the run stops); cleared
        by the next ``start``.

    Latency, throughput and stalls: one row segment per cycle; a row whose ``sel`` beat is not
    yet valid stalls the unit (no segment moves) until it arrives. Without stalls a run takes
    :meth:`cycles` cycles from ``start`` to ``done``; :attr:`latency` (1) is the number of
    cycles from a segment's source read address to its destination write (``dst.en``).
    """

    def __init__(self, cfg: AccelConfig, stride=None):
        with validating(self):
            check_config(cfg)
            stride = check_stride(cfg, stride)
            if cfg.max_tokens < 2:
                raise ValueError(f"max_tokens must be in the range [2, 4096] for token "
                                 f"compaction, not {cfg.max_tokens}")
            if cfg.mult_width < 2:
                raise ValueError(f"mult_width must be in the range [2, {61 - cfg.acc_width}] "
                                 f"for token compaction, not {cfg.mult_width}")
        self.cfg = cfg
        #: row pitch of the buffers (words)
        self.stride = stride
        #: most segments per row (``ceil(max_dim / cols)``): the range of ``segs``
        self.max_segs = row_stride(cfg)
        #: buffer words the addresses span (``max_tokens`` rows)
        self.depth = cfg.max_tokens * self.stride
        self.addr_width = max(1, ceil_log2(self.depth))
        self.row_layout = data.ArrayLayout(signed(cfg.act_width), cfg.cols)
        self.weight_total_width = cfg.score_width + ceil_log2(cfg.max_tokens + 1)
        self.acc_width = cfg.act_width + cfg.score_width + ceil_log2(cfg.max_tokens) + 1
        super().__init__({
            "start": In(1),
            "segs": In(unsigned(bits_for(self.max_segs))),
            "sel": In(stream.Signature(token_layout(cfg.max_tokens, cfg.score_width))),
            "src": In(memory.ReadPort.Signature(addr_width=self.addr_width,
                                                shape=self.row_layout)),
            "dst": In(memory.WritePort.Signature(addr_width=self.addr_width,
                                                 shape=self.row_layout)),
            "rows": Out(unsigned(bits_for(cfg.max_tokens))),
            "package_weight": Out(unsigned(self.weight_total_width)),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
        })

    @property
    def latency(self) -> int:
        """Cycles from a segment's source read address to its destination write."""
        return 1

    def cycles(self, n_rows: int, segs: int, pruned: int) -> int:
        """Cycles from ``start`` to ``done`` without stalls (``n_rows`` includes CLS)."""
        total = n_rows * segs + 2
        if pruned:
            total += divider_cycles(self.cfg.mult_width) + segs + 1
        return total

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        cols, aw = cfg.cols, cfg.act_width
        mw = cfg.mult_width
        stride = self.stride
        max_segs = self.max_segs
        row_shape = unsigned(bits_for(cfg.max_tokens))
        seg_shape = unsigned(bits_for(max_segs))
        wt_width = self.weight_total_width

        acc_layout = data.ArrayLayout(signed(self.acc_width), cols)
        m.submodules.acc = acc = memory.Memory(shape=acc_layout, depth=max_segs, init=[])
        acc_wr = acc.write_port()
        acc_rd = acc.read_port(transparent_for=(acc_wr,))

        segs = Signal(seg_shape)
        # reader: the row whose segments are being read
        cur_valid = Signal()
        cur_row = Signal(row_shape)
        cur_out = Signal(row_shape)
        cur_keep = Signal()
        cur_w = Signal(cfg.score_width)
        seg = Signal(seg_shape)
        seen_last = Signal()
        expect = Signal(row_shape)      # next candidate index
        out_next = Signal(row_shape)    # next destination row
        pruned = Signal(row_shape)
        total_w = Signal(wt_width)
        # stage 1: source data arrives
        p_valid = Signal()
        p_keep = Signal()
        p_w = Signal(cfg.score_width)
        p_seg = Signal(seg_shape)
        p_out = Signal(row_shape)
        # divider
        rem = Signal(wt_width + 1)
        quo = Signal(mw)
        step = Signal(range(mw + 1))
        shift = Signal(range(wt_width + mw))
        rnd = Signal(wt_width + mw)
        # package stage
        q_valid = Signal()
        q_seg = Signal(seg_shape)
        pkg_seg = Signal(seg_shape)

        m.d.comb += self.src.en.eq(1)
        m.d.sync += [self.done.eq(0), p_valid.eq(0), q_valid.eq(0)]
        m.d.comb += self.package_weight.eq(total_w)

        # stage 1 of the copy/accumulate pipeline (runs whatever the FSM state)
        with m.If(p_valid):
            with m.If(p_keep):
                m.d.comb += [
                    self.dst.addr.eq(p_out * stride + p_seg),
                    self.dst.data.eq(self.src.data),
                    self.dst.en.eq(1),
                ]
            with m.Else():
                w = Cat(p_w, Const(0, 1)).as_signed()
                m.d.comb += [acc_wr.addr.eq(p_seg), acc_wr.en.eq(1)]
                for c in range(cols):
                    m.d.comb += acc_wr.data[c].eq(acc_rd.data[c] + w * self.src.data[c])

        # package stage: requantize one accumulator word per cycle and clear it
        with m.If(q_valid):
            lo, hi = -(1 << (aw - 1)), (1 << (aw - 1)) - 1
            m.d.comb += [
                self.dst.addr.eq(out_next * stride + q_seg), self.dst.en.eq(1),
                acc_wr.addr.eq(q_seg), acc_wr.data.eq(0), acc_wr.en.eq(1),
            ]
            for c in range(cols):
                prod = acc_rd.data[c] * Cat(quo, Const(0, 1)).as_signed()
                y = Signal(signed(len(prod) + 1), name=f"pkg_{c}")
                m.d.comb += y.eq((prod + rnd) >> shift)
                m.d.comb += self.dst.data[c].eq(Mux(y > hi, hi, Mux(y < lo, lo, y)))

        take = Signal()                 # a sel beat is accepted this cycle
        m.d.comb += take.eq(self.sel.valid & self.sel.ready)

        with m.FSM(name="fsm"):
            with m.State("IDLE"), m.If(self.start):
                bad = (self.segs == 0) | (self.segs > max_segs)
                m.d.sync += [
                    self.error.eq(bad), segs.eq(self.segs),
                    cur_valid.eq(~bad), cur_row.eq(0), cur_out.eq(0), cur_keep.eq(1),
                    seg.eq(0), seen_last.eq(0), expect.eq(0), out_next.eq(1),
                    pruned.eq(0), total_w.eq(0),
                ]
                with m.If(~bad):
                    m.next = "ROWS"

            with m.State("ROWS"):
                m.d.comb += [
                    self.busy.eq(1),
                    self.sel.ready.eq(~seen_last & (~cur_valid | (seg == segs - 1))),
                    self.src.addr.eq(cur_row * stride + seg),
                    acc_rd.addr.eq(seg),
                ]
                with m.If(cur_valid):
                    m.d.sync += [p_valid.eq(1), p_keep.eq(cur_keep), p_w.eq(cur_w),
                                 p_seg.eq(seg), p_out.eq(cur_out)]
                    with m.If(seg == segs - 1):
                        m.d.sync += [seg.eq(0), cur_valid.eq(0)]
                    with m.Else():
                        m.d.sync += seg.eq(seg + 1)
                with m.If(take):
                    index = self.sel.payload.index
                    row = index + 1
                    m.d.sync += [
                        cur_valid.eq(1), cur_row.eq(row), cur_keep.eq(self.sel.payload.keep),
                        cur_w.eq(self.sel.payload.score), cur_out.eq(out_next),
                        seen_last.eq(self.sel.payload.last), expect.eq(expect + 1),
                    ]
                    with m.If(self.sel.payload.keep):
                        m.d.sync += out_next.eq(out_next + 1)
                    with m.Else():
                        m.d.sync += [pruned.eq(pruned + 1),
                                     total_w.eq(total_w + self.sel.payload.score)]
                    with m.If((index != expect) | (row >= cfg.max_tokens)):
                        m.d.sync += [self.error.eq(1), cur_valid.eq(0)]
                        m.next = "IDLE"
                with m.Elif(seen_last & ~cur_valid):
                    with m.If(pruned == 0):
                        m.d.sync += [self.rows.eq(out_next), self.done.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        # reciprocal set-up: rem = 2**(bit_length(W) - 1), S = that + mw - 1
                        top = Signal(range(wt_width))
                        for b in range(wt_width):
                            with m.If(total_w[b]):
                                m.d.comb += top.eq(b)
                        m.d.sync += [
                            rem.eq(Const(1, len(rem)) << top), quo.eq(0), step.eq(0),
                            shift.eq(top + (mw - 1)),
                            rnd.eq(Const(1, len(rnd)) << (top + (mw - 2))),
                        ]
                        m.next = "DIVIDE"

            with m.State("DIVIDE"):
                # two restoring steps per cycle (one in the last cycle if mult_width is odd)
                m.d.comb += self.busy.eq(1)
                ge1 = Signal()
                rem1 = Signal(len(rem))
                ge2 = Signal()
                m.d.comb += [
                    ge1.eq(rem >= total_w),
                    rem1.eq(Mux(ge1, rem - total_w, rem) << 1),
                    ge2.eq(rem1 >= total_w),
                ]
                with m.If(step == mw - 1):
                    m.d.sync += [quo.eq(Cat(ge1, quo[:-1])), rem.eq(rem1)]
                with m.Else():
                    m.d.sync += [
                        quo.eq(Cat(ge2, ge1, quo[:-2])),
                        rem.eq(Mux(ge2, rem1 - total_w, rem1) << 1),
                        step.eq(step + 2),
                    ]
                with m.If(step >= mw - 2):
                    m.d.sync += pkg_seg.eq(0)
                    m.next = "PACKAGE"

            with m.State("PACKAGE"):
                m.d.comb += [self.busy.eq(1), acc_rd.addr.eq(pkg_seg)]
                with m.If(pkg_seg != segs):
                    m.d.sync += [q_valid.eq(1), q_seg.eq(pkg_seg), pkg_seg.eq(pkg_seg + 1)]
                with m.Else():                  # the last package segment is written now
                    m.d.sync += [self.rows.eq(out_next + 1), self.done.eq(1)]
                    m.next = "IDLE"
        return m


class TokenPrune(wiring.Component):
    """Attention-score token pruning: CLS score, top-k selection, compaction, package token.

    Chains :class:`rtl.topk.ClsScore` -> :class:`rtl.topk.TopK` -> :class:`TokenCompaction`
    (equal to :func:`golden.token_prune.prune_tokens_attention` with ``k`` given). The CLS
    row is copied while the scores stream in; the selector's emit phase runs at the pace of
    the compaction (one row per ``segs`` cycles).

    Parameters
    ----------
    cfg : AccelConfig
        As for :class:`TokenCompaction` and :class:`rtl.topk.TopK`.
    heads : int
        Attention heads whose CLS-row probabilities are summed into the score.
    stride : int or None
        Row pitch of the source and destination buffers, passed to :class:`TokenCompaction`.

    Members
    -------
    start : In(1)
        Pulse (while not ``busy``) to begin; ``n_tokens``, ``k`` and ``segs`` are sampled.
    n_tokens : In(unsigned)
        Token count ``N`` including CLS, valid range ``[2, max_tokens]``.
    k : In(unsigned)
        Non-CLS tokens to keep, valid range ``[1, N - 1]``.
    segs : In(unsigned)
        Row segments, ``[1, ceil(max_dim / cols)]``.
    probs : In(stream.Signature(data.ArrayLayout(unsigned(8), heads)))
        CLS-row probabilities of tokens ``1 .. N - 1``, one beat per token (all heads).
    src, dst, rows, package_weight, busy, done :
        As for :class:`TokenCompaction`.
    error : Out(1)
        Set by a ``start`` with any parameter out of range (nothing runs); cleared by the next
        ``start``.

    Throughput and stalls: one probability beat per cycle while loading, one row segment per
    cycle while compacting; stalls on ``probs`` delay the run. Without stalls a run takes
    :meth:`cycles` ``= (N - 1) (1 + segs) + scan_words + 5`` cycles from ``start`` to
    ``done`` (``scan_words = 2**score_width / scan_lanes``, :func:`rtl.topk.scan_words`), plus
    ``ceil(mult_width / 2) + segs + 1`` if any token is pruned (when
    ``segs <= N + scan_words``, so that the CLS row is copied while the scores load).
    """

    def __init__(self, cfg: AccelConfig, heads: int, stride=None):
        with validating(self):
            check_width("heads", heads, 1, 64)
            check_config(cfg)
            check_stride(cfg, stride)
        self.compaction = TokenCompaction(cfg, stride)
        self.score = ClsScore(cfg, heads)
        self.topk = TopK(cfg)
        self.cfg = cfg
        self.heads = heads
        comp = self.compaction
        cnt = unsigned(bits_for(cfg.max_tokens))
        super().__init__({
            "start": In(1),
            "n_tokens": In(cnt),
            "k": In(cnt),
            "segs": In(unsigned(bits_for(comp.max_segs))),
            "probs": In(stream.Signature(data.ArrayLayout(unsigned(PROB_BITS), heads))),
            "src": In(memory.ReadPort.Signature(addr_width=comp.addr_width,
                                                shape=comp.row_layout)),
            "dst": In(memory.WritePort.Signature(addr_width=comp.addr_width,
                                                 shape=comp.row_layout)),
            "rows": Out(unsigned(bits_for(cfg.max_tokens))),
            "package_weight": Out(unsigned(comp.weight_total_width)),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
        })

    def cycles(self, n_tokens: int, segs: int, pruned: int) -> int:
        """Cycles from ``start`` to ``done`` without stalls."""
        total = (n_tokens - 1) * (1 + segs) + scan_words(self.cfg.score_width) + 5
        if pruned:
            total += divider_cycles(self.cfg.mult_width) + segs + 1
        return total

    def ideal_cycles(self, n_tokens: int, segs: int, pruned: int) -> int:
        """One score per cycle, then one row segment per cycle for the rows after CLS."""
        return (n_tokens - 1) + (n_tokens - 1) * segs + (segs if pruned else 0)

    def elaborate(self, platform):
        m = Module()
        m.submodules.score = score = self.score
        m.submodules.topk = topk = self.topk
        m.submodules.compaction = comp = self.compaction
        connect(m, flipped(self.probs), score.i)
        connect(m, score.o, topk.i)
        connect(m, topk.o, comp.sel)
        connect(m, flipped(self.src), comp.src)
        connect(m, flipped(self.dst), comp.dst)

        bad_args = Signal()
        m.d.comb += bad_args.eq((self.n_tokens < 2) | (self.n_tokens > self.cfg.max_tokens)
                                | (self.k == 0) | (self.k >= self.n_tokens)
                                | (self.segs == 0) | (self.segs > comp.max_segs))
        go = self.start & ~self.busy
        m.d.comb += [
            topk.n.eq(self.n_tokens - 1), topk.k.eq(self.k), comp.segs.eq(self.segs),
            topk.start.eq(go & ~bad_args), comp.start.eq(go & ~bad_args),
            self.busy.eq(topk.busy | comp.busy),
            self.done.eq(comp.done),
            self.rows.eq(comp.rows),
            self.package_weight.eq(comp.package_weight),
        ]
        start_error = Signal()
        with m.If(go):
            m.d.sync += start_error.eq(bad_args)
        m.d.comb += self.error.eq(start_error | topk.error | comp.error)
        return m
