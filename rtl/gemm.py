"""GEMM engine: tiled int8 matrix product on the systolic array, with the requantize epilogue.

Computes ``O = sat8(round_shift((A @ B + bias) * M, S))`` for ``A: m x k`` (activations),
``B: k x n`` (weights) and per-column ``bias``, ``M``, ``S`` -- bit-exactly
:func:`golden.gemm.gemm`. ``m``, ``k`` and ``n`` are given at run time and need not be multiples
of the array shape.

Two per-command options (``docs/isa.md``, flags ``A_U8`` and ``OUT16``) give
``golden.gemm.gemm(..., a_unsigned=cmd.a_unsigned, out_bits=OUT16_BITS if cmd.out16 else
act_width)``:

* ``a_unsigned``: the ``a`` lanes carry the raw bits of unsigned ``act_width``-bit values
  (softmax probabilities, 0..255 for int8). The engine zero-extends them (sign-extends without
  the option) into the ``act_width + 1``-bit signed A operand of the PEs
  (:func:`rtl.pe.a_operand_shape`), in the register after the A-buffer read.
* ``out16``: the epilogue saturates to ``OUT16_BITS`` (16) bits instead of ``act_width``. The
  ``o`` lanes are always ``signed(OUT16_BITS)`` (:func:`output_layout`); ``act_width`` results
  are sign-extended into them.

Both are latched with ``m``, ``k`` and ``n`` when the command is accepted (a command is accepted
only once the previous one has left the pipeline), cost no pipeline stage and change no cycle
count.

Data flow
---------
1. ``cmd`` gives ``m, k, n``, whether to load new weights, the mode (``sparse``) and the
   options ``a_unsigned`` and ``out16``. Invalid commands are dropped and raise ``error`` (see
   below).
2. Weights (when ``load_weights``): ``k * ceil(n / cols)`` beats on ``w``, each one row segment
   ``B[kk, tj*cols : (tj+1)*cols]``, ordered ``for tj: for kk`` (column tile major). Lanes past
   ``n`` are ignored. Concurrently, ``ceil(n / cols)`` beats on ``ep`` with the epilogue
   parameters of each column tile, in order (the two streams are independent: either may lead).
   Both stay resident: a later command with ``load_weights = 0`` and the same ``k`` and ``n``
   reuses them (e.g. the next image).
3. Activations: ``ceil(m / rows) * k`` beats on ``a``, each one column segment
   ``A[ti*rows : (ti+1)*rows, kk]``, ordered ``for ti: for kk`` (raw ``act_width``-bit
   patterns; unsigned with ``a_unsigned``). Lanes past ``m`` are ignored.
   Tile row ``ti`` is held in one half of a double buffer and reused for every column tile, so
   the next tile row loads while this one computes. Activations are taken from the start of
   the command, while the weights load.
4. Outputs: one beat on ``o`` per valid output row of each tile, ordered ``for ti: for tj: for r``
   (``r < min(rows, m - ti*rows)``), each the row segment ``O[ti*rows + r, tj*cols : ...]`` in
   ``OUT16_BITS``-bit lanes (saturated to ``act_width`` bits unless ``out16``); lanes past
   ``n`` are zero.

Output-stationary tiles stream through the array back to back: the ``last`` beat of one tile is
followed directly by the ``first`` beat of the next, and finished rows drain through the
epilogue while the next tile accumulates. A tile therefore occupies the array for
``max(k, rows, cols)`` cycles (the drain needs ``rows`` cycles, the array's read-out ``cols``).
Output back-pressure is handled by credits: a tile starts only when the output FIFO has room
for all its rows, so the array never needs to stall.

The weight load overlaps the compute: column tile ``tj`` of the first tile row starts as soon
as its ``k`` weight words and its epilogue record are in, while tile ``tj + 1``'s weights
arrive, so only the first column tile's load is exposed (the first tile row runs at the pace of
the weight stream when that is slower than the array). Later tile rows find every column tile
loaded.

Cycle count of one command (no stalls, weights loaded), approximately
``3 + (k + 2) + mt*nt*max(k, rows, cols, 2) + latency + rows_last - 1`` with
``mt = ceil(m/rows)``, ``nt = ceil(n/cols)``; :func:`sim.perf.gemm_cycles` is the cycle-exact
model (asserted against simulation) -- see ``docs/gemm.md``.

Validation takes :data:`SETUP_CYCLES` (3): ``nt`` by a shift (``cols`` a power of two), then
the capacity check ``k <= floor(weight_buffer_depth / nt)`` against a table indexed by ``nt`` (no
multiplier), then the decision.

Errors: ``m``, ``k`` or ``n`` outside ``[1, max]``, a weight matrix larger than the weight
buffer, or ``load_weights = 0`` without matching resident weights. The command is consumed and
ignored (no data beats are taken) and ``error`` goes high until the next accepted command: two
cycles after the command is taken for the range and resident-weight checks (registered as the
command is taken, decided in the next cycle), four for the capacity check; ``busy`` stays high
until then.

Sparse mode (``cmd.sparse = 1``, ``docs/sparse_gemm.md``)
--------------------------------------------------------
The weights ``W[n, k]`` (``B = W^T``) are block-pruned and arrive, when ``load_weights``, as the
compressed byte stream of ``docs/sparse_format.md`` on ``cw`` (up to ``cols`` bytes per beat,
``last`` on the final beat), with the ``ep`` beats concurrently as in dense mode. The
:class:`~rtl.sparse_decoder.SparseDecoder` inside the engine validates the stream against the
command's ``k`` and ``n`` and writes the weight buffer with only the kept words, a parallel
k-index buffer (the ``k`` of every word) and a count per output tile: exactly
``golden.sparse_format.tile_schedule`` and ``tile_weight_words``. The feeder then issues, for
output tile ``tj``, ``count_tj`` reduction steps: step ``p`` reads word ``p`` of the tile
(sequential addresses) and the A column ``kidx[p]`` (one more pipeline stage for the index
read, :attr:`GemmEngine.sparse_latency`); ``first``/``last`` mark ``p = 0`` and
``p = count_tj - 1``. A tile with count 0 issues one step with a zero weight word, so its
outputs are the epilogue of the bias alone. Cycles therefore scale with the kept ``k`` steps of
each tile (``sim.perf.sparse_gemm_cycles``); activations and outputs are as in dense mode.
The decoder reports the tiles whose words and count are written (``tiles_done``): column tile
``tj`` of the first tile row starts once that covers it and its epilogue record is in, so
decoding overlaps the compute as in dense mode.

A malformed stream is found by the decoder, which drains the rest of the stream to its ``last``
beat; the command then ends with ``error``. The first tile row may already have been running:
the engine stops taking activations (the producer drops the command's remaining ``a`` beats,
as :mod:`rtl.exec_gemm` does) and rows of tiles issued before the error may already have left
on ``o``; they belong to the failed command and are void. ``load_weights = 0`` reuses resident
sparse weights of the same ``k`` and ``n``; dense and sparse resident weights are not
interchangeable (``error``).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from golden.config import AccelConfig
from golden.gemm import OUT16_BITS

from .checks import check_config, validating
from .fixedpoint_ops import div_const
from .multiply import multiply_latency, pipelined_multiply
from .pe import Control, a_operand_shape
from .ram import ReservedFIFO, buffer_ram
from .sparse_decoder import SparseDecoder, compressed_beat_layout
from .systolic import SystolicArray

__all__ = [
    "OUT16_BITS",
    "SETUP_CYCLES",
    "GemmEngine",
    "command_layout",
    "default_fifo_depth",
    "engine_latency",
    "epilogue_layout",
    "output_layout",
]

FEED_STAGES = 2       # command issue -> operands at the array (buffer read, read register)
EPILOGUE_FIXED_STAGES = 8   # row, parameter register, bias, round, 2 x shift, 2 x saturate
FIFO_STAGES = 2       # output FIFO (rtl.ram.ReservedFIFO): write to readable
SPARSE_EXTRA_STAGES = 2   # sparse commands: k-index buffer read and register before the A read


SETUP_CYCLES = 3      # command accepted (cycle 0) -> start (cycle 3): nt, capacity, decision


def engine_latency(cfg: AccelConfig) -> int:
    """Cycles from the issue of a tile's ``last`` beat to its first row on ``o``."""
    return FEED_STAGES + SystolicArray.array_latency(cfg) + epilogue_stages(cfg) + FIFO_STAGES


