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
payload stream at one word per cycle; metadata fields (counts, indices, header fields, mask
bytes) take one cycle each. A small byte aligner (``max(3 * cols - 1, cols + 3)`` bytes as flow
control counts them, one beat more held) re-aligns the payload, which starts at arbitrary byte
offsets.

Mapping: ``b_r`` must be a multiple of ``cols`` (``b_r = q * cols``). A payload column of block-row
``r`` (``b_r`` bytes for one kept ``k``) is ``q`` words, word ``s`` belonging to tile ``r*q + s``;
the decoder writes it at ``base_r + s * cnt_r + p`` (``cnt_r``: kept ``k`` of the block-row,
``p``: position of this ``k``), so the buffer is tile-major without any reordering memory. Words
of tiles past ``out_features`` (padding rows) are checked to be zero and not written.

Pipeline: the stream is consumed in order by one parser (count, index list, payload of each
block-row), and everything else runs beside it so that the payload of consecutive kept blocks
streams without a bubble:

* ``kstart``, a table of ``c * b_c`` for every block-column ``c``, is written once per stream
  while the block-columns are counted (``ceil(k / b_c)`` cycles of repeated subtraction, which
  the header needed anyway): a kept block's first ``k`` is one table read, neither a walk over
  the block-columns nor a multiplication;
* the index list is stored in the entry memory at one index per cycle (hierarchical: one more
  cycle per mask byte, the entry stored the cycle after its last mask byte);
* a column generator expands the stored entries into the ``k`` of every kept column: an entry
  register (read from the entry memory as soon as the entry is stored), a block register (the
  block's first ``k`` from ``kstart``, the next column's offset or, hierarchical, its isolated
  mask bit, the columns left) and a two-column queue whose front is the ``k`` of the next
  payload column. The block register emits a column while the queue holds fewer than two and
  takes the next entry when it emits its block's last column, so the generator primes itself
  while the rest of the index list is parsed and then delivers one column per cycle across
  block boundaries;
* the per-tile counts of a block-row are written by a small side unit, one per cycle, from the
  second cycle after the block-row's last payload word (an empty block-row's once the previous
  block-row's are written), while the next block-row's count and index list are parsed.

Write order (:mod:`rtl.gemm` relies on it): the count of output tile ``tj`` is written
(``c_en``) only after every weight word of tile ``tj`` has been written, and counts are written
in increasing ``tj`` order. (A block-row's tiles receive their last words in its last payload
column; its counts follow that column, and a block-row's counts are written before the next
block-row's last column, since that block-row has at least ``q + 2`` cycles of count, index and
payload and the counts take at most ``q``.)

Timing per block-row, from its count (1 cycle) and index list (one cycle per index,
hierarchical: plus one per mask byte) to its payload (one cycle per word): the payload waits
``max(0, 4 - cnt)`` cycles after the last index for ``cnt`` kept blocks (``max(2, 4 - cnt)``
with ``q > 1``, whose addressing waits for the block-row's column count); hierarchical:
``max(0, 5 - cnt)`` cycles after the last mask byte (``max(3, 5 - cnt)`` with ``q > 1``). An
empty block-row costs its count, the wait for the previous block-row's counts, one cycle, one
per tile count and one cycle. A beat is parsed two cycles after it is taken (the input
register), and ``done`` follows the last block-row's tile counts.
:func:`sim.perf.decode_timeline` replays these registers cycle by cycle and is exact.

Timing (built for ECP5-class fabric, see ``docs/fpga_flow.md``): there is no multiplier, and
no carry chain behind a compare of this cycle's bytes. The entry memory and ``kstart`` are
distributed RAM read asynchronously from a register into a register (a block RAM's
clock-to-output alone would fill the cycle); the entry memory's write data does not depend on
the state (a plain entry is written from the index bytes, a hierarchical one from registers)
and its write enable is one state bit (plain and hierarchical index lists are two states,
``INDEX`` and ``HINDEX``) and one flag.

* Aligner: a beat taken from ``cw`` waits a cycle in an input register, so no path starts at the
  stream's ``valid`` or payload but that register's load (its bytes load every cycle, its byte
  count is gated by the handshake: ``fire`` drives no enable or flip-flop reset). ``ready``
  depends on registers only. The beat's bytes enter the buffer in the next cycle whether or not
  flow control counts it in (the buffer is ``cols`` bytes larger than the ``BUF`` that flow
  control counts; a beat refused for room lies on top, counted as held until the level without
  it has room), so the buffer's next level and bytes do not depend on the room. The level is a
  thermometer register (``lv``) and its low bits in binary (``lmb``), which place a beat's
  lanes: a buffer byte's next value is a mux of the lanes by those flip-flops (a LUT and a
  PFUMX), the level bit's mux, then the take mux; the level's is a one-hot shift of the
  thermometer by the beat's bytes, then the take mux. The bytes taken this cycle are the state's
  field size (``tsel``, a one-hot register loaded with every transition, as the state register
  is) when that many bytes are buffered (a bit of ``lv``), encoded as the select of one mux per
  buffer bit and level bit (``tcode``, one LUT from flip-flops). The select drives every buffer
  bit, so it exists twice, each copy from its own ``tsel`` register (the second stored inverted,
  so that synthesis keeps both) and driving half of the buffer; the state machine reads its own
  copy of the level's low bits (``lvp_n``, inverted), so the aligner's level and the state's
  conditions are placed apart. Nothing resets the aligner but the drain of ``ERROR`` (it is
  empty at ``IDLE``). The written word's data, address and ``k`` come from registers whatever
  the state; only ``w_en`` depends on it.
* State transitions depend on registered flags: down-counters reaching 1, rooms kept with an
  offset so that "room after this step" is a sign bit (``proom``, ``wr2``), padding lanes of
  the next word registered a word ahead (``pad_nx``), "last block-row" from a register, the
  aligner's flags, the generator's valid bits and queue-full flag, and the low bits of a count
  (a count past ``max_gemm_dim`` is an error anyway).
* Value checks (header, indices, masks, padding rows, weight range, buffer overflow) register
  whether their state applied them and whether they failed; the count's checks (against
  the block-columns, the kept blocks left, the first block-row's count) are made from registers
  the cycle after the count, and truncation (a state waiting for bytes after the stream's
  ``last``) or a bad beat is a registered flag as well. Any of them sets ``lerr``, which
  diverts the state machine to ``ERROR`` (two or three cycles after the check; nothing is
  written in between but weight words and tile counts inside the buffers).
