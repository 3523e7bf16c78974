"""Block-sparse weight decoder: the compressed stream of ``docs/sparse_format.md`` into the
GEMM engine's weight buffer, k-index buffer and per-tile counts.

The decoder parses and validates the byte layout of :mod:`golden.sparse_format` (version 1,
plain and hierarchical) and writes the engine's buffers directly, in the layout the sparse
feeder of :class:`rtl.gemm.GemmEngine` reads:

* ``wbuf[addr]`` / ``kbuf[addr]``: one word of ``cols`` weights and its ``k`` index per kept
  ``(tile, k)``, tile-major: output tile ``tj``'s words are consecutive, in ascending ``k``
  (exactly :func:`golden.sparse_format.tile_weight_words` and ``tile_schedule``);
* ``cbuf[tj]``: the number of ``k`` steps of output tile ``tj`` (0 for an empty block-row).

Input: ``cw``, a stream of beats of up to ``cols`` bytes (``data`` lanes ``0 .. n-1`` in stream
order, ``n <= cols``; ``last`` marks the final beat). A beat as wide as a weight word lets the
payload stream at one word per cycle; metadata fields (counts, indices, masks, header fields)
take one cycle each. A small byte aligner (``max(3 * cols - 1, cols + 3)`` bytes) re-aligns the
payload, which starts at arbitrary byte offsets.

Mapping: ``b_r`` must be a multiple of ``cols`` (``b_r = q * cols``). A payload column of block-row
``r`` (``b_r`` bytes for one kept ``k``) is ``q`` words, word ``s`` belonging to tile ``r*q + s``;
the decoder writes it at ``base_r + s * cnt_r + p`` (``cnt_r``: kept ``k`` of the block-row,
``p``: position of this ``k``), so the buffer is tile-major without any reordering memory. Words
of tiles past ``out_features`` (padding rows) are checked to be zero and not written.

Trade-offs: parsing the stream in hardware means one read of the compressed (smaller) weights
from memory and no host-side expansion; it costs one cycle per metadata field and a few cycles
per kept block, a few percent of the payload cycles. The entry memory keeps the block-row's
kept blocks (first ``k``, kept columns, mask) because the payload follows the whole index list.

Timing (the decoder is built to close 150 MHz on ECP5-class fabric): there is no multiplier.
``ceil(k / b_c)`` and the last block-column's width are found once per stream by repeated
subtraction, and ``index * b_c`` by stepping an accumulator up the block-columns (indices
increase within a block-row, so a block-row costs at most one cycle per block-column). The entry
memory is distributed RAM read asynchronously into a register (a block RAM's clock-to-output
alone would fill the cycle). Every state transition depends on registered flags (down-counters
reaching 1, remaining-room registers compared with a constant or one register, "n bytes
buffered" flags registered from the aligner's next level); value checks of the header, counts,
indices, masks, padding rows and weight range are registered (with whether their state applied
them) and then set a registered error that diverts the state machine to ``ERROR``, two cycles
after the check (nothing is written in between but weight words inside the buffer). The aligner's
``ready`` depends on registers only (an ``active`` flag and the level). The hierarchical column
sequence is a small pipeline (lowest mask bit isolated, then encoded, then added to the block's
first ``k``) primed in four cycles per kept block. The state register is one-hot in synthesis
(``fsm_encoding``); its power-up value then comes from the reset, which the platforms assert at
start. The cost: about ``ceil(k / b_c)`` cycles per stream and per block-row, one per block-row
and five per kept block, against two per kept block for a single-cycle multiply-and-compare
design. The longest remaining path is the aligner's: the parse state and a "bytes buffered"
flag select this cycle's consumption, which shifts the buffer (with the beat appended).

Checks (``error`` is raised, sticky until the next ``start``, and the rest of the stream is
drained up to its ``last`` beat so that nothing hangs): magic, version, unknown flags, reserved
field, ``b_r`` / ``b_c`` out of ``[1, 1024]``, ``b_r`` not a multiple of ``cols``, hierarchical
``b_c`` wider than ``MAX_MASK_BITS``, ``out_features`` / ``in_features`` different from the
command's ``n`` / ``k``, a count larger than the number of block-columns, an index out of range
or not strictly increasing, a bad column mask (empty, unused bits, past ``in_features``), nonzero
padding rows, a weight outside ``weight_width`` (when narrower than 8 bits), more words than
the weight buffer holds, kept blocks differing from the header, a wrong balanced flag, a
truncated stream (``last`` before the end), trailing bytes (``last`` after the end), and a beat
with ``n > cols``.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.config import AccelConfig

from .checks import check_config, validating

__all__ = ["MAGIC_WORD", "MAX_MASK_BITS", "SparseDecoder", "compressed_beat_layout"]

#: Widest hierarchical block (``b_c``) whose column mask the decoder holds.
MAX_MASK_BITS = 32
#: ``b"SVWB"`` read as a little-endian 32-bit word.
MAGIC_WORD = int.from_bytes(b"SVWB", "little")
_VERSION = 1
_MAX_BLOCK = 1024


def compressed_beat_layout(cfg: AccelConfig) -> data.StructLayout:
    """One beat of the compressed stream: ``n`` valid bytes in ``data[0 .. n-1]``, ``last``."""
    return data.StructLayout({
        "data": data.ArrayLayout(unsigned(8), cfg.cols),
        "n": unsigned(ceil_log2(cfg.cols + 1)),
        "last": 1,
    })


class SparseDecoder(wiring.Component):
    """Validating decoder of the compressed block-sparse weight format.

    Latency / throughput: one metadata field per cycle (a hierarchical mask one byte per cycle),
    one cycle per block-column stepped over in the index list, five cycles per kept block before
    its payload, then one payload word (``cols`` bytes) per cycle while the input keeps up
    (:func:`sim.perf.decode_cycles` is cycle-exact); ``done`` pulses one cycle after the last
    byte is parsed (or, on an error, after the stream's ``last`` beat). Stalls: an idle ``cw``
    stalls the parse; the write ports never stall.

    Members
    -------
    cw : In(stream.Signature(compressed_beat_layout))
        The compressed stream.
    start : In(1)
        Pulse: a new stream begins; ``exp_k`` / ``exp_n`` are the command's ``k`` / ``n``.
    exp_k, exp_n : In(range(max_gemm_dim + 1))
        Expected ``in_features`` / ``out_features``.
    busy : Out(1)
        Between ``start`` and ``done``.
    done : Out(1)
        Pulses when the stream is finished (with ``error`` valid).
    error : Out(1)
        The stream was malformed (sticky until the next ``start``).
    words : Out(range(weight_buffer_depth + 1))
        Weight words written.
    w_en, w_addr, w_data, w_k : Out
        Write port of the weight buffer and of the k-index buffer (same address).
    c_en, c_addr, c_data : Out
        Write port of the per-tile count buffer.
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self._cfg = cfg
        kmax = cfg.max_gemm_dim
        ntmax = -(-kmax // cfg.cols)
        super().__init__({
            "cw": In(stream.Signature(compressed_beat_layout(cfg))),
            "start": In(1),
            "exp_k": In(range(kmax + 1)),
            "exp_n": In(range(kmax + 1)),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "words": Out(range(cfg.weight_buffer_depth + 1)),
            "w_en": Out(1),
            "w_addr": Out(range(cfg.weight_buffer_depth)),
            "w_data": Out(data.ArrayLayout(signed(cfg.weight_width), cfg.cols)),
            "w_k": Out(range(kmax)),
            "c_en": Out(1),
            "c_addr": Out(range(ntmax)),
            "c_data": Out(range(kmax + 1)),
        })

    @property
    def config(self) -> AccelConfig:
        return self._cfg

    @staticmethod
    def buffer_bytes(cfg: AccelConfig) -> int:
        """Size of the byte aligner: room for a misaligned word stream and 4-byte fields."""
        return max(3 * cfg.cols - 1, cfg.cols + 3)

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        C = cfg.cols
        W = C                                   # bytes per input beat
        BUF = self.buffer_bytes(cfg)
        kmax = cfg.max_gemm_dim
        depth = cfg.weight_buffer_depth

        # ---- byte aligner ----------------------------------------------------------------
        buf = Signal(8 * BUF)
        level = Signal(range(BUF + 1))
        ended = Signal()
        take = Signal(range(BUF + 1))          # bytes consumed this cycle (comb, by the parser)
        active = Signal()                       # between start and done (registered)
        drop = Signal()                         # discard the buffer (comb)
        # Room is counted before this cycle's consumption, so that ``ready`` depends on the
        # level register and the state only; the buffer is sized (``3 * cols - 1`` bytes) so
        # that a misaligned payload still streams at one word per cycle.
        m.d.comb += self.cw.ready.eq(active & ~ended & (level <= BUF - W))
        beat = self.cw.payload
        n_in = Signal(range(2 ** beat.n.shape().width))
        m.d.comb += n_in.eq(beat.n)
        fire = Signal()
        m.d.comb += fire.eq(self.cw.valid & self.cw.ready)
        bad_beat = Signal()
        m.d.comb += bad_beat.eq(fire & (n_in > W))
        in_bytes = Signal(8 * W)
        m.d.comb += in_bytes.eq(beat.data.as_value())
        # The beat is appended behind the buffered bytes first (its position depends on the
        # level register only), then the parser's bytes are taken from the front. Bytes past
        # the level are don't-care (every read is guarded by the level), so the beat's unused
        # lanes need no masking: the beat overwrites the buffer from the level on.
        merged = Signal(8 * BUF)
        mlevel = Signal(range(BUF + 1))
        app = Signal(8 * BUF)
        m.d.comb += app.eq((in_bytes << (level * 8))[:8 * BUF])
        with m.If(fire):
            for i in range(BUF):
                m.d.comb += merged[8 * i:8 * i + 8].eq(
                    Mux(level > i, buf[8 * i:8 * i + 8], app[8 * i:8 * i + 8]))
            m.d.comb += mlevel.eq(level + Mux(n_in > W, 0, n_in))
        with m.Else():
            m.d.comb += [merged.eq(buf), mlevel.eq(level)]
        rest = Signal(8 * BUF)
        m.d.comb += rest.eq(merged)
        with m.Switch(take):
            for t in sorted({1, 2, 4, W}):
                with m.Case(t):
                    m.d.comb += rest.eq(merged >> (8 * t))
        with m.If(drop):
            m.d.sync += [buf.eq(0), level.eq(0)]
        with m.Else():
            m.d.sync += [buf.eq(rest), level.eq(mlevel - take)]
            with m.If(fire & beat.last):
                m.d.sync += ended.eq(1)
        # "n bytes are buffered and no bad beat was seen", registered from the next level.
        beat_err = Signal()
        clear = Signal()                        # a new stream starts (comb, by the parser)
        level_nx = Signal(range(BUF + 1))
        m.d.comb += level_nx.eq(Mux(drop | clear, 0, mlevel - take))
        have = {}
        for t in sorted({1, 2, 4, W}):
            have[t] = Signal(name=f"have{t}")
            m.d.sync += have[t].eq((level_nx >= t) & ~clear & ~beat_err & ~bad_beat)

        u8, u16, u32 = buf[:8], buf[:16], buf[:32]

        # ---- parse state -----------------------------------------------------------------
        ntmax = -(-kmax // C)
        nmax = min(kmax, _MAX_BLOCK)            # columns of a block that exist
        hier = Signal()
        bal = Signal()
        br = Signal(range(_MAX_BLOCK + 1))
        bc = Signal(range(_MAX_BLOCK + 1))
        left = Signal(32)                       # kept blocks announced and not seen yet
        rem = Signal(range(_MAX_BLOCK + 1))
        q = Signal(range(_MAX_BLOCK + 1))
        ck = Signal(range(kmax + 1))
        cn = Signal(range(kmax + 1))
        rem_k = Signal(range(kmax + 1))
        nbc = Signal(range(kmax + 1))           # block-columns: ceil(k / b_c)
        lastw = Signal(range(_MAX_BLOCK + 1))   # columns of the last block-column
        vb_full = Signal(MAX_MASK_BITS)         # valid mask bits of a full / the last block
        vb_last = Signal(MAX_MASK_BITS)
        ch_row = Signal(range(kmax + _MAX_BLOCK + 1))   # first output channel of the block-row
        tile_row = Signal(range(ntmax + _MAX_BLOCK + 1))  # first tile of the block-row
        first_row = Signal()
        first_cnt = Signal(16)
        uneven = Signal()
        cnt = Signal(16)
        e = Signal(16)
        cols_r = Signal(range(kmax + 1))
        base = Signal(range(depth + 1))
        mask = Signal(MAX_MASK_BITS)
        mbyte = Signal(range(MAX_MASK_BITS // 8 + 1))
        pcnt = Signal(range(MAX_MASK_BITS + 1))  # kept columns of the mask bytes before mlast
        mlast = Signal(8)                       # the last mask byte read
        idx = Signal(16)
        wc = Signal(range(kmax + 1))            # block-column reached by the walk
        wk = Signal(range(kmax + _MAX_BLOCK + 1))  # wc * b_c, by repeated addition
        ncols = Signal(range(nmax + 1))         # columns of the block being parsed
        vbits = Signal(MAX_MASK_BITS)
        s_last = Signal()                       # last word of the payload column: s + 1 == q
        q1 = Signal()                           # q == 1
        pos_addr = Signal(range(depth + kmax + 1))
        waddr = Signal(range(depth + _MAX_BLOCK * (kmax + 1) + 1))
        ctile = Signal(range(ntmax + _MAX_BLOCK + 1))
        cs = Signal(range(_MAX_BLOCK + 1))
        prime = Signal(2)

        # Entry memory: per kept block of the block-row, its first k, its kept columns and
        # (hierarchical) its column mask. Read asynchronously and registered at once, so that
        # it maps to distributed RAM with a short read path.
        entry_layout = data.StructLayout({"kb": unsigned(ceil_log2(kmax + 1)),
                                          "n": unsigned(ceil_log2(nmax + 1)),
                                          "mask": unsigned(MAX_MASK_BITS)})
        m.submodules.entries = entries = memory.Memory(
            shape=entry_layout, depth=kmax, init=[], attrs={"ram_style": "distributed"})
        ent_wr = entries.write_port()
        ent_rd = entries.read_port(domain="comb")
        m.d.comb += ent_rd.addr.eq(e)
        ent = Signal(entry_layout)
        # The column sequence of the block being written: k of this column (``kcol``), of the
        # next one (``knext``); for the one after, its offset (``gj``, plain) or its mask bit
        # (``glow``, hierarchical), and the mask bits left (``gm``).
        kcol = Signal(range(kmax))
        knext = Signal(range(kmax + _MAX_BLOCK + 1))
        gj = Signal(range(nmax + 1))
        gm = Signal(MAX_MASK_BITS)
        cur_j = Signal(range(nmax + 1))
        j_last = Signal()
        e_last = Signal()
        # Hierarchical: ``glow`` is the lowest mask bit left (one-hot, registered), so that
        # isolating the next bit (a carry chain) and encoding it (an OR tree) are in
        # different cycles.
        glow = Signal(MAX_MASK_BITS)
        glow_enc = Signal(range(MAX_MASK_BITS))
        for b in range(glow_enc.shape().width):
            m.d.comb += glow_enc[b].eq(
                Cat(*[glow[i] for i in range(MAX_MASK_BITS) if (i >> b) & 1]).any())

        def gen_step():
            """Advance the column generator by one kept column."""
            m.d.sync += [knext.eq(ent.kb + Mux(hier, glow_enc, gj)), gj.eq(gj + 1),
                         glow.eq(gm & (~gm + 1)), gm.eq(gm & (gm - 1))]

        def thermometer(v):
            """The ``v`` low bits set (all of them from ``MAX_MASK_BITS`` on)."""
            return Cat(*[v > i for i in range(MAX_MASK_BITS)])

        def popcount8(v):
            pairs = [v[i] + v[i + 1] for i in range(0, 8, 2)]
            return (pairs[0] + pairs[1]) + (pairs[2] + pairs[3])

        mask_bytes = Signal(range(MAX_MASK_BITS // 8 + 1))

        with m.If(bad_beat):
            m.d.sync += beat_err.eq(1)

        def need(nbytes):
            """Condition 'nbytes are buffered' (and no bad beat); else the truncation error."""
            ok = have[nbytes]
            with m.If((~ok & ended) | beat_err):
                m.next = "ERROR"
            return ok

        # Registered conditions: every state decides from flip-flops (or a compare of the
        # aligner level with a constant), never from a wide compare of this cycle's bytes.
        # Checks of field values set ``lerr`` (two cycles later), which sends the state of that
        # cycle to ERROR.
        lerr = Signal()
        rem_gt = Signal()                       # rem > cols
        rk_gt = Signal()                        # rem_k > b_c
        row_end = Signal()                      # ch_row >= n
        left_zero = Signal()
        walk_done = Signal()                    # wc == idx
        e_fin = Signal()                        # e + 1 == cnt (parse phase)
        cnt_zero = Signal()
        mask_fin = Signal()                     # mbyte == mask_bytes
        cnt_done = Signal()                     # cs == q or tile ctile past n
        pad = Signal(C)                         # lane of the current word past n
        pad_row = Signal(C)                     # lane of the block-row's first word past n
        w_ok = Signal()                         # waddr < depth

        sgn = signed(ceil_log2(kmax + 2 * _MAX_BLOCK + 1) + 1)
        rem_row = Signal(sgn)                   # n - first channel of the block-row
        rem_ch = Signal(sgn)                    # n - first channel of the current word
        crem = Signal(sgn)                      # n - first channel of tile ctile
        wsgn = signed(len(waddr) + 1)
        wroom = Signal(wsgn)                    # depth - waddr
        proom = Signal(wsgn)                    # depth - pos_addr
        csl = Signal(range(_MAX_BLOCK + 1))     # q - cs
        sl = Signal(range(_MAX_BLOCK + 1))      # q - 1 - s
        jl = Signal(range(nmax + 1))            # n - 1 - cur_j
        el = Signal(16)                         # cnt - 1 - e
        wl = Signal(16)                         # idx - wc
        wr = Signal(range(kmax + 1))            # nbc - 1 - wc
        wlast = Signal()                        # wc + 1 == nbc

        def past_n(rem_expr):
            """Lanes of a word whose channels left (``n - ch``) are ``rem_expr`` past n."""
            return Cat(*[rem_expr <= lane for lane in range(C)])

        checks = []
        pending = Signal()                      # a check failed in the previous cycle

        def check(cond):
            """A value check of this state: its result and whether the state applied it are
            registered, then combined into ``lerr`` (two cycles after the check)."""
            now = Signal()
            m.d.comb += now.eq(1)
            checks.append((now, cond))

        def late_error():
            with m.If(lerr):
                m.next = "ERROR"

        with m.FSM(name="parse") as fsm:
            with m.State("IDLE"), m.If(self.start):
                m.d.comb += clear.eq(1)
                m.d.sync += [self.error.eq(0), ended.eq(0), buf.eq(0), level.eq(0),
                             ck.eq(self.exp_k), cn.eq(self.exp_n), self.words.eq(0),
                             first_row.eq(1), uneven.eq(0), base.eq(0), lerr.eq(0), active.eq(1),
                             ch_row.eq(0), tile_row.eq(0), q.eq(0), beat_err.eq(0)]
                m.next = "MAGIC"
            with m.State("MAGIC"):
                with m.If(need(4)):
                    m.d.comb += take.eq(4)
                    m.next = "VERSION"
                    check(u32 != MAGIC_WORD)
            with m.State("VERSION"):
                with m.If(need(2)):
                    m.d.comb += take.eq(2)
                    m.d.sync += [hier.eq(buf[8]), bal.eq(buf[9])]
                    m.next = "BR"
                    check((u8 != _VERSION) | (buf[10:16] != 0))
                late_error()
            with m.State("BR"):
                with m.If(need(2)):
                    m.d.comb += take.eq(2)
                    m.d.sync += [br.eq(u16), rem.eq(u16), rem_gt.eq(u16 > C)]
                    m.next = "BC"
                    check((u16 == 0) | (u16 > _MAX_BLOCK))
                late_error()
            with m.State("BC"):
                with m.If(need(2)):
                    m.d.comb += take.eq(2)
                    m.d.sync += bc.eq(u16)
                    m.next = "RESERVED"
                    check((u16 == 0) | (u16 > _MAX_BLOCK) | (hier & (u16 > MAX_MASK_BITS)))
                late_error()
            with m.State("RESERVED"):
                m.d.sync += [vb_full.eq(thermometer(bc[:6])),
                             mask_bytes.eq((bc[:6] + 7) >> 3)]
                with m.If(need(2)):
                    m.d.comb += take.eq(2)
                    m.next = "OUT"
                    check(u16 != 0)
                late_error()
            with m.State("OUT"):
                with m.If(need(4)):
                    m.d.comb += take.eq(4)
                    m.next = "IN"
                    check(u32 != cn)
                late_error()
            with m.State("IN"):
                with m.If(need(4)):
                    m.d.comb += take.eq(4)
                    m.next = "TOTAL"
                    check(u32 != ck)
                late_error()
            with m.State("TOTAL"):
                m.d.sync += [rem_k.eq(ck), nbc.eq(0), rk_gt.eq(ck > bc)]
                with m.If(need(4)):
                    m.d.comb += take.eq(4)
                    m.d.sync += left.eq(u32)
                    m.next = "QDIV"
                late_error()
            with m.State("QDIV"):
                # q = b_r / cols by repeated subtraction; b_r must be a multiple of cols.
                m.d.sync += [q.eq(q + 1), rem.eq(rem - C), rem_gt.eq(rem > 2 * C),
                             left_zero.eq(left == 0)]
                with m.If(~rem_gt):
                    m.next = "NBC"
                    check(rem != C)
                late_error()
            with m.State("NBC"):
                # Block-columns ceil(k / b_c) and the width of the last one, by repeated
                # subtraction (one cycle per block-column).
                m.d.sync += [q1.eq(q == 1), row_end.eq(cn == 0), rem_row.eq(cn)]
                with m.If(rk_gt):
                    m.d.sync += [rem_k.eq(rem_k - bc), nbc.eq(nbc + 1),
                                 rk_gt.eq(rem_k > (bc << 1))]
                with m.Else():
                    m.d.sync += [lastw.eq(rem_k),
                                 vb_last.eq(thermometer(rem_k[:6])),
                                 nbc.eq(nbc + (rem_k != 0))]
                    m.next = "ROW"
                late_error()
            with m.State("ROW"):
                m.d.sync += [wr.eq(nbc - 1), wlast.eq(nbc == 1)]
                with m.If(row_end):
                    m.next = "END"
                with m.Else():
                    m.next = "COUNT"
                late_error()
            with m.State("COUNT"):
                with m.If(need(2)):
                    m.d.comb += take.eq(2)
                    m.d.sync += [cnt.eq(u16), e.eq(0), cols_r.eq(0), left.eq(left - u16),
                                 cnt_zero.eq(u16 == 0),
                                 e_fin.eq(u16 == 1), el.eq(u16 - 1), first_row.eq(0),
                                 ctile.eq(tile_row), crem.eq(rem_row), csl.eq(q),
                                 cnt_done.eq(0), pad_row.eq(past_n(rem_row)),
                                 wc.eq(0), wk.eq(0)]
                    with m.If(first_row):
                        m.d.sync += first_cnt.eq(u16)
                    with m.Elif(u16 != first_cnt):
                        m.d.sync += uneven.eq(1)
                    m.next = "ROUTE"
                    check((u16 > nbc) | (u16 > left))
                late_error()
            with m.State("ROUTE"):
                m.d.sync += left_zero.eq(left == 0)
                with m.If(cnt_zero):
                    m.next = "CNT"
                with m.Else():
                    m.next = "INDEX"
                late_error()
            with m.State("INDEX"):
                with m.If(need(2)):
                    m.d.comb += take.eq(2)
                    m.d.sync += [idx.eq(u16), mask.eq(0), mbyte.eq(0), mask_fin.eq(0), pcnt.eq(0),
                                 mlast.eq(0),
                                 walk_done.eq(u16 == wc), wl.eq(u16 - wc)]
                    m.next = "WALK"
                    check((u16 >= nbc) | ((e != 0) & (u16 <= idx)))
                late_error()
            with m.State("WALK"):
                # wk = idx * b_c: step the block-column up to the index (indices increase).
                with m.If(walk_done):
                    m.d.sync += [ncols.eq(Mux(wlast, lastw, bc)),
                                 vbits.eq(Mux(wlast, vb_last, vb_full))]
                    with m.If(hier):
                        m.next = "MASK"
                    with m.Else():
                        m.next = "STORE"
                with m.Else():
                    m.d.sync += [wc.eq(wc + 1), wk.eq(wk + bc), wl.eq(wl - 1),
                                 walk_done.eq(wl == 1), wr.eq(wr - 1), wlast.eq(wr == 1)]
                late_error()
            with m.State("MASK"):
                byte_ok = need(1)
                with m.If(mask_fin):
                    m.d.sync += ncols.eq(pcnt + popcount8(mlast))
                    m.next = "STORE"
                    check((mask == 0) | ((mask & ~vbits) != 0))
                with m.Elif(byte_ok):
                    m.d.comb += take.eq(1)
                    m.d.sync += [mbyte.eq(mbyte + 1), mask_fin.eq(mbyte + 1 == mask_bytes),
                                 pcnt.eq(pcnt + popcount8(mlast)), mlast.eq(u8),
                                 mask.eq(mask | (u8 << (mbyte * 8))[:MAX_MASK_BITS])]
                    # Bits past MAX_MASK_BITS cannot occur: b_c <= MAX_MASK_BITS here.
                late_error()
            with m.State("STORE"):
                m.d.comb += [ent_wr.en.eq(1), ent_wr.addr.eq(e),
                             ent_wr.data.kb.eq(wk), ent_wr.data.n.eq(ncols),
                             ent_wr.data.mask.eq(mask)]
                m.d.sync += [e.eq(e + 1), cols_r.eq(cols_r + ncols), el.eq(el - 1),
                             e_fin.eq(el == 1)]
                with m.If(e_fin):
                    m.next = "CNT"
                with m.Else():
                    m.next = "INDEX"
                late_error()
            with m.State("CNT"):
                # Counts of the block-row's tiles (those before out_features).
                with m.If(cnt_done):
                    m.d.sync += [e.eq(0), el.eq(cnt - 1), pos_addr.eq(base), waddr.eq(base),
                                 w_ok.eq(base < depth), wroom.eq(depth - base),
                                 proom.eq(depth - base), rem_ch.eq(rem_row),
                                 sl.eq(q - 1), s_last.eq(q1), pad.eq(pad_row)]
                    with m.If(cnt_zero):
                        m.next = "ROWEND"
                    with m.Else():
                        m.next = "FETCH"
                with m.Else():
                    m.d.comb += [self.c_en.eq(1), self.c_addr.eq(ctile), self.c_data.eq(cols_r)]
                    m.d.sync += [cs.eq(cs + 1), ctile.eq(ctile + 1), csl.eq(csl - 1),
                                 crem.eq(crem - C), cnt_done.eq((csl == 1) | (crem <= C))]
                late_error()
            with m.State("FETCH"):
                # Entry e: registered, then the column generator is primed (4 cycles).
                m.d.sync += [ent.eq(ent_rd.data), e_last.eq(el == 0), prime.eq(0)]
                m.next = "PRIME"
                late_error()
            with m.State("PRIME"):
                m.d.sync += prime.eq(prime + 1)
                with m.If(prime == 0):
                    m.d.sync += [gm.eq(ent.mask), gj.eq(0), cur_j.eq(0), jl.eq(ent.n - 1),
                                 j_last.eq(ent.n == 1)]
                with m.Elif(prime == 1):
                    with m.If(hier):
                        m.d.sync += [glow.eq(gm & (~gm + 1)), gm.eq(gm & (gm - 1))]
                with m.Elif(prime == 2):
                    gen_step()
                with m.Else():
                    m.d.sync += kcol.eq(knext)
                    gen_step()
                    m.next = "COLUMN"
                late_error()
            with m.State("COLUMN"):
                exists = ~pad[0]
                with m.If(need(W)):
                    m.d.comb += take.eq(W)
                    word = buf[:8 * W]
                    pad_bad = Signal()
                    for lane in range(C):
                        byte = word[8 * lane:8 * lane + 8]
                        with m.If(pad[lane] & (byte != 0)):
                            m.d.comb += pad_bad.eq(1)
                        if cfg.weight_width < 8:
                            # The format holds int8: a value outside weight_width is an error.
                            top = byte.as_signed() >> (cfg.weight_width - 1)
                            with m.If((top != 0) & (top != -1)):
                                m.d.comb += pad_bad.eq(1)
                        m.d.comb += self.w_data[lane].eq(byte.as_signed())
                    m.d.comb += [self.w_addr.eq(waddr), self.w_k.eq(kcol)]
                    with m.If(exists):
                        m.d.comb += self.w_en.eq(w_ok)
                        m.d.sync += self.words.eq(self.words + 1)
                    m.d.sync += [sl.eq(sl - 1), s_last.eq(sl == 1), rem_ch.eq(rem_ch - C),
                                 pad.eq(past_n(rem_ch - C)), waddr.eq(waddr + cols_r),
                                 wroom.eq(wroom - cols_r), w_ok.eq(wroom > cols_r)]
                    with m.If(s_last):
                        # Next kept column.
                        m.d.sync += [sl.eq(q - 1), rem_ch.eq(rem_row),
                                     pad.eq(pad_row), pos_addr.eq(pos_addr + 1),
                                     waddr.eq(pos_addr + 1), proom.eq(proom - 1),
                                     wroom.eq(proom - 1), w_ok.eq(proom > 1),
                                     cur_j.eq(cur_j + 1), kcol.eq(knext), s_last.eq(q1),
                                     jl.eq(jl - 1), j_last.eq(jl == 1)]
                        gen_step()
                        with m.If(j_last):
                            m.d.sync += [e.eq(e + 1), el.eq(el - 1)]
                            with m.If(e_last):
                                m.next = "ROWEND"
                            with m.Else():
                                m.next = "FETCH"
                    check(pad_bad)
                    with m.If(exists & ~w_ok):
                        m.next = "ERROR"
                late_error()
            with m.State("ROWEND"):
                m.d.sync += [base.eq(self.words), ch_row.eq(ch_row + br),
                             tile_row.eq(tile_row + q), rem_row.eq(rem_row - br),
                             row_end.eq(rem_row <= br)]
                m.next = "ROW"
                late_error()
            with m.State("END"):
                with m.If(~left_zero | (bal == uneven) | (level != 0) | beat_err):
                    m.next = "ERROR"
                with m.Elif(ended & ~lerr & ~pending):
                    m.d.sync += active.eq(0)
                    m.next = "DONE"
                late_error()
            with m.State("ERROR"):
                # Drain the rest of the stream up to its last beat.
                m.d.comb += [drop.eq(1)]
                m.d.sync += self.error.eq(1)
                with m.If(ended | (self.cw.valid & beat.last & (level <= BUF - W))):
                    m.d.sync += active.eq(0)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        # One-hot state register in synthesis: short next-state logic for this many states.
        fsm.state.attrs["fsm_encoding"] = "one-hot"
        hits = []
        for now, cond in checks:
            applied, failed = Signal(), Signal()
            m.d.sync += [applied.eq(now), failed.eq(cond)]
            hits.append(applied & failed)
        m.d.comb += pending.eq(Cat(*hits).any())
        with m.If(pending):
            m.d.sync += lerr.eq(1)
        m.d.comb += self.busy.eq(active | self.done)
        return m