def epilogue_stages(cfg: AccelConfig) -> int:
    """Stages from a finished row leaving the array to its write into the output FIFO."""
    return EPILOGUE_FIXED_STAGES + epilogue_multiply_latency(cfg)


def epilogue_multiply_latency(cfg: AccelConfig) -> int:
    """Stages of the requantization multiply ``(acc + bias) * M``."""
    return multiply_latency(cfg.acc_width + 1, True, cfg.mult_width, False)


def tile_period(cfg: AccelConfig) -> int:
    return max(cfg.rows, cfg.cols, 2)


def default_fifo_depth(cfg: AccelConfig) -> int:
    period = max(cfg.rows, cfg.cols)
    return cfg.rows * (-(-(engine_latency(cfg) + SPARSE_EXTRA_STAGES + cfg.rows) // period) + 1)


def command_layout(cfg: AccelConfig) -> data.StructLayout:
    """``m``, ``k``, ``n``; ``load_weights``; ``sparse`` (compressed weights on ``cw``);
    ``a_unsigned`` (the ``a`` lanes are unsigned); ``out16`` (saturate to ``OUT16_BITS``)."""
    return data.StructLayout({
        "m": unsigned(cfg.max_tokens.bit_length()),
        "k": unsigned(cfg.max_gemm_dim.bit_length()),
        "n": unsigned(cfg.max_gemm_dim.bit_length()),
        "load_weights": 1,
        "sparse": 1,
        "a_unsigned": 1,
        "out16": 1,
    })


def output_layout(cfg: AccelConfig) -> data.ArrayLayout:
    """Payload of ``o``: ``cols`` lanes of ``signed(OUT16_BITS)``."""
    return data.ArrayLayout(signed(OUT16_BITS), cfg.cols)


def epilogue_layout(cfg: AccelConfig) -> data.StructLayout:
    return data.StructLayout({
        "bias": data.ArrayLayout(signed(cfg.acc_width), cfg.cols),
        "mult": data.ArrayLayout(unsigned(cfg.mult_width), cfg.cols),
        "shift": data.ArrayLayout(unsigned(cfg.shift_width), cfg.cols),
    })


class GemmEngine(wiring.Component):
    """Tiled GEMM with bias + requantize epilogue on a ``rows x cols`` systolic array.

    Latency (:attr:`latency`): from the cycle the ``last`` beat of a tile is issued to the array
    until its first output row is valid on ``o``:
    ``FEED + (cols + PE.latency) + epilogue_stages(cfg) + FIFO``
    (one more for sparse commands: :attr:`sparse_latency`).
    Throughput: ``rows * cols`` MACs per cycle while ``k >= max(rows, cols)``; a tile with a
    shorter ``k`` (sparse: fewer kept ``k`` steps) occupies ``max(rows, cols)`` cycles.
    Stalls: any input may stall (the engine idles); ``o`` back-pressure stalls new tiles via
    output credits.

    The options ``a_unsigned`` and ``out16`` change neither the latency nor any cycle count.

    Members
    -------
    cmd : In(stream.Signature(command_layout))
        ``m, k, n, load_weights, sparse, a_unsigned, out16``. Ready while the engine is idle
        and its pipeline was empty in the previous cycle.
    w : In(stream.Signature(ArrayLayout(signed(weight_width), cols)))
    ep : In(stream.Signature(epilogue_layout))
    a : In(stream.Signature(ArrayLayout(signed(act_width), rows)))
        Raw ``act_width``-bit activations: two's complement, or (``cmd.a_unsigned``) the bit
        patterns of unsigned values.
    o : Out(stream.Signature(output_layout))
        ``cols`` lanes of ``signed(OUT16_BITS)``: results saturated to ``OUT16_BITS`` bits
        (``cmd.out16``) or to ``act_width`` bits and sign-extended.
    cw : In(stream.Signature(compressed_beat_layout))
        Compressed sparse weights (sparse commands with ``load_weights``).
    error : Out(1)
        The last command was rejected (bad parameters, or a malformed compressed stream).
    busy : Out(1)
        A command is in progress or results are still in the pipeline or output FIFO.
    loading : Out(1)
        The command still expects weight, compressed-weight or epilogue beats (a sparse stream
        is being checked up to its end).
    cycles : Out(32)
        Number of cycles ``busy`` has been high since reset (wraps).
    """

    def __init__(self, cfg: AccelConfig):
        with validating(self):
            check_config(cfg)
        self._cfg = cfg
        self._array = SystolicArray(cfg)
        super().__init__({
            "cmd": In(stream.Signature(command_layout(cfg))),
            "w": In(stream.Signature(data.ArrayLayout(signed(cfg.weight_width), cfg.cols))),
            "ep": In(stream.Signature(epilogue_layout(cfg))),
            "a": In(stream.Signature(data.ArrayLayout(signed(cfg.act_width), cfg.rows))),
            "o": Out(stream.Signature(output_layout(cfg))),
            "cw": In(stream.Signature(compressed_beat_layout(cfg))),
            "error": Out(1),
            "busy": Out(1),
            "loading": Out(1),
            "cycles": Out(32),
        })

    @property
    def config(self) -> AccelConfig:
        return self._cfg

    @property
    def latency(self) -> int:
        return engine_latency(self._cfg)

    @property
    def sparse_latency(self) -> int:
        """:attr:`latency` of a sparse command: two more stages (the k-index read and its
        register)."""
        return engine_latency(self._cfg) + SPARSE_EXTRA_STAGES

    @property
    def out_fifo_depth(self) -> int:
        """Rows of output buffering: ``cfg.out_fifo_depth``, or (when 0) enough for every row
        that can be in flight after its tile's ``last`` beat, so that credits never stall a
        consumer that is always ready."""
        return self._cfg.out_fifo_depth or default_fifo_depth(self._cfg)

    @property
    def tile_period(self) -> int:
        """Minimum cycles between the ``last`` beats of consecutive tiles (at least 2, so that
        per-tile values can be prefetched into registers)."""
        return tile_period(self._cfg)

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        R, C = cfg.rows, cfg.cols
        kmax = cfg.max_gemm_dim
        ntmax = -(-kmax // C)
        m.submodules.array = array = self._array

        # ---- buffers -----------------------------------------------------------------------
        # Weights, activations and k indices: block RAMs read through a register (data two
        # cycles after the address, see ``buffer_ram``).
        w_wr, w_rd = buffer_ram(m, platform, "wbuf", data.ArrayLayout(
            signed(cfg.weight_width), C), cfg.weight_buffer_depth)
        # The A buffer holds the PE operand (act_width + 1 bits, sign- or zero-extended on the
        # write), in two halves at a power-of-two offset: the address is Cat(k, half).
        a_wr, a_rd = buffer_ram(m, platform, "abuf", data.ArrayLayout(a_operand_shape(cfg), R),
                                2 << ceil_log2(kmax))
        k_wr, k_rd = buffer_ram(m, platform, "kbuf", unsigned(ceil_log2(kmax)),
                                cfg.weight_buffer_depth)
        m.submodules.epbuf = epbuf = memory.Memory(
            shape=epilogue_layout(cfg), depth=ntmax, init=[])
        # Per-tile step counts, with their flags decoded on the write: no kept k (one step with
        # a zero word), at most one step.
        cbuf_layout = data.StructLayout({"steps": range(kmax + 1), "empty": 1, "one": 1})
        m.submodules.cbuf = cbuf = memory.Memory(shape=cbuf_layout, depth=ntmax, init=[])
        m.submodules.decoder = dec = SparseDecoder(cfg)
        wiring.connect(m, wiring.flipped(self.cw), dec.cw)
        c_wr, c_rd = cbuf.write_port(), cbuf.read_port(domain="comb")
        c_rd_next = cbuf.read_port(domain="comb")
        ep_wr, ep_rd = epbuf.write_port(), epbuf.read_port()
        # Tile tags (column tile, valid lanes, valid rows), from the last step's issue to the
        # tile's rows leaving the array; the head is a register (it addresses the epilogue-record
        # memory, a distributed RAM read in the same cycle).
        m.submodules.tags = tags = fifo.SyncFIFOBuffered(
            width=ceil_log2(ntmax + 1) + ceil_log2(C + 1) + ceil_log2(R + 1), depth=4)
        # The output FIFO's writes are never refused: the feeder reserves a tile's rows
        # (``credits``) before its last step issues, so the FIFO's write enable is the
        # epilogue's valid bit alone.
        m.submodules.ofifo = ofifo = ReservedFIFO(OUT16_BITS * C, self.out_fifo_depth)

        # ---- command: latch, validate (nt = ceil(n/C); dense: k*nt words fit the buffer) ----
        # The capacity check compares k with floor(depth / nt) from a table (no multiplier).
        cm = Signal(command_layout(cfg).members["m"])
        ck = Signal(range(kmax + 1))
        cn = Signal(range(kmax + 1))
        cload = Signal()
        csparse = Signal()
        cau = Signal()             # a_unsigned: zero-extend the A operand
        cout16 = Signal()          # out16: saturate to OUT16_BITS
        loaded_sparse = Signal()
        nt = Signal(range(ntmax + 1))
        # nt - 1 and k - 1 as registers: end-of-loop compares need no subtractor.
        nt_m1 = Signal.like(nt)
        ck_m1 = Signal.like(ck)
        ck_is1 = Signal()          # k == 1: every dense tile is one step
        k_fit = Signal(range(cfg.weight_buffer_depth + 1))    # floor(depth / nt)
        too_big = Signal()
        bad_dims = Signal()        # m, k or n out of range
        bad_resident = Signal()    # no matching resident weights for load_weights = 0
        loaded_k = Signal.like(ck)
        loaded_n = Signal.like(cn)
        weights_valid = Signal()
        start = Signal()           # pulses when a validated command starts (a flip-flop)
        go = Signal()              # registered in CHECK2: the command starts in CHECK3
        abort = Signal()           # the sparse weight stream was malformed (registered)
        feed_done = Signal()
        fed = Signal()             # the feeder has issued every tile of the command
        loading = Signal()         # weights or epilogue parameters are still arriving
        pipeline_empty = Signal(init=1)

        # ``nt = ceil(n / cols)`` from the command as it is taken; the table of floor(depth / nt)
        # in CHECK and the compare in CHECK2 start from registers.
        nt_in = Signal.like(nt)
        m.d.comb += nt_in.eq(div_const(self.cmd.payload.n + (C - 1), C))
        dec_go = Signal()          # with ``go``: a sparse command that loads its weights
        m.d.sync += [go.eq(0), dec_go.eq(0)]
        m.d.comb += start.eq(go)
        with m.FSM(name="ctrl") as fsm_ctrl:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(pipeline_empty)
                with m.If(self.cmd.valid & pipeline_empty):
                    p = self.cmd.payload
                    m.d.sync += [cm.eq(p.m), ck.eq(p.k), cn.eq(p.n), cload.eq(p.load_weights),
                                 csparse.eq(p.sparse), cau.eq(p.a_unsigned), cout16.eq(p.out16),
                                 ck_m1.eq(p.k - 1), ck_is1.eq(p.k == 1),
                                 nt.eq(nt_in), nt_m1.eq(nt_in - 1)]
                    # The checks on the taken command are registered (two flags, ORed in
                    # CHECK): the command's payload drives no enable.
                    m.d.sync += [
                        bad_dims.eq((p.m == 0) | (p.m > cfg.max_tokens) | (p.k == 0)
                                    | (p.k > kmax) | (p.n == 0) | (p.n > kmax)),
                        bad_resident.eq(~p.load_weights
                                        & (~weights_valid | (p.k != loaded_k)
                                           | (p.n != loaded_n)
                                           | (p.sparse != loaded_sparse)))]
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.Switch(nt):
                    for t in range(1, ntmax + 1):
                        with m.Case(t):
                            m.d.sync += k_fit.eq(min(cfg.weight_buffer_depth // t, kmax))
                with m.If(bad_dims | bad_resident):
                    m.d.sync += self.error.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "CHECK2"
            with m.State("CHECK2"):
                fits = csparse | (ck <= k_fit)
                m.d.sync += [too_big.eq(~fits), go.eq(fits),
                             dec_go.eq(fits & cload & csparse)]
                m.next = "CHECK3"
            with m.State("CHECK3"):
                with m.If(too_big):
                    m.d.sync += self.error.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [self.error.eq(0), fed.eq(0)]
                    with m.If(cload):
                        m.d.sync += [weights_valid.eq(0), loaded_k.eq(ck), loaded_n.eq(cn),
                                     loaded_sparse.eq(csparse)]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(feed_done):
                    m.d.sync += fed.eq(1)
                with m.If(abort):
                    m.d.sync += self.error.eq(1)
                    m.next = "IDLE"
                with m.Elif(fed & ~loading):
                    # Every tile issued (``fed``, registered: the feeder's issue logic drives
                    # no enable here) and every weight taken (a sparse stream may still be
                    # checked after its last word).
                    with m.If(cload):
                        m.d.sync += weights_valid.eq(1)
                    m.next = "IDLE"

        # ---- weight and epilogue-parameter loaders (concurrent) -----------------------------
        # Column tile tj may be computed once its weights and its epilogue record are in:
        # ``tj < w_rdy`` and ``tj < ep_addr`` (both registers). Dense: ``w_rdy`` counts the
        # tiles whose ``k`` words are written. Sparse: it follows the decoder's ``tiles_done``
        # one cycle later, so that the tile's count (written no later than its last word) can
        # be read from the count buffer before the tile starts. Resident weights: both are set
        # past every tile.
        w_addr = Signal(range(cfg.weight_buffer_depth + 1))
        w_kk_m1 = Signal(range(kmax + 1))       # words of the current tile left, minus one
        ep_addr = Signal(range(ntmax + 1))
        w_rdy = Signal(dec.tiles_done.shape())
        w_active = Signal()        # dense weight beats expected on ``w``
        ep_active = Signal()       # epilogue beats expected on ``ep``
        sw_active = Signal()       # the decoder is loading sparse weights
        m.d.comb += [loading.eq(w_active | ep_active | sw_active), self.loading.eq(loading)]
        with m.If(start):
            m.d.sync += [w_addr.eq(0), w_kk_m1.eq(ck_m1),
                         ep_addr.eq(Mux(cload, 0, ntmax)), w_rdy.eq(Mux(cload, 0, ntmax)),
                         w_active.eq(cload & ~csparse), ep_active.eq(cload),
                         sw_active.eq(cload & csparse)]
        m.d.comb += [dec.start.eq(dec_go), dec.exp_k.eq(ck), dec.exp_n.eq(cn)]
        # Write addresses and data are selected by the command's mode (a flip-flop), only the
        # enables by the loader's state: the decoder writes the weight, k-index and count
        # buffers of a sparse command, the ``w`` stream the weight buffer of a dense one.
        m.d.comb += [w_wr.addr.eq(Mux(csparse, dec.w_addr, w_addr)),
                     w_wr.data.eq(Mux(csparse, dec.w_data, self.w.payload)),
                     k_wr.addr.eq(dec.w_addr), k_wr.data.eq(dec.w_k),
                     c_wr.addr.eq(dec.c_addr), c_wr.data.steps.eq(dec.c_data),
                     c_wr.data.empty.eq(dec.c_data == 0), c_wr.data.one.eq(dec.c_data <= 1)]
        with m.If(sw_active):
            m.d.comb += [w_wr.en.eq(dec.w_en), k_wr.en.eq(dec.w_en), c_wr.en.eq(dec.c_en)]
            m.d.sync += w_rdy.eq(dec.tiles_done)
            # A malformed stream ends the command a cycle after the decoder's ``done`` (the
            # abort is a register: the decoder is placed apart from the feeder). The stream
            # stays "loading" until then, so that the command is not taken as finished.
            with m.If(dec.done & ~dec.error):
                m.d.sync += sw_active.eq(0)
        m.d.sync += abort.eq(sw_active & dec.done & dec.error)
        with m.If(abort):
            m.d.sync += [sw_active.eq(0), ep_active.eq(0), w_rdy.eq(0)]
        with m.If(w_active):
            m.d.comb += [self.w.ready.eq(1), w_wr.en.eq(self.w.valid)]
            with m.If(self.w.valid):
                m.d.sync += [w_addr.eq(w_addr + 1), w_kk_m1.eq(w_kk_m1 - 1)]
                with m.If(w_kk_m1 == 0):
                    m.d.sync += [w_kk_m1.eq(ck_m1), w_rdy.eq(w_rdy + 1)]
                    with m.If(w_rdy == nt_m1):
                        m.d.sync += w_active.eq(0)
        with m.If(ep_active):
            m.d.comb += [self.ep.ready.eq(1), ep_wr.addr.eq(ep_addr),
                         ep_wr.data.eq(self.ep.payload), ep_wr.en.eq(self.ep.valid)]
            with m.If(self.ep.valid):
                m.d.sync += ep_addr.eq(ep_addr + 1)
                with m.If(ep_addr == nt_m1):
                    m.d.sync += ep_active.eq(0)

        def tile_ok(tj):
            return (tj < w_rdy) & (tj < ep_addr)

        # ---- activation loader: tile rows into the two halves of the A buffer --------------
        a_full = Signal(2)
        a_set = Signal(2)
        a_clr = Signal(2)
        m.d.sync += a_full.eq((a_full | a_set) & ~a_clr)
        with m.If(start):
            m.d.sync += a_full.eq(0)
        ld_half = Signal()
        ld_k = Signal(range(kmax))
        ld_rows_left = Signal(range(cfg.max_tokens + 1))
        with m.FSM(name="aload") as fsm_aload:
            with m.State("IDLE"), m.If(start):
                m.d.sync += [ld_half.eq(0), ld_k.eq(0), ld_rows_left.eq(cm)]
                m.next = "LOAD"
            with m.State("LOAD"):
                # Accept beats whenever the half being filled is free.
                free = ~a_full.bit_select(ld_half, 1)
                m.d.comb += [self.a.ready.eq(free),
                             a_wr.addr.eq(Cat(ld_k, ld_half)), a_wr.en.eq(self.a.valid & free)]
                with m.If(self.a.valid & free):
                    m.d.sync += ld_k.eq(ld_k + 1)
                    with m.If(ld_k == ck_m1):
                        m.d.comb += a_set.eq(Mux(ld_half, 0b10, 0b01))
                        m.d.sync += [ld_k.eq(0), ld_half.eq(~ld_half),
                                     ld_rows_left.eq(ld_rows_left - R)]
                        with m.If(ld_rows_left <= R):
                            m.next = "IDLE"
                with m.If(abort):
                    m.next = "IDLE"

        # ---- feeder: issues one reduction step per cycle to the array ----------------------
        # Whether a step issues is decided from flip-flops only: ``cnt_ok`` (the tile is
        # loaded), ``t_last`` (this step ends its tile, registered with the previous step),
        # ``gap_ok`` (the tile period has passed) and ``credit_ok`` (the output FIFO has room for
        # the tile's rows). The last two are registered a cycle ahead: they only matter at a
        # tile's last step, which is at least ``tile_period >= 2`` cycles after the previous
        # one, so the reserve of that tile is already counted; ``credit_ok`` may miss the
        # current cycle's release (conservative by one row).
        credits = Signal(range(self.out_fifo_depth + 1), init=self.out_fifo_depth)
        reserve = Signal(range(R + 1))
        release = Signal()
        credit_ok = Signal()
        m.d.sync += credits.eq(credits - reserve + release)
        m.d.comb += release.eq(self.o.valid & self.o.ready)

        period = self.tile_period
        gap = Signal(range(period + 1), init=period)
        gap_ok = Signal(init=1)                 # gap == period
        issue = Signal()
        issue_last = Signal()
        with m.If(issue_last):
            m.d.sync += gap.eq(1)
        with m.Elif(gap != period):
            m.d.sync += gap.eq(gap + 1)
        m.d.sync += gap_ok.eq(~issue_last & (gap >= period - 1))

        f_half = Signal()
        f_k = Signal(range(kmax))
        f_waddr = Signal(range(cfg.weight_buffer_depth + 1))
        f_tj = Signal(range(ntmax + 1))
        f_rows_left = Signal(range(cfg.max_tokens + 1))
        f_cols_left = Signal(range(kmax + 1))
        # Valid rows / lanes of the current tile, registered: they change only at tile ends,
        # and the next last beat is at least tile_period (>= 2) cycles later.
        rv = Signal(range(R + 1))
        cv = Signal(range(C + 1))
        m.d.sync += [rv.eq(Mux(f_rows_left < R, f_rows_left, R)),
                     cv.eq(Mux(f_cols_left < C, f_cols_left, C)),
                     credit_ok.eq(credits >= rv)]
        # Sparse: tile tj iterates positions p < count_tj of its k-index list (one beat with a
        # zero weight word if the count is 0); words are sequential in the weight buffer.
        # Step count of the current tile, from registers: while waiting, read for tile f_tj;
        # while running, the next tile's count is prefetched (a tile spans >= 2 cycles).
        f_tj_next = Signal.like(f_tj)
        t_cnt = Signal(range(kmax + 1))
        nxt_cnt = Signal(cbuf_layout)
        t_empty = Signal()
        m.d.comb += [c_rd.addr.eq(f_tj), c_rd_next.addr.eq(f_tj_next)]
        m.d.sync += nxt_cnt.eq(c_rd_next.data)
        f_k2 = Signal(range(kmax + 2))          # always f_k + 2: the next step's last compare
        t_last = Signal()                       # the next step to issue ends its tile
        is_first = f_k == 0

        def last_of_first_step(one):
            """``t_last`` for a tile's first step: one step (sparse: the count's ``one`` flag,
            count <= 1; dense: k == 1)."""
            return Mux(csparse, one, ck_is1)

        ctl = Signal(Control)
        m.d.sync += [ctl.valid.eq(issue), ctl.first.eq(is_first), ctl.last.eq(t_last)]
        # Every block-RAM read goes through a register before it is used (ECP5 block RAM has a
        # slow clock-to-output): ``buffer_ram`` reads take two cycles. Dense: issue -> A/W read
        # (2) -> array. Sparse: issue -> k-index read (2) -> A/W read (2) -> array.
        s1_ctl, s2_ctl, s3_ctl = Signal(Control), Signal(Control), Signal(Control)
        s1_half, s2_half = Signal(), Signal()
        s1_zero, s2_zero, s3_zero, s4_zero = Signal(), Signal(), Signal(), Signal()
        s1_waddr, s2_waddr = Signal.like(f_waddr), Signal.like(f_waddr)
        m.d.sync += [s1_ctl.eq(ctl), s2_ctl.eq(s1_ctl), s3_ctl.eq(s2_ctl),
                     s1_half.eq(f_half), s2_half.eq(s1_half),
                     s1_zero.eq(t_empty), s2_zero.eq(s1_zero), s3_zero.eq(s2_zero),
                     s4_zero.eq(s3_zero), s1_waddr.eq(f_waddr), s2_waddr.eq(s1_waddr)]
        # The A buffer is written with each lane widened by one bit: a copy of the sign bit, or
        # 0 for an unsigned command (one AND gate per lane), so its read data is the operand.
        for r in range(R):
            raw = self.a.payload[r]
            m.d.comb += a_wr.data[r].eq(Cat(raw, raw[-1] & ~cau).as_signed())
        dense_ctl = Signal(Control)
        m.d.sync += dense_ctl.eq(ctl)
        kq = Mux(s2_zero, 0, k_rd.data)
        m.d.comb += [
            k_rd.addr.eq(f_waddr),
            a_rd.addr.eq(Mux(csparse, Cat(kq, s2_half), Cat(f_k, f_half))),
            w_rd.addr.eq(Mux(csparse, s2_waddr, f_waddr)),
            array.a.eq(a_rd.data),
            array.b.eq(Mux(csparse & s4_zero, 0, w_rd.data)),
            array.ctl.eq(Mux(csparse, s3_ctl, dense_ctl)),
        ]
        tag_w = data.StructLayout({"tj": unsigned(ceil_log2(ntmax + 1)),
                                   "cv": unsigned(ceil_log2(C + 1)),
                                   "rv": unsigned(ceil_log2(R + 1))})
        tag_in = Signal(tag_w)
        m.d.comb += [tag_in.tj.eq(f_tj), tag_in.cv.eq(cv), tag_in.rv.eq(rv),
                     tags.w_data.eq(tag_in.as_value()), tags.w_en.eq(issue & t_last)]

        # ``cnt_ok``: the current tile's weights and epilogue record are in and ``t_cnt`` holds
        # its count. A tile that is not ready yet (only while the first tile row runs during the
        # weight load) is waited for with ``t_cnt`` re-read every cycle.
        cnt_ok = Signal()
        # ``f_tj == nt - 1`` and ``f_rows_left <= rows`` as registers, kept with f_tj and
        # f_rows_left: the row-end decisions under ``issue`` need no compare.
        row_end = Signal()
        rows_last = Signal()
        with m.FSM(name="feed") as fsm_feed:
            with m.State("IDLE"), m.If(start):
                m.d.sync += [f_half.eq(0), f_k.eq(0), f_k2.eq(2), f_waddr.eq(0),
                             f_tj.eq(0),
                             f_tj_next.eq(Mux(nt_m1 == 0, 0, 1)), cnt_ok.eq(0),
                             row_end.eq(nt_m1 == 0), rows_last.eq(cm <= R),
                             f_rows_left.eq(cm), f_cols_left.eq(cn)]
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.sync += [t_cnt.eq(c_rd.data.steps), t_empty.eq(csparse & c_rd.data.empty),
                             t_last.eq(last_of_first_step(c_rd.data.one)),
                             cnt_ok.eq(tile_ok(f_tj))]
                with m.If(abort):
                    m.next = "IDLE"
                with m.Elif(a_full.bit_select(f_half, 1)):
                    m.next = "RUN"
            with m.State("RUN"):
                # A tile's rows are reserved in the output FIFO when its last beat issues.
                can = cnt_ok & (~t_last | (gap_ok & credit_ok))
                m.d.comb += issue.eq(can)
                with m.If(~cnt_ok):
                    m.d.sync += [t_cnt.eq(c_rd.data.steps),
                                 t_empty.eq(csparse & c_rd.data.empty),
                                 t_last.eq(last_of_first_step(c_rd.data.one)),
                                 cnt_ok.eq(tile_ok(f_tj))]
                with m.If(can):
                    m.d.sync += [f_k.eq(f_k + 1), f_k2.eq(f_k2 + 1),
                                 f_waddr.eq(f_waddr + ~t_empty),
                                 t_last.eq(f_k2 == Mux(csparse, t_cnt, ck))]
                    with m.If(t_last):
                        m.d.comb += [issue_last.eq(1), reserve.eq(rv)]
                        m.d.sync += [f_k.eq(0), f_k2.eq(2), f_tj.eq(f_tj_next),
                                     f_tj_next.eq(Mux(f_tj_next == nt_m1, 0, f_tj_next + 1)),
                                     t_cnt.eq(nxt_cnt.steps),
                                     t_empty.eq(csparse & nxt_cnt.empty),
                                     t_last.eq(last_of_first_step(nxt_cnt.one)),
                                     cnt_ok.eq(tile_ok(f_tj_next)),
                                     row_end.eq(f_tj_next == nt_m1),
                                     f_cols_left.eq(f_cols_left - C)]
                        with m.If(row_end):              # tile row finished
                            m.d.comb += a_clr.eq(Mux(f_half, 0b10, 0b01))
                            m.d.sync += [f_half.eq(~f_half), f_tj.eq(0), f_waddr.eq(0),
                                         f_cols_left.eq(cn), f_rows_left.eq(f_rows_left - R),
                                         rows_last.eq(f_rows_left <= 2 * R)]
                            with m.If(rows_last):
                                m.d.comb += feed_done.eq(1)
                                m.next = "IDLE"
                            with m.Elif(~a_full.bit_select(~f_half, 1)):
                                m.next = "WAIT"      # next tile row not loaded yet
                with m.If(abort):
                    m.next = "IDLE"

        # One-hot state registers in synthesis: each state test is one flip-flop.
        for fsm in (fsm_ctrl, fsm_feed, fsm_aload):
            fsm.state.attrs["fsm_encoding"] = "one-hot"

        # ---- epilogue: bias, multiply, round, shift, saturate (to act_width or OUT16_BITS bits);
        # lanes past n are zeroed -------------------------------------------------------------
        head = Signal(tag_w)
        m.d.comb += [head.eq(tags.r_data), ep_rd.addr.eq(head.tj),
                     tags.r_en.eq(array.out_valid & (array.out_row == R - 1))]
        aw, accw = cfg.act_width, cfg.acc_width

        # Stage 1: the finished row and its tile's lane mask.
        v1 = Signal()
        acc1 = Signal(data.ArrayLayout(signed(accw), C))
        keep1 = Signal(C)
        m.d.sync += [v1.eq(array.out_valid & (array.out_row < head.rv)), acc1.eq(array.out_data)]
        for c in range(C):
            m.d.sync += keep1[c].eq(head.cv > c)

        def delayed(sig, cycles, name):
            for i in range(cycles):
                nxt = Signal.like(sig, name=f"{name}_d{i}")
                m.d.sync += nxt.eq(sig)
                sig = nxt
            return sig

        mul_stages = epilogue_multiply_latency(cfg)
        # Stage 2: the tile's parameters (read in stage 1) registered; the row waits a cycle.
        par = Signal(epilogue_layout(cfg))
        acc1b = Signal.like(acc1)
        keep1b = Signal(C)
        m.d.sync += [par.eq(ep_rd.data), acc1b.eq(acc1), keep1b.eq(keep1)]
        valids = [v1]
        out_row = Signal(output_layout(cfg))
        for c in range(C):
            # Stage 3: bias (one bit wider than the accumulator).
            s2 = Signal(signed(accw + 1), name=f"biased_{c}")
            mult2 = Signal(unsigned(cfg.mult_width), name=f"mult_{c}")
            sh2 = Signal(unsigned(cfg.shift_width), name=f"shift2_{c}")
            m.d.sync += [s2.eq(acc1b[c] + par.bias[c]), mult2.eq(par.mult[c]),
                         sh2.eq(par.shift[c])]
            # Stages 4..: multiply (DSP with operand and product registers).
            p3, _ = pipelined_multiply(m, platform, s2, mult2, name=f"requant_{c}")
            # Round: add 2^(S-1) (0 for S = 0). The term is decoded from the shift in the
            # multiply's last stage, so the rounding stage is a bare adder.
            # Two stages: one-hot codes of the shift's high and low three bits, then one AND per
            # term bit (bit i of 2^(S-1) is set for S = i + 1).
            prod_w = len(p3)
            assert mul_stages >= 2
            sh_pre2 = delayed(sh2, mul_stages - 2, f"shift_{c}")
            hi_oh = Signal(1 << max(0, cfg.shift_width - 3), name=f"shift_hi_{c}")
            lo_oh = Signal(8, name=f"shift_lo_{c}")
            sh_pre = Signal.like(sh2, name=f"shift_pre_{c}")
            m.d.sync += [hi_oh.eq(Const(1, len(hi_oh)) << sh_pre2[3:]),
                         lo_oh.eq(Const(1, 8) << sh_pre2[:3]), sh_pre.eq(sh_pre2)]
            half = Signal(prod_w, name=f"round_term_{c}")
            sh3 = Signal.like(sh2, name=f"shift3_{c}")
            for i in range(prod_w):
                t = i + 1
                if (t >> 3) < len(hi_oh):
                    m.d.sync += half[i].eq(hi_oh[t >> 3] & lo_oh[t & 7])
            m.d.sync += sh3.eq(sh_pre)
            r4 = Signal(signed(prod_w + 1), name=f"rounded_{c}")
            sh4 = Signal.like(sh2, name=f"shift4_{c}")
            m.d.sync += [r4.eq(p3 + half), sh4.eq(sh3)]
            # Arithmetic shift in two steps: multiples of 8, then the rest.
            q5 = Signal(signed(prod_w + 1), name=f"coarse_{c}")
            sh5 = Signal(3, name=f"shift5_{c}")
            m.d.sync += [q5.eq(r4 >> Cat(Const(0, 3), sh4[3:])), sh5.eq(sh4[:3])]
            q6 = Signal(signed(prod_w + 1), name=f"shifted_{c}")
            m.d.sync += q6.eq(q5 >> sh5)
            # Saturate in two stages (lanes past n are zeroed in the first): the value fits
            # ``b`` bits when its bits from ``b - 1`` up are all equal. First stage: whether
            # the bits from OUT16_BITS - 1 up (``hi``) and those from act_width - 1 to there
            # (``lo``) are all zeros or all ones; second: the fit for the command's width,
            # then the result bits (the low bits or the bound of the value's sign).
            keep6 = delayed(keep1b[c], 4 + mul_stages, f"keep_{c}")
            q7 = Signal(OUT16_BITS, name=f"sat_value_{c}")
            neg7 = Signal(name=f"sat_neg_{c}")
            z_hi, o_hi, z_lo, o_lo = (Signal(name=f"sat_{n}_{c}")
                                      for n in ("z_hi", "o_hi", "z_lo", "o_lo"))
            hi_bits, lo_bits = q6[OUT16_BITS - 1:], q6[aw - 1:OUT16_BITS - 1]
            m.d.sync += [
                q7.eq(Mux(keep6, q6[:OUT16_BITS], 0)), neg7.eq(keep6 & q6[-1]),
                z_hi.eq(~keep6 | (hi_bits == 0)), o_hi.eq(keep6 & hi_bits.all()),
                z_lo.eq(~keep6 | (lo_bits == 0) if len(lo_bits) else 1),
                o_lo.eq(lo_bits.all() if len(lo_bits) else 1),
            ]
            fits = Mux(cout16, z_hi | o_hi, (z_lo & z_hi) | (o_lo & o_hi))
            res = Signal(OUT16_BITS, name=f"sat_result_{c}")
            # A bound's bits: the sign on top, its inverse below. Bits from the result's sign
            # bit up are the sign (for a fitting value as well).
            for i in range(OUT16_BITS):
                sat = Mux(fits, q7[i], ~neg7) if i < OUT16_BITS - 1 else neg7
                m.d.comb += res[i].eq(sat if i < aw - 1 else Mux(cout16, sat, neg7))
            m.d.sync += out_row[c].eq(res)
        v = v1
        for i in range(EPILOGUE_FIXED_STAGES - 1 + mul_stages):
            nxt = Signal(name=f"epilogue_valid_{i + 2}")
            m.d.sync += nxt.eq(v)
            valids.append(nxt)
            v = nxt
        m.d.comb += [ofifo.w_data.eq(out_row.as_value()), ofifo.w_en.eq(v)]

        m.d.comb += [
            self.o.valid.eq(ofifo.r_rdy),
            self.o.payload.eq(ofifo.r_data),
            ofifo.r_en.eq(self.o.ready),
        ]

        # ---- status --------------------------------------------------------------------------
        # "A row in the epilogue": stages 2.. hold what stages 1.. held a cycle earlier, so their
        # OR is registered from the previous cycle's (two flip-flops instead of an OR tree).
        tail_any = Signal()
        m.d.sync += tail_any.eq(Cat(valids[:-1]).any())
        # The decoder's busy flag is registered on its way here (the decoder is placed apart):
        # it falls before the last tile's rows leave the array, except after a malformed
        # stream, whose drain then holds the next command one more cycle.
        dec_busy = Signal()
        m.d.sync += dec_busy.eq(dec.busy)
        in_flight = (tags.w_level != 0) | valids[0] | tail_any | array.out_valid | dec_busy
        # ``cmd.ready`` comes from a register: once the controller has been idle for a cycle
        # nothing enters the pipeline, so ``in_flight`` can only fall and last cycle's value is
        # safe (a command that waits for the drain is taken one cycle after it).
        m.d.sync += pipeline_empty.eq(fsm_ctrl.ongoing("IDLE") & ~in_flight)
        m.d.comb += self.busy.eq(~fsm_ctrl.ongoing("IDLE") | in_flight | (ofifo.w_level != 0))
        # The count of earlier busy cycles: a counter of the registered ``busy`` (its enable is
        # a flip-flop, not the occupancy OR) plus that register, selected between the counter
        # and a copy kept one ahead (a mux, not an adder, on the output).
        busy_r = Signal()
        count = Signal.like(self.cycles)
        count_p1 = Signal.like(self.cycles, init=1)
        m.d.sync += busy_r.eq(self.busy)
        with m.If(busy_r):
            m.d.sync += [count.eq(count + 1), count_p1.eq(count_p1 + 1)]
        m.d.comb += self.cycles.eq(Mux(busy_r, count_p1, count))
        return m
