"""Exact top-k token selector in O(N) cycles, and the CLS-attention score reducer.

:class:`TopK` ranks ``n`` unsigned ``score_width``-bit scores (``n`` and ``k`` given at run
time) and streams out every token's index with its keep bit, in ascending index order. The
selection equals :func:`golden.topk.topk_select`: the ``k`` largest scores, ties to the lower
index.

Algorithm (three phases, one memory access per cycle each):

1. **Load** (``n`` cycles): one score per cycle is written to a score memory and counted in a
   ``2**score_width``-bin histogram, stored as :func:`scan_words` words of :func:`scan_lanes`
   counts (:data:`SCAN_LANES` = 8 bins per word, or all bins if there are fewer). The word of
   the score's bin is read, and written back the next cycle with that bin's lane incremented;
   the read port is transparent to the write port, which forwards a word written in the same
   cycle, so a run of scores in the same word counts correctly at full rate.
2. **Scan** (``2**score_width / scan_lanes + 1`` cycles, 33 for 8-bit scores): the histogram
   is read one word per cycle from the top word down and each word is cleared as it is read, so
   the next run starts from an empty histogram. Two pipeline stages per word: stage 1 registers
   the word's suffix sums (``suffix[j]`` = count of lanes ``>= j``, a log-depth scan of three
   adder levels for 8 lanes); stage 2 forms every ``rem - suffix[j]`` in parallel, with
   ``rem = k - count(above the word)``: the highest lane with ``suffix[j] >= rem`` holds the
   threshold ``T``, and ``ties = rem - suffix[j + 1]`` scores equal to ``T`` are kept (one
   subtraction, a priority select and a multiplexer deep); if no lane reaches ``rem``, ``rem``
   drops by the word's total. Stage 2 of the last word runs in the first emit cycle,
   before the first keep decision needs ``T``.
3. **Emit** (``n`` cycles): the scores are read back in index order; token ``i`` is kept if
   ``s_i > T``, or ``s_i == T`` while the tie budget lasts (lower index wins).

Without stalls a run takes ``2 n + 2**score_width / scan_lanes + 3`` cycles from ``start`` to
``done`` (:meth:`TopK.cycles`), 427 for ``n = 196``, ``score_width = 8``. The trade-off against
a sorting network or a k-deep insertion queue: cost independent of ``k``, a few adders and
comparators and two small memories instead of ``O(k)`` comparators, at the price of the fixed
histogram scan, which is why ``score_width`` stays small (8 bits: softmax probabilities are
8-bit). Reading 8 bins per cycle divides the scan by 8 for 8 lane adders and subtractors and
a wider (``8 * bits_for(max_tokens)``-bit), shallower histogram memory; each scan stage is a
few ``bits_for(max_tokens)``-bit carry chains deep (stage 1: three adder levels; stage 2: one
subtraction, a priority select and a multiplexer).

:class:`ClsScore` turns the CLS-row probabilities of every head into the score
(:func:`golden.token_prune.cls_scores`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from golden.config import AccelConfig

from .checks import check_config, check_width, validating

__all__ = ["PROB_BITS", "SCAN_LANES", "ClsScore", "TopK", "scan_lanes", "scan_words",
           "token_layout"]

#: Width of one softmax probability (unsigned, scale 2**-8); equals golden.token_prune.PROB_BITS.
PROB_BITS = 8

#: Histogram bins per word, read and accumulated in one scan cycle (a power of two).
SCAN_LANES = 8


def scan_lanes(score_width: int) -> int:
    """Bins per histogram word: :data:`SCAN_LANES`, or all ``2**score_width`` bins if fewer."""
    return min(SCAN_LANES, 1 << score_width)


def scan_words(score_width: int) -> int:
    """Histogram words, ``2**score_width / scan_lanes``: the scan phase reads one per cycle."""
    return (1 << score_width) // scan_lanes(score_width)


def token_layout(max_tokens: int, score_width: int) -> data.StructLayout:
    """Payload of the selector's output: one token's index, score and keep decision.

    ``last`` marks the final beat of a run.
    """
    return data.StructLayout({
        "index": unsigned(bits_for(max(max_tokens - 1, 1))),
        "score": unsigned(score_width),
        "keep": unsigned(1),
        "last": unsigned(1),
    })


class TopK(wiring.Component):
    """Exact top-k selector: ``k`` largest of ``n`` streamed scores, lower index wins ties.

    Parameters
    ----------
    cfg : AccelConfig
        Uses ``max_tokens`` (largest ``n``) and ``score_width``.
    kept_only : bool
        If false (default) ``o`` carries one beat per token (``keep`` set on the kept ones),
        which is what the token compaction unit consumes. If true, ``o`` carries only the kept
        tokens (``keep`` always 1) and ``last`` marks the ``k``-th.

    Members
    -------
    start : In(1)
        Pulse (while not ``busy``) to begin a run with ``n`` and ``k``, sampled in that cycle.
    n, k : In(unsigned)
        Number of scores and number to keep; valid iff ``1 <= k <= n <= max_tokens``.
    i : In(stream.Signature(unsigned(score_width)))
        The ``n`` scores, in token order. Accepted one per cycle during the load phase.
    o : Out(stream.Signature(token_layout(...)))
        Tokens in ascending index order with their score and keep bit.
    mask : Out(max_tokens)
        Keep mask, bit ``i`` for token ``i``; complete when ``done`` pulses (bits ``>= n`` are 0).
    busy : Out(1)
        High from the cycle after ``start`` until the run ends.
    done : Out(1)
        One-cycle pulse after the last beat of ``o`` has been transferred.
    error : Out(1)
        Set by a ``start`` with invalid ``n``/``k`` (no run happens, ``i`` is not accepted);
        cleared by the next ``start``.

    Latency, throughput and stalls: one score per cycle in, one token per cycle out. Without
    stalls a run takes :meth:`cycles` ``(n) = 2 n + scan_words + 3`` cycles from ``start``
    to ``done`` (``scan_words = 2**score_width / scan_lanes``, 32 for 8-bit scores); the first
    output beat is valid :attr:`latency` ``= scan_words + 3`` cycles after the last score is
    accepted. A stalled input (``valid`` low) or output
    (``ready`` low) delays the run by the stalled cycles and loses nothing.
    """

    def __init__(self, cfg: AccelConfig, *, kept_only: bool = False):
        with validating(self):
            check_config(cfg)
            if not isinstance(kept_only, bool):
                raise TypeError(f"kept_only must be a bool, not {kept_only!r}")
        self.cfg = cfg
        self.kept_only = kept_only
        self.score_width = cfg.score_width
        self.max_tokens = cfg.max_tokens
        #: histogram bins read per scan cycle (one histogram word)
        self.scan_lanes = scan_lanes(cfg.score_width)
        #: histogram words, one scan cycle each
        self.scan_words = scan_words(cfg.score_width)
        cnt = unsigned(bits_for(cfg.max_tokens))
        super().__init__({
            "start": In(1),
            "n": In(cnt),
            "k": In(cnt),
            "i": In(stream.Signature(unsigned(cfg.score_width))),
            "o": Out(stream.Signature(token_layout(cfg.max_tokens, cfg.score_width))),
            "mask": Out(cfg.max_tokens),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
        })

    @property
    def latency(self) -> int:
        """Cycles from the last accepted score to the first valid output beat."""
        return self.scan_words + 3

    def cycles(self, n: int) -> int:
        """Cycles from ``start`` to ``done`` for ``n`` scores without stalls."""
        return 2 * n + self.scan_words + 3

    def elaborate(self, platform):
        m = Module()
        sw = self.score_width
        lanes = self.scan_lanes
        words = self.scan_words
        lane_bits = ceil_log2(lanes)
        cnt_shape = unsigned(bits_for(self.max_tokens))

        m.submodules.scores = scores = memory.Memory(
            shape=unsigned(sw), depth=self.max_tokens, init=[])
        m.submodules.hist = hist = memory.Memory(
            shape=data.ArrayLayout(cnt_shape, lanes), depth=words, init=[])
        s_wr = scores.write_port()
        s_rd = scores.read_port()
        h_wr = hist.write_port()
        h_rd = hist.read_port(transparent_for=(h_wr,))

        n = Signal(cnt_shape)
        k = Signal(cnt_shape)
        count = Signal(cnt_shape)        # scores loaded / tokens emitted
        rem = Signal(cnt_shape)          # k - (scores above the words scanned so far)
        thresh = Signal(sw)
        ties = Signal(cnt_shape)         # scores equal to thresh still to keep
        kept = Signal(cnt_shape)
        found = Signal()
        inc_valid = Signal()             # load stage 1: increment lane inc_lane of word inc_word
        inc_word = Signal(sw - lane_bits)
        inc_lane = Signal(lane_bits)
        scan_valid = Signal()            # scan stage 1: h_rd.data is word scan_word
        scan_word = Signal(sw - lane_bits)
        scan_addr = Signal(sw - lane_bits)
        sum_valid = Signal()             # scan stage 2: suffix sums of word sum_word
        sum_word = Signal(sw - lane_bits)
        suffix = Signal(data.ArrayLayout(cnt_shape, lanes))   # suffix[j]: count of lanes >= j
        o_valid = Signal()               # emit output register
        o_index = Signal(cnt_shape)

        m.d.sync += [self.done.eq(0), inc_valid.eq(0), scan_valid.eq(0), sum_valid.eq(0)]

        # load stage 1: write the word back with one lane incremented
        with m.If(inc_valid):
            m.d.comb += [h_wr.addr.eq(inc_word), h_wr.en.eq(1)]
            for j in range(lanes):
                m.d.comb += h_wr.data[j].eq(h_rd.data[j] + (inc_lane == j))

        # scan stage 1: clear the word just read, register its suffix sums (log-depth scan)
        with m.If(scan_valid):
            m.d.comb += [h_wr.addr.eq(scan_word), h_wr.data.eq(0), h_wr.en.eq(1)]
            level = [h_rd.data[j] for j in range(lanes)]
            dist = 1
            while dist < lanes:
                level = [level[j] + level[j + dist] if j + dist < lanes else level[j]
                         for j in range(lanes)]
                dist *= 2
            m.d.sync += [sum_valid.eq(1), sum_word.eq(scan_word)]
            m.d.sync += [suffix[j].eq(level[j]) for j in range(lanes)]

        # scan stage 2: the threshold lane is the highest j with suffix[j] >= rem; all the
        # differences rem - suffix[j] are formed in parallel, then one is selected
        with m.If(sum_valid & ~found):
            diff = [Signal(signed(cnt_shape.width + 1), name=f"diff_{j}")
                    for j in range(lanes + 1)]
            m.d.comb += [diff[j].eq(rem - suffix[j]) for j in range(lanes)]
            m.d.comb += diff[lanes].eq(rem)                     # suffix[lanes] = 0
            reach = [diff[j] <= 0 for j in range(lanes + 1)]   # reach[lanes] is 0: rem >= 1
            hit_lane = Signal(lane_bits)
            hit_ties = Signal(cnt_shape)          # rem - suffix[hit_lane + 1]
            for j in range(lanes):
                with m.If(reach[j] & ~reach[j + 1]):
                    m.d.comb += [hit_lane.eq(j), hit_ties.eq(diff[j + 1])]
            with m.If(reach[0]):
                m.d.sync += [found.eq(1), thresh.eq(Cat(hit_lane, sum_word)),
                             ties.eq(hit_ties)]
            with m.Else():
                m.d.sync += rem.eq(diff[0])

        with m.FSM(name="fsm"):
            with m.State("IDLE"), m.If(self.start):
                bad = ((self.n == 0) | (self.n > self.max_tokens) | (self.k == 0)
                       | (self.k > self.n))
                m.d.sync += [
                    self.error.eq(bad), n.eq(self.n), k.eq(self.k), count.eq(0),
                    rem.eq(self.k), found.eq(0), kept.eq(0), scan_addr.eq(words - 1),
                    self.mask.eq(0),
                ]
                with m.If(~bad):
                    m.next = "LOAD"

            with m.State("LOAD"):
                accept = self.i.valid & self.i.ready
                m.d.comb += [
                    self.busy.eq(1),
                    self.i.ready.eq(count != n),
                    s_wr.addr.eq(count), s_wr.data.eq(self.i.payload), s_wr.en.eq(accept),
                    h_rd.addr.eq(self.i.payload[lane_bits:]),
                ]
                m.d.sync += [inc_valid.eq(accept), inc_word.eq(self.i.payload[lane_bits:]),
                             inc_lane.eq(self.i.payload[:lane_bits])]
                with m.If(accept):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == n - 1):
                        m.next = "SCAN"

            with m.State("SCAN"):
                m.d.comb += [self.busy.eq(1), h_rd.addr.eq(scan_addr)]
                m.d.sync += [scan_valid.eq(1), scan_word.eq(scan_addr),
                             scan_addr.eq(scan_addr - 1)]
                with m.If(scan_valid & (scan_word == 0)):     # last word is read now
                    m.d.sync += [scan_valid.eq(0), count.eq(0), o_valid.eq(0)]
                    m.next = "EMIT"

            with m.State("EMIT"):
                # scan stage 2 decides on the last word in the first EMIT cycle, before the
                # first beat (o_valid) needs thresh and ties
                keep = Signal()
                equal = s_rd.data == thresh
                m.d.comb += [
                    self.busy.eq(1),
                    keep.eq((s_rd.data > thresh) | (equal & (ties != 0))),
                    self.o.payload.index.eq(o_index),
                    self.o.payload.score.eq(s_rd.data),
                    self.o.payload.keep.eq(keep),
                ]
                if self.kept_only:
                    m.d.comb += [self.o.payload.last.eq(kept == k - 1),
                                 self.o.valid.eq(o_valid & keep)]
                    advance = ~o_valid | self.o.ready | ~keep
                else:
                    m.d.comb += [self.o.payload.last.eq(o_index == n - 1),
                                 self.o.valid.eq(o_valid)]
                    advance = ~o_valid | self.o.ready
                m.d.comb += [s_rd.addr.eq(count), s_rd.en.eq(advance)]
                with m.If(advance):
                    m.d.sync += [o_valid.eq(count != n), o_index.eq(count)]
                    with m.If(count != n):
                        m.d.sync += count.eq(count + 1)
                with m.If(o_valid & advance):                 # token o_index leaves
                    m.d.sync += self.mask.bit_select(o_index, 1).eq(keep)
                    with m.If(keep):
                        m.d.sync += kept.eq(kept + 1)
                    with m.If(equal & (ties != 0)):
                        m.d.sync += ties.eq(ties - 1)
                    with m.If(o_index == n - 1):
                        m.d.sync += [o_valid.eq(0), self.done.eq(1)]
                        m.next = "IDLE"
        return m


class ClsScore(wiring.Component):
    """Reduces the CLS-row probabilities of all heads of one token to its selector score.

    ``score = min(round_shift(sum_h p_h, shift), 2**score_width - 1)`` with
    ``shift = max(0, 8 - score_width)``, as in :func:`golden.token_prune.cls_scores`: the head
    sum saturates, keeping full resolution where the keep/prune boundary lies.

    Parameters
    ----------
    cfg : AccelConfig
        Uses ``score_width``.
    heads : int
        Number of attention heads, 1 to 64.

    Members
    -------
    i : In(stream.Signature(data.ArrayLayout(unsigned(8), heads)))
        One token's probabilities, one per head.
    o : Out(stream.Signature(unsigned(score_width)))
        Its score.

    Latency 1 cycle, throughput one token per cycle; ``i.ready`` follows ``o.ready`` when the
    output register is full (a stalled output stalls the input).
    """

    def __init__(self, cfg: AccelConfig, heads: int):
        with validating(self):
            check_config(cfg)
            check_width("heads", heads, 1, 64)
        self.cfg = cfg
        self.heads = heads
        self.shift = max(0, PROB_BITS - cfg.score_width)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(PROB_BITS), heads))),
            "o": Out(stream.Signature(unsigned(cfg.score_width))),
        })

    @property
    def latency(self) -> int:
        return 1

    def elaborate(self, platform):
        m = Module()
        sw = self.cfg.score_width
        raw = Signal(PROB_BITS + ceil_log2(self.heads) + 1)
        m.d.comb += raw.eq(sum(self.i.payload[h] for h in range(self.heads)))
        rounded = Signal(len(raw) + 1)
        if self.shift:
            m.d.comb += rounded.eq((raw + (1 << (self.shift - 1))) >> self.shift)
        else:
            m.d.comb += rounded.eq(raw)
        top = (1 << sw) - 1
        score = Mux(rounded > top, top, rounded[:sw])
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(score)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