* The payload state exists twice, ``COLUMN`` (the queue holds a column: take a word when ``cols``
  bytes are buffered) and ``CWAIT`` (it does not), so the generator is not on the aligner's path;
  the generator's own moves are decided from its registers (a queue-full flag, not the parser's
  ``pop``, and a registered flag that ENT or S0 is empty, so that the entry read address is one LUT
  from flip-flops), and its entry and block registers load whenever they are free (their valid bits
  say whether the load was valid), so that their wide data enables wait for neither the source's
  valid bit nor the entry memory's fill level. A kept column's ``k`` is the block's first ``k``
  plus a registered offset: plain, a counter; hierarchical, the offset of the block's first kept
  column (found while its mask bytes are parsed, a table per byte, and stored with the entry) or of
  the mask bit isolated in the previous cycle (a carry chain), encoded by an OR tree. A block's
  last column is found by a down-counter of its columns (hierarchical: the mask's population count,
  a table per mask byte, summed while the bytes are parsed).

The state register is one-hot in synthesis (``fsm_encoding``); its power-up value then comes
from the reset, which the platforms assert at start.

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

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
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

    Latency / throughput: a beat is parsed two cycles after it is taken; one metadata field per
    cycle (a hierarchical mask one byte per cycle), one payload word (``cols`` bytes) per cycle
    while the input keeps up, with no bubble between kept blocks and a short wait before the
    first word of a block-row (at most five cycles, see the module docstring;
    :func:`sim.perf.decode_cycles` is cycle-exact); ``done`` pulses two cycles after the last
    tile count is written (or, on an error, after the stream's ``last`` beat). Stalls: an idle
    ``cw`` stalls the parse; the write ports never stall.

    Write order: the count of output tile ``tj`` is written (``c_en``) only after every weight
    word of tile ``tj`` has been written, and counts are written in increasing ``tj`` order,
    once per stream for every tile ``tj < ceil(n / cols)`` (0 for an empty block-row).

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
    tiles_done : Out(range(ntmax + _MAX_BLOCK + 1))
        Output tiles (``cols`` output channels each) whose weight words and count have all been
        written: the number of counts written so far (0 from ``start``; it grows by one in the
        cycle after each ``c_en``, see the write order above), so a consumer may start tile
        ``tj`` once ``tj < tiles_done``. Words written before an error is found are not
        retracted: ``error`` voids them.
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
            "tiles_done": Out(range(ntmax + _MAX_BLOCK + 1)),
        })

    @property
    def config(self) -> AccelConfig:
        return self._cfg

    @staticmethod
    def buffer_bytes(cfg: AccelConfig) -> int:
        """Size of the byte aligner as flow control counts it (it holds one beat more): room
        for a misaligned word stream and 4-byte fields."""
        return max(3 * cfg.cols - 1, cfg.cols + 3)

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        C = cfg.cols
        W = C                                   # bytes per input beat
        BUF = self.buffer_bytes(cfg)
        kmax = cfg.max_gemm_dim
        depth = cfg.weight_buffer_depth

        # ---- input register and byte aligner ---------------------------------------------
        # A beat taken from ``cw`` waits one cycle in the input register (``s_*``), so that
        # nothing but that register depends on the stream's valid and payload, and enters the
        # aligner in the next cycle, while the next beat is taken.
        # ``buf`` holds ``level`` bytes (byte 0 first); bytes past the level are don't-care
        # (every read is guarded by the level), so nothing is cleared but the level. The level
        # is kept as a thermometer (``lv[i] = level > i``), so that "byte i is buffered" and
        # "n bytes are buffered" are flip-flops, and as its low bits (``lmb``, the level modulo
        # ``M``, a power of two at least ``cols``), which place an incoming beat's lanes.
        #
        # Flow control counts a beat as held in the input register until the aligner has room
        # for it: ``level <= BUF - cols``, the level before this cycle's consumption, so that
        # ``ready`` depends on registers only (``BUF = 3 * cols - 1`` bytes let a misaligned
        # payload stream at one word per cycle). Its bytes enter the buffer the cycle after it
        # is taken all the same, into ``cols`` more bytes: a beat refused there lies on top,
        # counted as held (``vheld``) until the level without it has room. So neither the
        # buffer's bytes nor its level depend on the room, and ``ready`` and the parse are
        # those of a buffer of ``BUF`` bytes.
        sizes = sorted({1, 2, 4, W})
        PB = BUF + W                            # bytes held
        buf = Signal(8 * PB)
        lv = Signal(PB)
        lb = ceil_log2(W)
        M = 1 << lb
        lmb = Signal(lb)                        # level modulo M
        ended = Signal()                        # the last beat has been taken from cw
        active = Signal()                       # between start and done (registered)
        drop = Signal()                         # discard the buffer (comb)
        beat_err = Signal()                     # a beat with n > cols was seen (sticky)
        beat = self.cw.payload
        s_valid = Signal()
        s_oh = Signal(W + 1, init=1)            # its bytes, one-hot (0 if n > cols or empty)
        s_data = Signal(8 * W)
        s_nb = Signal(lb)                       # its bytes modulo M (0 when empty)
        vheld = Signal()                        # the beat on top is still counted as held
        v_oh = Signal(W + 1)                    # ... its bytes, one-hot
        # Room for the held beat: the level without it is at most ``BUF - cols``.
        room = Signal()
        held = Signal()
        m.d.comb += [held.eq(s_valid | vheld),
                     room.eq(Mux(vheld, Cat(*[v_oh[k] & ~lv[BUF - W + k]
                                              for k in range(W + 1)]).any(),
                                 ~lv[BUF - W])),
                     self.cw.ready.eq(active & ~ended & (~held | room | drop))]
        fire = Signal()
        m.d.comb += fire.eq(self.cw.valid & self.cw.ready)
        with m.If(s_valid):
            m.d.sync += [vheld.eq(~room), v_oh.eq(s_oh)]
        with m.Elif(room):
            m.d.sync += vheld.eq(0)
        # The input register loads every cycle: its bytes whatever the handshake (they are
        # placed above the level unless the register is valid), its byte count gated by the
        # handshake (an AND, not a flip-flop reset: ``fire`` drives no enable or reset).
        n_in = beat.n
        f_in = Signal()                         # a beat enters the aligner
        m.d.comb += f_in.eq(fire & ~drop)
        m.d.sync += [s_valid.eq(f_in), s_data.eq(beat.data.as_value()),
                     s_oh.eq(Cat(~f_in | (n_in == 0) | (n_in > W),
                                 *[f_in & (n_in == k) for k in range(1, W + 1)])),
                     s_nb.eq(Mux(n_in > W, 0, n_in) & f_in.replicate(lb))]
        with m.If(fire):
            with m.If(n_in > W):
                m.d.sync += beat_err.eq(1)
            with m.If(beat.last):
                m.d.sync += ended.eq(1)
        fin = Signal()                          # every byte of the stream is in the aligner
        m.d.comb += fin.eq(ended & ~held)
        lanes = [s_data[8 * i:8 * i + 8] for i in range(W)]
        # "t bytes are buffered", the held beat counted out: a held beat lies above at least
        # ``BUF - cols + 1 - max(sizes)`` bytes (it was refused above ``BUF - cols``, and at most
        # ``max(sizes)`` were taken since), so from ``cols = 4`` on a level bit is enough.
        # The parse state machine reads its own copy of the level's low bits (``lvp_n``, stored
        # inverted so that synthesis keeps both copies): the aligner's level drives the take
        # muxes, the copy the state transitions and enables, placed apart.
        NP = min(PB, max(sizes) + W)
        lvp_n = Signal(NP, init=(1 << NP) - 1)

        def have_of(level):
            if BUF - W + 1 >= 2 * max(sizes):
                return {t: level[t - 1] for t in sizes}
            return {t: Mux(vheld, Cat(*[v_oh[k] & level[t - 1 + k] for k in range(W + 1)]).any(),
                           level[t - 1]) for t in sizes}

        have = have_of(lv)                      # the aligner's
        have_p = have_of(~lvp_n)                # the parser's
        # Bytes consumed this cycle: the parse state's field size (``tsel``, one-hot, a register
        # set with every state transition) when that many bytes are buffered, encoded
        # (``tcode``: 0 for none, else the size's rank; one LUT from flip-flops) as the select
        # of the muxes below. The select drives every buffer bit: it exists twice, each copy
        # driving half of the buffer, the second from a copy of ``tsel`` stored inverted (so
        # that synthesis keeps both registers), to halve the select's fanout.
        tsel = [{t: Signal(name=f"tsel{t}_{c}", init=c) for t in sizes} for c in range(2)]
        tcodes = []
        for c in range(2):
            tcode = Signal(range(len(sizes) + 1), name=f"tcode{c}", attrs={"keep": 1})
            tk = {t: (tsel[c][t] ^ c) & have[t] for t in sizes}
            for b in range(len(tcode)):
                m.d.comb += tcode[b].eq(
                    Cat(*[tk[t] for r, t in enumerate(sizes) if ((r + 1) >> b) & 1]).any())
            tcodes.append(tcode)
        offs = [0, *sizes]                      # bytes taken, by tcode

        def by_take(values, copy):
            """``values[tcode]`` (the select's copy ``copy``): a binary mux tree (one LUT level
            on ECP5 for four values)."""
            tcode = tcodes[copy]
            values = values + [values[-1]] * ((1 << len(tcode)) - len(values))
            for b in range(len(tcode)):
                values = [Mux(tcode[b], values[i + 1], values[i])
                          for i in range(0, len(values), 2)]
            return values[0]

        # The beat is appended behind the buffered bytes (byte j of the merged buffer is
        # ``buf[j]`` below the level, else lane ``(j - level) mod M`` of the beat: any other
        # lane lands past the new level), then the taken bytes are shifted out: the buffer's
        # next value is a mux of flip-flops (``merged``: the lane selected by the level's low
        # bits ``lmb``, a binary mux, then the level bit) followed by the take mux.
        top = PB + max(sizes)
        merged = [Signal(8, name=f"merged{j}", attrs={"keep": 1}) for j in range(top)]
        padded = lanes + [lanes[0]] * (M - W)
        for j in range(PB):
            app = [padded[(j - x) % M] for x in range(M)]
            for b in range(lb):
                app = [Mux(lmb[b], app[i + 1], app[i]) for i in range(0, len(app), 2)]
            m.d.comb += merged[j].eq(Mux(lv[j], buf[8 * j:8 * j + 8], app[0]))
        # Next level: the thermometer after the beat (a one-hot shift by its bytes, none when
        # the input register is empty), then the take mux.
        ext = Cat(Const(-1, W), lv, Const(0, 2 * max(sizes)))  # ext[W + j] = (level > j)
        lv_in = Signal(top, attrs={"keep": 1})  # after the beat: lv_in[c] = ext[W + c - n]
        for c in range(top):
            m.d.comb += lv_in[c].eq(Cat(*[s_oh[k] & ext[W + c - k] for k in range(W + 1)]).any())
        # The level's low bits after the beat.
        lmb_in = Signal(lb)
        m.d.comb += lmb_in.eq(lmb + s_nb)
        # The bytes load every cycle (no enable: a drop only clears the level).
        for i in range(PB):
            m.d.sync += buf[8 * i:8 * i + 8].eq(by_take([merged[i + o] for o in offs],
                                                        2 * i // PB))
        with m.If(drop):
            m.d.sync += [lv.eq(0), lvp_n.eq(lvp_n.init), lmb.eq(0), vheld.eq(0)]
        with m.Else():
            for i in range(PB):
                m.d.sync += lv[i].eq(by_take([lv_in[i + o] for o in offs], 2 * i // PB))
            for i in range(NP):
                m.d.sync += lvp_n[i].eq(~by_take([lv_in[i + o] for o in offs], 2 * i // PB))
            m.d.sync += lmb.eq(by_take([(lmb_in - o)[:lb] for o in offs], 0))

        u8, u16, u32 = buf[:8], buf[:16], buf[:32]

        # ---- parse state -----------------------------------------------------------------
        ntmax = -(-kmax // C)
        nmax = min(kmax, _MAX_BLOCK)            # columns of a block that exist
        iw = max(1, ceil_log2(kmax))            # bits of a block-column index (< kmax)
        hier = Signal()
        bal = Signal()
        br = Signal(range(_MAX_BLOCK + 1))
        bc = Signal(range(_MAX_BLOCK + 1))
        left = Signal(signed(33))               # kept blocks announced and not seen yet
        cnt_r = Signal(16)                      # the block-row's count, checked the next cycle
        cnt_chk = Signal()
        first_chk = Signal()                    # ... and it was the first block-row's
        rem = Signal(range(_MAX_BLOCK + 1))
        q = Signal(range(_MAX_BLOCK + 1))
        ck = Signal(range(kmax + 1))
        cn = Signal(range(kmax + 1))
        rem_k = Signal(range(kmax + 1))
        rk_nz = Signal()                        # rem_k != 0 (registered)
        nbc = Signal(range(kmax + 1))           # block-columns: ceil(k / b_c)
        nbcm1 = Signal(iw)                      # nbc - 1: index of the last block-column
        lastw = Signal(range(_MAX_BLOCK + 1))   # columns of the last block-column
        lastw1 = Signal()                       # lastw == 1
        bc1 = Signal()                          # b_c == 1
        vb_full = Signal(MAX_MASK_BITS)         # valid mask bits of a full / the last block
        vb_last = Signal(MAX_MASK_BITS)
        wk = Signal(range(kmax + _MAX_BLOCK + 1))  # first k of block-column nbc (NBC state)
        tile_row = Signal(range(ntmax + _MAX_BLOCK + 1))  # first tile of the block-row
        first_row = Signal()
        first_cnt = Signal(16)
        uneven = Signal()
        e = Signal(16)                          # entries parsed in this block-row
        el = Signal(iw + 1)                     # cnt - 1 - e (a count past kmax is an error)
        cur_last = Signal()                     # the entry being parsed is the last one
        cols_r = Signal(range(kmax + 1))        # kept columns of the block-row
        mask = Signal(MAX_MASK_BITS)
        mbyte = Signal(range(MAX_MASK_BITS // 8 + 1))
        pcnt = Signal(range(MAX_MASK_BITS + 1))  # kept columns of the mask bytes before mlast
        # Kept columns of the last mask byte read, registered as the counts of its two nibbles
        # (one LUT each from the byte) and added where they are used.
        mlast_lo, mlast_hi = Signal(range(5)), Signal(range(5))
        mlast = mlast_lo + mlast_hi
        mfound = Signal()                       # the mask's first kept column is found
        mfirst = Signal(ceil_log2(MAX_MASK_BITS))  # ... its offset
        mrest = Signal(MAX_MASK_BITS)           # the mask without it
        m_fin = Signal()                        # the next mask byte is the entry's last
        idx = Signal(16)
        idx_last = Signal()                     # the index parsed is the last block-column
        s_last = Signal()                       # last word of the payload column: s + 1 == q
        q1 = Signal()                           # q == 1
        pos_addr = Signal(range(depth + kmax + 1))
        waddr = Signal(range(depth + _MAX_BLOCK * (kmax + 1) + 1))
        ctile = Signal(range(ntmax + _MAX_BLOCK + 1))

        # Block-column starts: ``kstart[c] = c * b_c``, written once per stream while the
        # block-columns are counted (NBC), so that a kept block's first k is one table read
        # instead of a walk or a multiplication.
        m.submodules.kstart = kstart = memory.Memory(
            shape=unsigned(iw), depth=kmax, init=[], attrs={"ram_style": "distributed"})
        ks_wr = kstart.write_port()
        ks_rd = kstart.read_port(domain="comb")
        # Entry memory: per kept block of the block-row, its block-column, whether it is the
        # block-row's last and (plain) the last block-column, and (hierarchical) its kept
        # columns, the offset of its first kept column and the mask without that column.
        # Written by the parser, read by the column generator; distributed RAM read
        # asynchronously into a register.
        mbits = ceil_log2(MAX_MASK_BITS)
        entry_layout = data.StructLayout({"idx": unsigned(iw), "elast": 1, "lastc": 1,
                                          "n": unsigned(ceil_log2(MAX_MASK_BITS + 1)),
                                          "n1": 1,
                                          "first": unsigned(mbits),
                                          "rest": unsigned(MAX_MASK_BITS)})
        m.submodules.entries = entries = memory.Memory(
            shape=entry_layout, depth=kmax, init=[], attrs={"ram_style": "distributed"})
        ent_wr = entries.write_port()
        ent_rd = entries.read_port(domain="comb")

        # ---- column generator ------------------------------------------------------------
        # A pipeline that runs ahead of the payload, one kept column per cycle, across block
        # boundaries without a bubble:
        #   ENT:  the next entry, read from the entry memory (``ptr``) once it is stored;
        #   S0:   the block being expanded: its first k (``kstart`` read), the next column's
        #         offset (``j0``, plain; ``off0``, hierarchical, encoded), the mask bit of the
        #         column after it (``glow1``, isolated) and the bits after that (``rest0``),
        #         the columns left (``nl0``), ``last0``: the next column is the block's last;
        #   head: a two-entry queue of columns (k, last column of the block-row); its front
        #         (``kcol``, ``head_rlast``) is the payload column the parser takes next.
        # S0 emits a column while the queue holds fewer than two, ENT moves into S0 when S0
        # is empty or emits its last column: both decided from registers only, so the
        # parser's ``pop`` (it takes the front's last word) moves nothing but the queue's
        # read pointer and count. The block-row's entries are reset at its count.
        ptr = Signal(range(kmax + 1))           # next entry to read into ENT
        e_w = Signal(range(kmax + 1))           # entries stored
        ent = Signal(entry_layout)
        ent_v = Signal()
        kb0 = Signal(iw)
        off0 = Signal(mbits)
        glow1 = Signal(MAX_MASK_BITS)
        rest0 = Signal(MAX_MASK_BITS)
        j0 = Signal(range(nmax + 1))
        nl0 = Signal(range(nmax + 1))
        last0 = Signal()
        elast0 = Signal()
        s0_v = Signal()
        head_k = [Signal(range(kmax), name=f"head{i}_k") for i in range(2)]
        head_l = [Signal(name=f"head{i}_last") for i in range(2)]
        hwp, hrp = Signal(), Signal()           # queue write / read pointers
        hcnt = Signal(range(3))                 # columns queued
        hfull = Signal()                        # hcnt == 2
        kcol = Signal(range(kmax))              # front of the queue (comb)
        head_rlast = Signal()
        head_v = Signal()                       # the queue is not empty (comb)
        m.d.comb += [kcol.eq(Mux(hrp, head_k[1], head_k[0])),
                     head_rlast.eq(Mux(hrp, head_l[1], head_l[0])), head_v.eq(hcnt != 0)]
        pop = Signal()                          # the parser takes the head (comb)
        # Entry stages: a hierarchical entry is stored the cycle after its last mask byte
        # (stage 1, with the mask check and its kept columns); a plain one with its index.
        # Stage 2 (the next cycle, both kinds) adds the entry's columns to the block-row's.
        st1_v, st1_last, st2_v, st2_last = Signal(), Signal(), Signal(), Signal()
        ncols_r = Signal(range(_MAX_BLOCK + 1))  # kept columns of a hierarchical entry
        pl_last = Signal()                      # the plain entry is the last block-column

        def encode(onehot):
            """The position of the single bit set: an OR tree per result bit."""
            return Cat(*[Cat(*[onehot[i] for i in range(MAX_MASK_BITS) if (i >> b) & 1]).any()
                         for b in range(mbits)])

        def low_bit(v):
            return (v & (~v + 1))[:MAX_MASK_BITS]

        def drop_low(v):
            return (v & (v - 1))[:MAX_MASK_BITS]

        avail = Signal()
        m.d.comb += avail.eq(ptr != e_w)
        s0_emit, s0_slot, ent_slot = (
            Signal(name=n) for n in ("s0_emit", "s0_slot", "ent_slot"))
        # S0 may emit (``gate``): plain blocks with q = 1 at once; hierarchical ones with q = 1
        # from the cycle the last entry's column count is added (for the tile counts); with
        # q > 1 one cycle later, once ``wr2`` / ``pr2`` are set from the final column count.
        # A register: set at the count, raised at the last index or the last entry's stages.
        gate = Signal()
        # ``free``: ENT or S0 is empty (``~ent_v | ~s0_v``), registered with them, so that
        # ENT's load (and the entry read address behind it) is one LUT from flip-flops.
        free = Signal(init=1)
        s0_fin = Signal()                       # S0 emits its block's last column if it holds one
        m.d.comb += [
            s0_fin.eq(gate & ~hfull & last0),
            s0_emit.eq(s0_v & gate & ~hfull),
            s0_slot.eq(~s0_v | s0_fin),         # S0 is empty or emits its last column
            ent_slot.eq(free | s0_fin),         # ENT is empty or moves into S0
            ent_rd.addr.eq(ptr),
            ks_rd.addr.eq(ent.idx),
        ]
        s0_v_nx, ent_v_nx = Mux(s0_slot, ent_v, s0_v), Mux(ent_slot, avail, ent_v)
        m.d.sync += [
            hcnt.eq(hcnt + s0_emit - pop), hwp.eq(hwp ^ s0_emit), hrp.eq(hrp ^ pop),
            hfull.eq(Mux(s0_emit == pop, hfull, (hcnt == 1) & s0_emit)),
            s0_v.eq(s0_v_nx), ent_v.eq(ent_v_nx), free.eq(~s0_v_nx | ~ent_v_nx),
        ]
        for i in range(2):
            with m.If(s0_emit & (hwp == i)):
                m.d.sync += [head_k[i].eq(kb0 + Mux(hier, off0, j0)),
                             head_l[i].eq(last0 & elast0)]
        ent_lastcol = ent.lastc
        # A free register loads whatever its source holds (its valid bit says whether that
        # was valid), so that the wide data enables do not wait for the source's valid bit.
        with m.If(s0_slot):
            m.d.sync += [kb0.eq(ks_rd.data), off0.eq(ent.first), glow1.eq(low_bit(ent.rest)),
                         rest0.eq(drop_low(ent.rest)), j0.eq(0),
                         nl0.eq(Mux(hier, ent.n, Mux(ent_lastcol, lastw, bc))),
                         last0.eq(Mux(hier, ent.n1, Mux(ent_lastcol, lastw1, bc1))),
                         elast0.eq(ent.elast)]
        with m.Elif(s0_emit):
            m.d.sync += [off0.eq(encode(glow1)), glow1.eq(low_bit(rest0)),
                         rest0.eq(drop_low(rest0)), j0.eq(j0 + 1),
                         nl0.eq(nl0 - 1), last0.eq(nl0 == 2)]
        with m.If(ent_slot):
            m.d.sync += ent.eq(ent_rd.data)
            with m.If(avail):
                m.d.sync += ptr.eq(ptr + 1)

        def drop_low8(v):
            """A byte without its lowest set bit (no carry chain: bit i survives if a lower
            bit is set)."""
            return Cat(*[v[i] & v[:i].any() if i else Const(0, 1) for i in range(8)])

        def ctz8(v):
            """Trailing zeros of a nonzero byte: a 256-entry table."""
            return Array([Const((i & -i).bit_length() - 1 if i else 0, 3)
                          for i in range(256)])[v]

        def popcount4(v):
            """Set bits of a nibble: a 16-entry table (one LUT per result bit)."""
            return Array([Const(bin(i).count("1"), 3) for i in range(16)])[v]

        def thermometer(v):
            """The ``v`` low bits set (all of them from ``MAX_MASK_BITS`` on)."""
            return Cat(*[v > i for i in range(MAX_MASK_BITS)])

        mask_bytes = Signal(range(MAX_MASK_BITS // 8 + 1))

        # Field size consumed by each state (``tsel``, loaded by ``goto``).
        sizes_of = {"MAGIC": 4, "VERSION": 2, "BR": 2, "BC": 2, "RESERVED": 2, "OUT": 4,
                    "IN": 4, "TOTAL": 4, "COUNT": 2, "INDEX": 2, "HINDEX": 2, "MASK": 1,
                    "COLUMN": W}

        # Field size each state waits for (``nsel``): the same, and the payload's in CWAIT.
        needs_of = {**sizes_of, "CWAIT": W}
        nsel = {t: Signal(name=f"nsel{t}") for t in sizes}

        def goto(state):
            m.next = state
            m.d.sync += [tsel[c][t].eq((sizes_of.get(state) == t) ^ c)
                         for c in range(2) for t in sizes]

        def need(nbytes):
            """Condition 'nbytes are buffered' (and no bad beat). A state that waits for bytes
            after the stream's end (or after a bad beat) is truncated: ``trunc``, registered,
            sets ``lerr`` as a failed check does."""
            return have_p[nbytes]

        trunc = Signal()
        waits = Cat(*[nsel[t] & ~have_p[t] for t in sizes]).any()
        m.d.sync += trunc.eq((fin & waits) | beat_err)

        # Registered conditions: every state decides from flip-flops (or a compare of the
        # aligner level with a constant), never from a wide compare of this cycle's bytes.
        # Checks of field values set ``lerr`` (two cycles later), which sends the state of that
        # cycle to ERROR.
        lerr = Signal()
        rem_gt = Signal()                       # rem > cols
        rk_gt = Signal()                        # rem_k > b_c
        row_end = Signal()                      # no block-row at all (n == 0)
        row_last = Signal()                     # the block-row is the last one
        left_zero = Signal()
        e_fin = Signal()                        # the next entry parsed is the last one
        cnt_done = Signal()                     # the block-row's tile counts are written
        pad = Signal(C)                         # lane of the current word past n
        pad_nx = Signal(C)                      # lane of the next word (same k) past n
        pad_row = Signal(C)                     # lane of the block-row's first word past n
        pad_row1 = Signal(C)                    # ... and of its second word
        w_ok = Signal()                         # waddr < depth

        sgn = signed(ceil_log2(kmax + 2 * _MAX_BLOCK + 1) + 1)
        rem_row = Signal(sgn)                   # n - first channel of the block-row
        rem_row1 = Signal(sgn)                  # rem_row - cols
        rem_row2 = Signal(sgn)                  # rem_row - 2 * cols
        rem_rowb = Signal(sgn)                  # rem_row - b_r
        rem_nx2 = Signal(sgn)                   # n - first channel of the word after next
        crem = Signal(sgn)                      # n - first channel of tile ctile - cols - 1
        wsgn = signed(len(waddr) + 1)
        # Rooms, offset so that "room left after the step" is a sign bit.
        proom = Signal(wsgn)                    # depth - pos_addr - 2
        proom1 = Signal(wsgn)                   # depth - pos_addr - 1
        wr2 = Signal(wsgn)                      # depth - (waddr + cols_r) - 1
        pr2 = Signal(wsgn)                      # depth - (pos_addr + cols_r) - 1
        rinit = Signal()                        # cols_r is final: set wr2, pr2
        csl = Signal(range(_MAX_BLOCK + 1))     # q - (tiles counted)
        cval = Signal.like(cols_r)              # the count of the block-row's tiles
        sl = Signal(range(_MAX_BLOCK + 1))      # q - 1 - s

        m.d.sync += left_zero.eq(left == 0)

        def past_n(rem_expr):
            """Lanes of a word whose channels left (``n - ch``) are ``rem_expr`` past n."""
            return Cat(*[rem_expr <= lane for lane in range(C)])

        checks = []
        pending = Signal()                      # a check failed in the previous cycle

        def check(cond):
            """A value check of this state: whether the state applied it and whether it failed
            are registered, then combined into ``lerr`` (two cycles after the check). ``cond``
            may be a list of conditions (the check fails if any does), each registered on its
            own (the OR follows the registers); a wide compare is registered as halves."""
            now = Signal()
            m.d.comb += now.eq(1)
            checks.append((now, cond if isinstance(cond, list) else [cond]))

        def differs(a, b, width=32):
            """``a != b`` over ``width`` bits, as 16-bit halves (for :func:`check`)."""
            a, b = Cat(a, Const(0, width))[:width], Cat(b, Const(0, width))[:width]
            return [a[i:i + 16] != b[i:i + 16] for i in range(0, width, 16)]

        def late_error():
            with m.If(lerr):
                goto("ERROR")

        def to_column(head_next):
            """The payload starts: COLUMN if the head is valid in the next cycle, else CWAIT."""
            with m.If(head_next):
                goto("COLUMN")
            with m.Else():
                goto("CWAIT")

        # The count writer's start values for the block-row, set at its count.
        crow_tile = Signal.like(ctile)
        crow_rem = Signal.like(crem)
        cstart = Signal()                       # the block-row's last word was taken

        def start_counts():
            """The tile counts of the block-row start (one per cycle, from the next cycle)."""
            m.d.sync += [ctile.eq(crow_tile), crem.eq(crow_rem), csl.eq(q), cval.eq(cols_r),
                         cnt_done.eq(0)]

        def next_row():
            """The block-row is finished (its last word taken, or its counts written)."""
            m.d.sync += [tile_row.eq(tile_row + q), rem_row.eq(rem_row - br),
                         rem_row1.eq(rem_row1 - br), rem_row2.eq(rem_row2 - br),
                         rem_rowb.eq(rem_rowb - br)]
            with m.If(row_last):
                goto("END")
            with m.Else():
                goto("COUNT")

        # Per-tile counts of the block-row, one per cycle, from the cycle after its last word
        # (``cstart``, registered) or, for an empty block-row, once the previous block-row's
        # are written. ``cols_r`` still holds the block-row's columns in the ``cstart`` cycle
        # (the next count resets it at the earliest in that cycle).
        m.d.sync += cstart.eq(0)
        with m.If(cstart):
            start_counts()
        m.d.comb += [self.c_addr.eq(ctile), self.c_data.eq(cval)]
        with m.If(~cnt_done):
            m.d.comb += self.c_en.eq(1)
            m.d.sync += [ctile.eq(ctile + 1), csl.eq(csl - 1), crem.eq(crem - C),
                         cnt_done.eq((csl == 1) | crem[-1])]     # the tile holding n

        # Entry writes: a plain entry's fields come from the index being parsed (INDEX), a
        # hierarchical one's from registers (stage 1); the data does not depend on the state.
        m.d.comb += [ent_wr.addr.eq(e_w), ent_wr.data.idx.eq(Mux(hier, idx, u16)),
                     ent_wr.data.elast.eq(Mux(hier, st1_last, e_fin)),
                     ent_wr.data.lastc.eq(u16[:iw] == nbcm1),
                     ent_wr.data.n.eq(pcnt + mlast), ent_wr.data.first.eq(mfirst),
                     ent_wr.data.rest.eq(mrest), ent_wr.data.n1.eq(mrest == 0)]
        # Hierarchical entry store (see above).
        m.d.sync += [st1_v.eq(0), st2_v.eq(st1_v), st2_last.eq(st1_last)]
        with m.If(st1_v):
            hcols = pcnt + mlast
            m.d.comb += ent_wr.en.eq(1)
            m.d.sync += [e_w.eq(e_w + 1), ncols_r.eq(hcols)]
            vbits = Mux(idx_last, vb_last, vb_full)
            check([mask == 0, (mask & ~vbits) != 0])
        m.d.sync += rinit.eq(0)
        with m.If(st2_v):
            m.d.sync += cols_r.eq(cols_r + Mux(hier, ncols_r, Mux(pl_last, lastw, bc)))
            with m.If(st2_last):
                m.d.sync += [gate.eq(1), rinit.eq(1)]
        # With the row's column count final, the rooms after a step of cols_r (q > 1).
        with m.If(rinit):
            m.d.sync += [wr2.eq(proom1 - cols_r), pr2.eq(proom1 - cols_r)]

        with m.If(pending):
            m.d.sync += lerr.eq(1)              # (a new stream's start clears it)
        # The count's checks, from registers the cycle after COUNT: at most the block-columns,
        # and at most the kept blocks left (``left`` went negative otherwise).
        m.d.sync += cnt_chk.eq(0)
        with m.If(cnt_chk):
            check([cnt_r > nbc, left[-1]])
            # Balanced: every block-row keeps as many blocks as the first.
            with m.If(first_chk):
                m.d.sync += first_cnt.eq(cnt_r)
            with m.Elif(cnt_r != first_cnt):
                m.d.sync += uneven.eq(1)

        with m.FSM(name="parse") as fsm:
            with m.State("IDLE"), m.If(self.start):
                # The aligner is empty here (after DONE or after the drain of ERROR).
                m.d.sync += [self.error.eq(0), ended.eq(0),
                             ck.eq(self.exp_k), cn.eq(self.exp_n), self.words.eq(0),
                             first_row.eq(1), uneven.eq(0), lerr.eq(0), active.eq(1),
                             tile_row.eq(0), ctile.eq(0), q.eq(0), beat_err.eq(0), trunc.eq(0),
                             hcnt.eq(0), hfull.eq(0), hwp.eq(0), hrp.eq(0), s0_v.eq(0), ent_v.eq(0),
                             free.eq(1),
                             ptr.eq(0), e_w.eq(0),
                             cnt_done.eq(1), st1_v.eq(0), st2_v.eq(0)]
                goto("MAGIC")
            with m.State("MAGIC"):
                with m.If(need(4)):
                    goto("VERSION")
                    check(differs(u32, Const(MAGIC_WORD, 32)))
            with m.State("VERSION"):
                with m.If(need(2)):
                    m.d.sync += [hier.eq(buf[8]), bal.eq(buf[9])]
                    goto("BR")
                    check([u8 != _VERSION, buf[10:16] != 0])
                late_error()
            with m.State("BR"):
                with m.If(need(2)):
                    m.d.sync += [br.eq(u16), rem.eq(u16), rem_gt.eq(u16 > C)]
                    goto("BC")
                    check([u16 == 0, u16 > _MAX_BLOCK])
                late_error()
            with m.State("BC"):
                with m.If(need(2)):
                    m.d.sync += bc.eq(u16)
                    goto("RESERVED")
                    check([u16 == 0, u16 > _MAX_BLOCK, hier & (u16 > MAX_MASK_BITS)])
                late_error()
            with m.State("RESERVED"):
                m.d.sync += [vb_full.eq(thermometer(bc[:6])),
                             mask_bytes.eq((bc[:6] + 7) >> 3)]
                with m.If(need(2)):
                    goto("OUT")
                    check(u16 != 0)
                late_error()
            with m.State("OUT"):
                with m.If(need(4)):
                    goto("IN")
                    check(differs(u32, cn))
                late_error()
            with m.State("IN"):
                with m.If(need(4)):
                    goto("TOTAL")
                    check(differs(u32, ck))
                late_error()
            with m.State("TOTAL"):
                m.d.sync += [rem_k.eq(ck), rk_nz.eq(ck != 0), nbc.eq(0), rk_gt.eq(ck > bc),
                             wk.eq(0),
                             row_end.eq(cn == 0), rem_row.eq(cn), rem_row1.eq(cn - C),
                             rem_row2.eq(cn - 2 * C), rem_rowb.eq(cn - br)]
                with m.If(need(4)):
                    m.d.sync += left.eq(u32)
                    goto("QDIV")
                late_error()
            with m.State("QDIV"):
                # q = b_r / cols by repeated subtraction; b_r must be a multiple of cols.
                m.d.sync += [q.eq(q + 1), rem.eq(rem - C), rem_gt.eq(rem > 2 * C)]
                with m.If(~rem_gt):
                    goto("NBC")
                    check(rem != C)
                late_error()
            with m.State("NBC"):
                # Block-columns ceil(k / b_c) and the width of the last one, by repeated
                # subtraction (one cycle per block-column), filling kstart on the way.
                m.d.sync += [q1.eq(q == 1), bc1.eq(bc == 1)]
                m.d.comb += [ks_wr.en.eq(1), ks_wr.addr.eq(nbc), ks_wr.data.eq(wk)]
                m.d.sync += wk.eq(wk + bc)
                with m.If(rk_gt):
                    # rem_k > b_c: what is left is not zero.
                    m.d.sync += [rem_k.eq(rem_k - bc), rk_nz.eq(1), nbc.eq(nbc + 1),
                                 rk_gt.eq(rem_k > (bc << 1))]
                with m.Else():
                    m.d.sync += [lastw.eq(rem_k), lastw1.eq(rem_k == 1),
                                 vb_last.eq(thermometer(rem_k[:6])),
                                 nbc.eq(nbc + rk_nz),
                                 nbcm1.eq(Mux(rk_nz, nbc, nbc - 1))]
                    with m.If(row_end):
                        goto("END")
                    with m.Else():
                        goto("COUNT")
                late_error()
            with m.State("COUNT"):
                # A count past kmax is an error (checked from cnt_r the next cycle): its low
                # bits are enough to choose the next state.
                cnt_lo = u16[:iw + 1]
                with m.If(need(2)):
                    m.d.sync += [e.eq(0), cols_r.eq(0), left.eq(left - u16),
                                 e_fin.eq(cnt_lo == 1), el.eq(u16 - 1), first_row.eq(0),
                                 row_last.eq(rem_rowb <= 0),
                                 crow_tile.eq(tile_row), crow_rem.eq(rem_row1 - 1),
                                 # tile counts
                                 # payload addressing
                                 pos_addr.eq(self.words), waddr.eq(self.words),
                                 w_ok.eq(self.words < depth),
                                 proom.eq(depth - 2 - self.words),
                                 proom1.eq(depth - 1 - self.words),
                                 pad.eq(past_n(rem_row)), pad_row.eq(past_n(rem_row)),
                                 pad_nx.eq(past_n(rem_row1)), pad_row1.eq(past_n(rem_row1)),
                                 rem_nx2.eq(rem_row2),
                                 sl.eq(q - 1), s_last.eq(q1),
                                 # column generator
                                 ptr.eq(0), e_w.eq(0), ent_v.eq(0), free.eq(1),
                                 s0_v.eq(0), hcnt.eq(0), hfull.eq(0), hwp.eq(0), hrp.eq(0),
                                 gate.eq(q1)]
                    m.d.sync += first_chk.eq(first_row)
                    with m.If(cnt_lo == 0):
                        goto("ECNT")
                    with m.Elif(hier):
                        goto("HINDEX")
                    with m.Else():
                        goto("INDEX")
                    m.d.sync += [cnt_r.eq(u16), cnt_chk.eq(1)]
                late_error()
            def index_fields():
                m.d.sync += [idx.eq(u16), e.eq(e + 1), el.eq(el - 1), e_fin.eq(el == 1),
                             cur_last.eq(e_fin)]
                check([u16 >= nbc, (e != 0) & (u16 <= idx)])
                return u16[:iw] == nbcm1

            # The index list: plain (INDEX, the entry is stored with its index) and
            # hierarchical (HINDEX, then the mask bytes) are two states, so that the entry
            # memory's write enable is one state bit and one flag.
            with m.State("INDEX"):
                with m.If(need(2)):
                    is_last = index_fields()
                    m.d.comb += ent_wr.en.eq(1)
                    m.d.sync += [e_w.eq(e_w + 1), pl_last.eq(is_last),
                                 st2_v.eq(1), st2_last.eq(e_fin)]
                    with m.If(e_fin):
                        m.d.sync += gate.eq(q1)
                        to_column(head_v | s0_emit)
                late_error()
            with m.State("HINDEX"):
                with m.If(need(2)):
                    is_last = index_fields()
                    m.d.sync += [mask.eq(0), mbyte.eq(0), pcnt.eq(0), mlast_lo.eq(0),
                                 mlast_hi.eq(0), mfound.eq(0), mfirst.eq(0), mrest.eq(0),
                                 m_fin.eq(mask_bytes == 1), idx_last.eq(is_last)]
                    goto("MASK")
                late_error()
            with m.State("MASK"):
                with m.If(need(1)):
                    m.d.sync += [mbyte.eq(mbyte + 1), m_fin.eq(mbyte + 2 == mask_bytes),
                                 pcnt.eq(pcnt + mlast), mlast_lo.eq(popcount4(u8[:4])),
                                 mlast_hi.eq(popcount4(u8[4:])),
                                 mrest.eq(mrest | (Mux(mfound, u8, drop_low8(u8))
                                                   << (mbyte * 8))[:MAX_MASK_BITS]),
                                 mask.eq(mask | (u8 << (mbyte * 8))[:MAX_MASK_BITS])]
                    with m.If(~mfound & (u8 != 0)):
                        # The first kept column: its offset, and the mask without it.
                        m.d.sync += [mfound.eq(1),
                                     mfirst.eq(Cat(ctz8(u8), mbyte)[:mbits])]
                    # Bits past MAX_MASK_BITS cannot occur: b_c <= MAX_MASK_BITS here.
                    with m.If(m_fin):
                        m.d.sync += [st1_v.eq(1), st1_last.eq(cur_last)]
                        with m.If(cur_last):
                            to_column(head_v | s0_emit)
                        with m.Else():
                            goto("HINDEX")
                late_error()
            with m.State("ECNT"):
                # An empty block-row: once the previous block-row's counts are written, its
                # tiles' counts (0) are.
                with m.If(cnt_done):
                    start_counts()
                    goto("EROW")
                late_error()
            with m.State("EROW"):
                with m.If(cnt_done):
                    next_row()
                late_error()
            with m.State("CWAIT"):
                to_column(s0_emit)
                late_error()
            with m.State("COLUMN"):
                # The head is valid here (CWAIT otherwise).
                exists = ~pad[0]
                with m.If(need(W)):
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
                    with m.If(exists):
                        m.d.comb += self.w_en.eq(w_ok)
                        m.d.sync += self.words.eq(self.words + 1)
                    m.d.sync += [sl.eq(sl - 1), s_last.eq(sl == 1), rem_nx2.eq(rem_nx2 - C),
                                 pad.eq(pad_nx), pad_nx.eq(past_n(rem_nx2)),
                                 waddr.eq(waddr + cols_r),
                                 wr2.eq(wr2 - cols_r), w_ok.eq(~wr2[-1])]
                    with m.If(s_last):
                        # Next kept column.
                        m.d.comb += pop.eq(1)
                        m.d.sync += [sl.eq(q - 1), rem_nx2.eq(rem_row2),
                                     pad.eq(pad_row), pad_nx.eq(pad_row1),
                                     pos_addr.eq(pos_addr + 1),
                                     waddr.eq(pos_addr + 1), proom.eq(proom - 1),
                                     proom1.eq(proom1 - 1),
                                     pr2.eq(pr2 - 1), wr2.eq(pr2 - 1), w_ok.eq(~proom[-1]),
                                     s_last.eq(q1)]
                        with m.If(head_rlast):
                            # The block-row's last word: its tile counts follow.
                            m.d.sync += cstart.eq(1)
                            next_row()
                        with m.Elif((hcnt == 1) & ~s0_emit):
                            goto("CWAIT")
                    check(pad_bad)
                    check(exists & ~w_ok)
                late_error()
            with m.State("END"):
                with m.If(~left_zero | (bal == uneven) | have_p[1] | beat_err):
                    goto("ERROR")
                # A check of the last word fails at the latest in the cycle its tile count
                # is written, so ``lerr`` is final once the counts are.
                with m.Elif(fin & cnt_done & ~cstart & ~lerr):
                    m.d.sync += active.eq(0)
                    goto("DONE")
                late_error()
            with m.State("ERROR"):
                # Drain the rest of the stream up to its last beat.
                m.d.comb += [drop.eq(1)]
                m.d.sync += [self.error.eq(1), cnt_done.eq(1)]
                with m.If(ended | (self.cw.valid & beat.last)):   # ready here unless ended
                    m.d.sync += active.eq(0)
                    goto("DONE")
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                goto("IDLE")
        # One-hot state register in synthesis: short next-state logic for this many states.
        fsm.state.attrs["fsm_encoding"] = "one-hot"
        # Field sizes the current state waits for: ORs of state bits (``tsel`` follows the
        # transitions; the initial state, IDLE, takes nothing).
        for t in sizes:
            m.d.comb += nsel[t].eq(
                Cat(*[fsm.ongoing(st) for st, v in needs_of.items() if v == t]).any())
        hits = [trunc]
        for now, conds in checks:
            applied, failed = Signal(), Signal(len(conds))
            m.d.sync += [applied.eq(now), failed.eq(Cat(*conds))]
            hits.append(applied & failed.any())
        m.d.comb += pending.eq(Cat(*hits).any())
        m.d.comb += [self.busy.eq(active | self.done), self.tiles_done.eq(ctile)]
        # The word's data, address and k do not depend on the state (only ``w_en`` does): the
        # buffers' write registers load them from flip-flops.
        for lane in range(C):
            m.d.comb += self.w_data[lane].eq(buf[8 * lane:8 * lane + 8].as_signed())
        m.d.comb += [self.w_addr.eq(waddr), self.w_k.eq(kcol)]
        return m
