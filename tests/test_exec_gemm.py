"""rtl.exec_gemm.GemmUnit against the golden executor (GEMM: dense, SPARSE, B_BUF, B_BUF|B_T,
A_U8, OUT16), the exact cycle model, stalls, the corrupt-stream error path and the bus rule."""

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Value

from golden.config import PRESETS, AccelConfig
from golden.gemm import EpilogueParams
from golden.isa import (
    Buf,
    Flag,
    Instr,
    Op,
    Operand,
    ProgramError,
    pack_dense_weights,
    pack_epilogue,
    validate_instr,
)
from golden.pruning import BlockPattern, block_prune, hierarchical_prune
from golden.sparse_format import encode
from rtl.exec_gemm import GemmUnit, TransposeReader, WordReader, cycles
from rtl.ports import mem_beat_bytes
from sim.instr import (
    UnitHarness,
    check_instr,
    execute_on_unit,
    golden_instr,
    read_buffers,
    run_instr,
)
from sim.memory import MemoryModel
from sim.streams import run_simulation

ACT0, ACT1, ACT2, ACT3 = Buf.ACT0, Buf.ACT1, Buf.ACT2, Buf.ACT3


def _bufs(cfg, rng):
    """Every buffer random (stale data everywhere)."""
    from sim.instr import empty_buffers
    bufs = empty_buffers(cfg)
    for b in (ACT0, ACT1, ACT2, ACT3):
        bufs[b] = rng.integers(-128, 128, bufs[b].shape)
    bufs[Buf.LOGIT] = rng.integers(-(1 << 15), 1 << 15, bufs[Buf.LOGIT].shape)
    bufs[Buf.PROB] = rng.integers(0, 256, bufs[Buf.PROB].shape)
    bufs[Buf.SCORE] = rng.integers(0, 256, bufs[Buf.SCORE].shape)
    return bufs


def _gemm(cfg, rng, m, k, n, flags=0, *, a=(ACT0, 0, 0), b=(ACT2, 0, 0), dst=(ACT1, 0, 0),
          weights=None, ep=None, compressed=None, lead=5):
    """A validated GEMM and its memory image: random bytes, the weight stream (dense or
    ``compressed``) at an unaligned ``addr``, the epilogue record at ``addr2``."""
    flags = Flag(flags)
    ep = EpilogueParams.random(cfg, n, rng, k) if ep is None else ep
    if flags & Flag.SPARSE:
        wbytes = bytes(compressed)
    elif flags & Flag.B_BUF:
        wbytes = b""
    else:
        w = rng.integers(-128, 128, (k, n)) if weights is None else weights
        wbytes = pack_dense_weights(cfg, w)
    ebytes = pack_epilogue(cfg, ep)
    mem = bytearray(rng.integers(0, 256, lead, dtype=np.uint8).tobytes())
    addr = len(mem)
    mem += wbytes + rng.integers(0, 256, 3, dtype=np.uint8).tobytes()
    addr2 = len(mem)
    mem += ebytes + rng.integers(0, 256, 7, dtype=np.uint8).tobytes()
    ins = Instr(Op.GEMM, int(flags), m, k, n, dst=Operand(*dst), a=Operand(*a),
                b=Operand(*b) if flags & Flag.B_BUF else Operand(0),
                addr=addr if wbytes else 0, addr2=addr2,
                imm=len(wbytes) if flags & Flag.SPARSE else 0)
    validate_instr(cfg, ins, 0, len(mem))
    return ins, mem


def _check(cfg, ins, mem, bufs, rng, *, stall=0.0, latency=2, compressed=None):
    res = check_instr(cfg, GemmUnit(cfg), ins, mem, bufs, rng=rng, stall=stall,
                      latency=latency)
    if stall == 0:
        assert res["cycles"] == cycles(cfg, ins, latency, compressed)
    assert res["model"].reads == (1 if ins.flags & Flag.B_BUF else 2)
    assert res["model"].writes == 0
    return res


# ---- dense -----------------------------------------------------------------------------------

# m, k, n, a, dst, latency
DENSE = [
    (1, 1, 1, (ACT0, 0, 0), (ACT1, 0, 0), 2),                  # smallest
    (5, 7, 6, (ACT3, 3, 8), (ACT3, 20, 4), 1),                 # same bank, offsets
    (17, 32, 24, (ACT0, 0, 32), (ACT2, 1, 0), 2),              # a at column 32, dst at row 1
    (13, 9, 3, (ACT1, 19, 84), (ACT0, 0, 92), 7),              # n < cols, last columns
    (5, 96, 32, (ACT2, 23, 0), (ACT3, 5, 64), 3),              # k = 96, weight buffer full
    (4, 32, 96, (ACT0, 28, 64), (ACT1, 0, 0), 2),              # n = 96, weight buffer full
    (32, 8, 5, (ACT0, 0, 88), (ACT0, 0, 0), 1),                # m = 32
]


@pytest.mark.parametrize("m, k, n, a, dst, latency", DENSE)
def test_dense(m, k, n, a, dst, latency, tiny, rng):
    ins, mem = _gemm(tiny, rng, m, k, n, a=a, dst=dst)
    _check(tiny, ins, mem, _bufs(tiny, rng), rng, latency=latency)


@pytest.mark.parametrize("kind", ["saturate", "extreme_shift", "bias_only"])
def test_dense_extremes(kind, tiny, rng):
    """Saturation both ways, the largest shift and multiplier, extreme biases."""
    cfg, m, k, n = tiny, 6, 40, 7
    bufs = _bufs(tiny, rng)
    bufs[ACT0][:m, :k] = rng.choice([-128, 127], (m, k))
    w = rng.choice([-128, 127], (k, n))
    top = (1 << (cfg.acc_width - 1)) - 1
    if kind == "saturate":
        ep = EpilogueParams(cfg, n, bias=rng.choice([-top - 1, top, 0], n),
                            mult=np.full(n, (1 << cfg.mult_width) - 1), shift=np.zeros(n, int))
    elif kind == "extreme_shift":
        ep = EpilogueParams(cfg, n, bias=rng.integers(-top - 1, top, n),
                            mult=np.full(n, (1 << cfg.mult_width) - 1),
                            shift=np.array([cfg.max_shift, cfg.max_shift - 1, 40, 33, 32, 31, 1]))
    else:
        bufs[ACT0][:m, :k] = 0
        ep = EpilogueParams(cfg, n, bias=np.array([-top - 1, top, -1, 1, 300, -300, 0]),
                            mult=rng.integers(0, 1 << cfg.mult_width, n),
                            shift=rng.integers(0, 12, n))
    ins, mem = _gemm(cfg, rng, m, k, n, weights=w, ep=ep)
    res = _check(cfg, ins, mem, bufs, rng)
    out = res["entry"].output
    if kind == "saturate":
        assert {-128, 127} <= set(out.ravel().tolist())


# ---- sparse ----------------------------------------------------------------------------------

def _pattern(rng, kind):
    if kind == "balanced":
        w = rng.integers(-128, 128, (16, 32))
        return w, block_prune(w, 0.5, (8, 8))
    if kind == "hierarchical":
        w = rng.integers(-128, 128, (16, 32))
        return w, hierarchical_prune(w, 0.5, (8, 8))
    if kind == "hierarchical_unbalanced":
        w = rng.integers(-128, 128, (20, 30))
        return w, hierarchical_prune(w, 0.25, (4, 4), balanced=False)
    if kind == "empty_block_row":
        w = rng.integers(-128, 128, (22, 32))
        blocks = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], bool)
        return w, BlockPattern((22, 32), (8, 8), blocks)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, m, latency", [
    ("balanced", 9, 2), ("hierarchical", 5, 2), ("hierarchical_unbalanced", 7, 3),
    ("empty_block_row", 11, 12),
])
def test_sparse(kind, m, latency, tiny, rng):
    w, pattern = _pattern(rng, kind)
    n, k = w.shape
    stream = encode(w, pattern)
    ins, mem = _gemm(tiny, rng, m, k, n, Flag.SPARSE, compressed=stream, a=(ACT3, 2, 32),
                     dst=(ACT3, 14, 0))
    _check(tiny, ins, mem, _bufs(tiny, rng), rng, latency=latency, compressed=stream)


def _corrupt(rng, kind):
    w, pattern = _pattern(rng, "balanced")
    stream = bytearray(encode(w, pattern))
    n, k = w.shape
    if kind == "magic":
        stream[0] ^= 0x40
    elif kind == "shape":                   # a stream of another shape than n x k
        n -= 4
    elif kind == "index":                   # a block-column index out of range
        stream[26] = 9
    elif kind == "trailing":                # found only after the last block-row's words
        stream += b"\0" * 5
    else:
        raise AssertionError(kind)
    return bytes(stream), n, k


@pytest.mark.parametrize("kind, stall", [("magic", 0.0), ("shape", 0.3), ("index", 0.25)])
def test_corrupt_stream_raises_error(kind, stall, tiny, rng):
    """The engine's decoder rejects the stream: ``done`` with ``error``, every requested beat
    consumed (the memory model's queues are empty and ``rdata`` idle afterwards), nothing
    written."""
    stream, n, k = _corrupt(rng, kind)
    ins, mem = _gemm(tiny, rng, 9, k, n, Flag.SPARSE, compressed=stream)
    bufs = _bufs(tiny, rng)
    with pytest.raises(ProgramError, match="addr"):
        golden_instr(tiny, ins, mem, bufs)
    res = run_instr(tiny, GemmUnit(tiny), ins, mem, bufs, rng=rng, stall=stall, latency=3)
    assert res["error"]
    assert res["memory"] == mem
    for b, x in bufs.items():
        assert np.array_equal(res["buffers"][b], x)
    assert res["model"].reads == 2


# ---- B from a bank -------------------------------------------------------------------------

# m, k, n, flags, a, b, dst
BBUF = [
    (9, 13, 6, Flag.B_BUF, (ACT0, 0, 0), (ACT0, 10, 32), (ACT1, 1, 0)),   # b beside a
    (17, 16, 17, Flag.B_BUF | Flag.B_T, (ACT0, 0, 0), (ACT0, 0, 32), (ACT1, 0, 0)),  # Q.K^T
    (6, 7, 3, Flag.B_BUF | Flag.B_T, (ACT2, 3, 12), (ACT3, 29, 4), (ACT2, 9, 44)),
    (1, 1, 1, Flag.B_BUF | Flag.B_T, (ACT1, 31, 92), (ACT1, 31, 88), (ACT1, 30, 0)),
]


@pytest.mark.parametrize("m, k, n, flags, a, b, dst", BBUF)
def test_b_from_bank(m, k, n, flags, a, b, dst, tiny, rng):
    ins, mem = _gemm(tiny, rng, m, k, n, flags, a=a, b=b, dst=dst)
    _check(tiny, ins, mem, _bufs(tiny, rng), rng)


def test_attention_logits_out16(tiny, rng):
    """Q.K^T of one head into LOGIT (B_BUF | B_T | OUT16), 16-bit saturation both ways."""
    cfg, m, k, n = tiny, 17, 16, 17
    ep = EpilogueParams(cfg, n, bias=rng.integers(-(1 << 20), 1 << 20, n),
                        mult=rng.integers(1, 1 << cfg.mult_width, n), shift=rng.integers(12, 28, n))
    ins, mem = _gemm(cfg, rng, m, k, n, Flag.B_BUF | Flag.B_T | Flag.OUT16, a=(ACT0, 0, 0),
                     b=(ACT0, 0, 32), dst=(Buf.LOGIT, 0, 0), ep=ep)
    res = _check(cfg, ins, mem, _bufs(cfg, rng), rng)
    out = res["entry"].output
    assert out.min() == -(1 << 15) and out.max() == (1 << 15) - 1
    assert np.any((np.abs(out) > 127) & (np.abs(out) < (1 << 15) - 1))


def test_attention_pv_a_u8(tiny, rng):
    """P.V of one head (A_U8 | B_BUF): probabilities from PROB, unsigned, including 255."""
    cfg = tiny
    bufs = _bufs(cfg, rng)
    bufs[Buf.PROB][:17, :17] = rng.choice([0, 1, 128, 200, 255], (17, 17))
    ins, mem = _gemm(cfg, rng, 17, 17, 16, Flag.A_U8 | Flag.B_BUF, a=(Buf.PROB, 0, 0),
                     b=(ACT2, 0, 48), dst=(ACT1, 0, 16))
    _check(cfg, ins, mem, bufs, rng)


def test_classifier_logits_out16(tiny, rng):
    """A dense GEMM into LOGIT at a row offset (OUT16) and an unsigned A at column offsets."""
    ins, mem = _gemm(tiny, rng, 2, 32, 10, Flag.OUT16, a=(ACT3, 0, 0), dst=(Buf.LOGIT, 1, 4))
    _check(tiny, ins, mem, _bufs(tiny, rng), rng, latency=4)
    ins, mem = _gemm(tiny, rng, 5, 21, 6, Flag.A_U8 | Flag.OUT16, a=(Buf.PROB, 3, 8),
                     dst=(Buf.LOGIT, 20, 12))
    _check(tiny, ins, mem, _bufs(tiny, rng), rng)


def test_tiny_model_gemms(tiny):
    """GEMMs of the compiled tiny model (``golden.compiler.build_tiny``), each run from the
    golden machine state before it: a sparse projection, the attention pair of head 0 and the
    classifier."""
    from golden.compiler import build_tiny
    from golden.executor import _Machine, _step
    _, _, comp = build_tiny()
    rng = np.random.default_rng(7)
    mc = _Machine(tiny, comp.memory_with_input(rng.integers(-128, 128, comp.input_shape)))
    wanted = {                          # flags -> (tokens, memory latency), the first of each
        "SPARSE": (17, 2), "B_BUF|B_T|OUT16": (17, 2), "B_BUF|A_U8": (17, 3), "OUT16": (1, 5)}
    ran = []
    for i, ins in enumerate(comp.program):
        if ins.op == Op.HALT:
            break
        key = Flag(ins.flags).name if ins.flags else ""
        if ins.op == Op.GEMM and key in wanted and wanted[key][0] == ins.m \
                and not (key == "SPARSE" and ins.n != 32):
            latency = wanted.pop(key)[1]
            stream = bytes(mc.mem[ins.addr:ins.addr + ins.imm]) if key == "SPARSE" else None
            res = check_instr(tiny, GemmUnit(tiny), ins, mc.mem, mc.bufs, latency=latency)
            assert res["cycles"] == cycles(tiny, ins, latency, stream)
            ran.append(key)
        _step(mc, ins, i)
    assert len(ran) == 4


@pytest.mark.parametrize("rows, cols, flags", [
    (3, 5, 0),                                  # cols not a power of two: constant dividers
    (4, 2, Flag.B_BUF | Flag.B_T),              # rows > cols: the A reader is the slower side
])
def test_other_array_shapes(rows, cols, flags, rng):
    cfg = AccelConfig(rows=rows, cols=cols, max_tokens=16, max_dim=16, max_hidden=32)
    ins, mem = _gemm(cfg, rng, 11, 9, 7, flags, a=(ACT0, 2, cols), b=(ACT0, 1, 4 * cols),
                     dst=(ACT1, 1, cols))
    _check(cfg, ins, mem, _bufs(cfg, rng), rng, latency=3)


# ---- random instructions with stalls ---------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_random_with_stalls(seed, tiny):
    rng = np.random.default_rng(seed)
    cfg = tiny
    kind = ["dense", "sparse", "b_buf", "b_t", "dense"][seed]
    m = int(rng.integers(1, cfg.max_tokens + 1))
    k = int(rng.integers(1, 33))
    n = int(rng.integers(1, 33))
    a = (Buf(int(rng.integers(0, 4))), int(rng.integers(0, cfg.max_tokens - m + 1)), 0)
    dst = (Buf((int(a[0]) + 1) % 4), int(rng.integers(0, cfg.max_tokens - m + 1)),
           cfg.cols * int(rng.integers(0, 8)))
    flags, stream, b = 0, None, (ACT0, 0, 0)
    if kind == "sparse":
        w = rng.integers(-128, 128, (n, k))
        pattern = block_prune(w, 0.5, (cfg.cols, cfg.rows), balanced=bool(seed % 2))
        flags, stream = Flag.SPARSE, encode(w, pattern)
    elif kind in ("b_buf", "b_t"):
        flags = Flag.B_BUF | (Flag.B_T if kind == "b_t" else 0)
        rows = n if kind == "b_t" else k
        m = min(m, cfg.max_tokens - rows)
        a = (a[0], 0, 0)
        b = (a[0], int(rng.integers(0, cfg.max_tokens - rows + 1)), 64)
    ins, mem = _gemm(cfg, rng, m, k, n, flags, a=a, b=b, dst=dst, compressed=stream)
    _check(cfg, ins, mem, _bufs(cfg, rng), rng, stall=0.2 + 0.2 * rng.random(),
           latency=int(rng.integers(1, 7)))


# ---- preload: the load phase ahead of start -------------------------------------------------

def _sparse_case(rng, m=9, kind="balanced"):
    w, pattern = _pattern(rng, kind)
    n, k = w.shape
    stream = encode(w, pattern)
    ins, mem = _gemm(TINY_CFG, rng, m, k, n, Flag.SPARSE, compressed=stream, a=(ACT3, 2, 32),
                     dst=(ACT3, 14, 0))
    return ins, mem, stream


TINY_CFG = PRESETS["tiny"]


# Heads: none, the shortest, during the records, during the weights, everything loaded.
@pytest.mark.parametrize("head", [0, 1, 9, 60, 700])
@pytest.mark.parametrize("kind", ["dense", "sparse", "small"])
def test_preload_cycles(kind, head, tiny, rng):
    """A GEMM preloaded ``head`` cycles before ``start`` (``instr`` holds another instruction
    meanwhile, the buffer ports stay idle): bit-exact, and ``cycles(..., head=h)`` equals the
    simulation from ``start`` to ``done``."""
    stream, latency = None, 2
    if kind == "dense":
        ins, mem = _gemm(tiny, rng, 17, 32, 24, a=(ACT0, 0, 32), dst=(ACT2, 1, 0))
    elif kind == "sparse":
        ins, mem, stream = _sparse_case(rng, 11, "hierarchical")
    else:                                   # n < cols, short last channel group
        ins, mem = _gemm(tiny, rng, 13, 9, 3, a=(ACT1, 19, 84), dst=(ACT0, 0, 92))
        latency = 5
    res = check_instr(tiny, GemmUnit(tiny), ins, mem, _bufs(tiny, rng), rng=rng,
                      latency=latency, head=head)
    want = cycles(tiny, ins, latency, stream, head=head)
    assert res["cycles"] == want
    assert res["model"].reads == 2
    if head:
        assert want < cycles(tiny, ins, latency, stream)
    if head == 700:                         # everything loaded: the activations' pace only
        assert want == cycles(tiny, ins, latency, stream, head=5000)


def test_preload_b_from_bank(tiny, rng):
    """The unit also preloads a ``B_BUF | B_T`` GEMM (records only; B streams from the bank
    from ``start``), though the controller does not."""
    ins, mem = _gemm(tiny, rng, 17, 16, 17, Flag.B_BUF | Flag.B_T, b=(ACT0, 0, 32))
    for head in (3, 40):
        res = check_instr(tiny, GemmUnit(tiny), ins, mem, _bufs(tiny, rng), rng=rng, head=head)
        assert res["cycles"] == cycles(tiny, ins, 2, head=head)


@pytest.mark.parametrize("seed", range(4))
def test_preload_with_stalls(seed, tiny):
    """Random stalls on every memory channel, a random head start: bit-exact."""
    rng = np.random.default_rng(100 + seed)
    if seed % 2:
        ins, mem, _ = _sparse_case(rng, int(rng.integers(1, 18)))
    else:
        ins, mem = _gemm(tiny, rng, int(rng.integers(1, 33)), int(rng.integers(1, 33)),
                         int(rng.integers(1, 33)), a=(ACT1, 0, 0), dst=(ACT2, 0, 8))
    check_instr(tiny, GemmUnit(tiny), ins, mem, _bufs(tiny, rng), rng=rng,
                stall=0.2 + 0.2 * rng.random(), latency=int(rng.integers(1, 6)),
                head=int(rng.integers(1, 400)))


@pytest.mark.parametrize("kind, head", [("magic", 200), ("trailing", 600), ("index", 3)])
def test_preload_corrupt_stream_reported_after_start(kind, head, tiny, rng):
    """A malformed stream found during the preload is reported at the instruction itself:
    ``done`` with ``error`` only after ``start``, every beat taken, nothing written."""
    stream, n, k = _corrupt(rng, kind)
    ins, mem = _gemm(tiny, rng, 9, k, n, Flag.SPARSE, compressed=stream)
    bufs = _bufs(tiny, rng)
    res = run_instr(tiny, GemmUnit(tiny), ins, mem, bufs, rng=rng, latency=3, head=head)
    assert res["error"]
    assert res["model"].reads == 2
    if kind == "magic":
        assert res["cycles"] == 1             # found long before start: done at once
    for b, x in bufs.items():
        assert np.array_equal(res["buffers"][b], x), Buf(b).name


@pytest.mark.parametrize("kind, head, stall", [("dense", 30, 0.0), ("dense", 400, 0.3),
                                               ("corrupt", 100, 0.0), ("sparse", 5, 0.2)])
def test_abort_after_preload(kind, head, stall, tiny, rng):
    """``abort`` instead of ``start`` (the program failed while the GEMM preloaded): the unit
    runs to ``done`` without a single buffer write, takes every beat of its bursts, and the
    next (preloaded) GEMM on the unit is exact."""
    cfg = tiny
    unit = GemmUnit(cfg)
    bufs = _bufs(cfg, rng)
    if kind == "dense":
        ins1, mem1 = _gemm(cfg, rng, 17, 32, 24, dst=(ACT1, 0, 0))
    elif kind == "sparse":
        ins1, mem1, _ = _sparse_case(rng)
    else:
        stream, n, k = _corrupt(rng, "magic")
        ins1, mem1 = _gemm(cfg, rng, 9, k, n, Flag.SPARSE, compressed=stream)
    ins2, mem2 = _gemm(cfg, rng, 7, 11, 9, a=(ACT0, 2, 4), dst=(ACT3, 3, 8), lead=len(mem1))
    mem = bytearray(mem2)
    mem[:len(mem1)] = mem1
    _, g_bufs, _ = golden_instr(cfg, ins2, mem, bufs)
    h = UnitHarness(cfg, unit, bufs)
    model = MemoryModel(unit.mem, mem_beat_bytes(cfg), mem, rng=rng, stall=stall)
    seen = {}

    async def bench(ctx):
        ctx.set(unit.preload_instr.as_value(), int.from_bytes(ins1.encode(), "little"))
        ctx.set(unit.preload, 1)
        await ctx.tick()
        ctx.set(unit.preload, 0)
        for _ in range(head):
            await ctx.tick()
        ctx.set(unit.abort, 1)
        await ctx.tick()
        ctx.set(unit.abort, 0)
        writes = 0
        while not ctx.get(unit.done):
            writes += ctx.get(unit.wr.en)
            await ctx.tick()
        seen["writes"] = writes + ctx.get(unit.wr.en)
        await ctx.tick()
        assert not ctx.get(unit.mem.rdata.valid), "a beat was left behind"
        assert not ctx.get(unit.mem_busy)
        seen["error"] = (await execute_on_unit(ctx, unit, ins2, head=4))[0]
        await ctx.tick()
        seen["buffers"] = read_buffers(ctx, cfg, h.buffers)

    run_simulation(h, [bench], max_cycles=20_000, background=model.processes())
    assert seen["writes"] == 0 and not seen["error"]
    assert model.reads == 4
    for b in g_bufs:
        assert np.array_equal(seen["buffers"][b], g_bufs[b]), Buf(b).name


# ---- cycles, bus rule, back to back, construction --------------------------------------------

def test_cycles_values(tiny):
    """The model's values for a few tiny-model shapes (start to done, memory latency 2)."""
    def ins(m, k, n, flags=0):
        return Instr(Op.GEMM, int(flags), m, k, n, Operand(ACT1), Operand(ACT0), Operand(ACT2))
    assert cycles(tiny, ins(1, 1, 1)) == 34
    # 17 x 32 x 96: 24 epilogue records (168 beats from cycle 3, the engine takes records
    # from cycle S + 1 = 4: the last in 170), the weights from cycle 171; column tile 0 is in
    # by cycle 202 and starts in 204; the first tile row follows the weight load (32 cycles a
    # tile), then 4 x 24 x 32 more steps: last step in 203 + 5 * 24 * 32 = 4043, plus the
    # engine's latency (22) for the single row of the last tile row.
    assert cycles(tiny, ins(17, 32, 96)) == 4065
    assert cycles(tiny, ins(17, 16, 17, Flag.B_BUF | Flag.B_T)) == 444
    with pytest.raises(ValueError, match="needs its compressed weight stream"):
        cycles(tiny, ins(4, 8, 8, Flag.SPARSE))
    with pytest.raises(TypeError, match="instr must be a golden.isa.Instr"):
        cycles(tiny, "GEMM")
    with pytest.raises(ValueError, match="head must be non-negative, not -1"):
        cycles(tiny, ins(1, 1, 1), head=-1)
    with pytest.raises(TypeError, match="head must be an integer, not 2.5"):
        cycles(tiny, ins(1, 1, 1), head=2.5)
    # Preloaded h cycles ahead: the loads run h cycles earlier. With everything loaded the
    # first tile row waits only for its activations (the A reader's 4 reads from cycle 1, its
    # 32 beats in cycles 6 .. 37): first step in 39, last in 38 + 5 * 24 * 32 = 3878, + 22.
    assert cycles(tiny, ins(17, 32, 96), head=1) == 4064
    assert cycles(tiny, ins(17, 32, 96), head=170) == 3900
    assert cycles(tiny, ins(17, 32, 96), head=10_000) == 3900


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_corrupt_stream_found_after_tiles_ran(stall, tiny, rng):
    """Trailing bytes are found only after the last block-row has decoded, while the first
    tile row already computes (the decode overlaps the compute): ``done`` with ``error``, every
    beat taken, nothing outside the destination touched, and the next GEMM on the same unit
    exact. Without stalls, rows of the tiles that ran before the error reach the destination
    (its content is undefined after a failed instruction)."""
    cfg = tiny
    unit = GemmUnit(cfg)
    bufs = _bufs(cfg, rng)
    stream, n, k = _corrupt(rng, "trailing")
    ins1, mem1 = _gemm(cfg, rng, 9, k, n, Flag.SPARSE, compressed=stream, dst=(ACT1, 0, 0))
    ins2, mem2 = _gemm(cfg, rng, 7, 11, 9, a=(ACT0, 2, 4), dst=(ACT3, 3, 8), lead=len(mem1))
    mem = bytearray(mem2)
    mem[:len(mem1)] = mem1
    with pytest.raises(ProgramError, match="addr"):
        golden_instr(cfg, ins1, mem, bufs)
    _, g_bufs, _ = golden_instr(cfg, ins2, mem, bufs)
    h = UnitHarness(cfg, unit, bufs)
    model = MemoryModel(unit.mem, mem_beat_bytes(cfg), mem, rng=rng, stall=stall)
    result = {"errors": []}

    async def bench(ctx):
        for ins in (ins1, ins2):
            result["errors"].append((await execute_on_unit(ctx, unit, ins))[0])
            await ctx.tick()
            assert not ctx.get(unit.mem.rdata.valid), "a beat was left behind"
        result["buffers"] = read_buffers(ctx, cfg, h.buffers)

    run_simulation(h, [bench], max_cycles=20_000, background=model.processes())
    assert result["errors"] == [True, False]
    assert model.reads == 4
    dst_rows, dst_cols = slice(0, 9), slice(0, n)
    for b in g_bufs:
        got, want = result["buffers"][b], g_bufs[b]
        if b == ACT1:
            untouched = np.ones(got.shape[:2], bool)
            untouched[dst_rows, dst_cols] = False
            assert np.array_equal(got[untouched], want[untouched])
            if stall == 0:
                assert not np.array_equal(got[dst_rows, dst_cols], want[dst_rows, dst_cols])
        else:
            assert np.array_equal(got, want), Buf(b).name


def test_bus_rule_and_back_to_back(tiny, rng):
    """Outgoing members are zero while idle, whatever ``instr`` holds; a dense GEMM, a GEMM on
    a corrupt stream (error) and a transposed B_BUF GEMM run back to back on one unit, each
    from a clean state; after the error every requested beat has been taken."""
    cfg = tiny
    unit = GemmUnit(cfg)
    bufs = _bufs(cfg, rng)
    ins1, mem1 = _gemm(cfg, rng, 7, 11, 9, a=(ACT0, 2, 4), dst=(ACT1, 3, 8))
    stream, n, k = _corrupt(rng, "magic")
    ins2, mem2 = _gemm(cfg, rng, 9, k, n, Flag.SPARSE, compressed=stream, lead=len(mem1))
    ins3, mem3 = _gemm(cfg, rng, 5, 6, 7, Flag.B_BUF | Flag.B_T, a=(ACT1, 3, 8),
                       b=(ACT2, 4, 0), dst=(ACT3, 0, 0), lead=len(mem2))
    mem = bytearray(mem3)
    mem[:len(mem2)] = mem2
    mem[:len(mem1)] = mem1
    g_mem, g_bufs, _ = golden_instr(cfg, ins1, mem, bufs)
    _, g_bufs, _ = golden_instr(cfg, ins3, g_mem, g_bufs)
    h = UnitHarness(cfg, unit, bufs)
    model = MemoryModel(unit.mem, mem_beat_bytes(cfg), mem, rng=rng, stall=0.2)
    outs = [(p, v) for p, mb, v in unit.signature.flatten(unit)
            if mb.flow.name == "Out" and p[0] not in ("done", "error")]
    result = {"errors": []}

    async def idle(ctx, count):
        for _ in range(count):
            # Foreign instructions on instr while idle change nothing.
            ctx.set(unit.instr.as_value(), int.from_bytes(rng.bytes(32), "little"))
            for p, v in outs:
                assert ctx.get(Value.cast(v)) == 0, f"{p} driven while idle"
            assert not ctx.get(unit.mem.rdata.valid), "a beat was left behind"
            await ctx.tick()

    async def bench(ctx):
        await idle(ctx, 3)
        for ins in (ins1, ins2, ins3):
            result["errors"].append((await execute_on_unit(ctx, unit, ins))[0])
            await ctx.tick()
            await idle(ctx, 4)
        result["buffers"] = read_buffers(ctx, cfg, h.buffers)

    run_simulation(h, [bench], max_cycles=20_000, background=model.processes())
    assert result["errors"] == [False, True, False]
    for b in g_bufs:
        assert np.array_equal(result["buffers"][b], g_bufs[b]), Buf(b).name
    assert model.reads == 5


def test_constructor_checks(tiny):
    with pytest.raises(TypeError, match="cfg must be an AccelConfig, not 'tiny'"):
        GemmUnit("tiny")
    with pytest.raises(ValueError, match=r"lanes must be in the range \[1, 64\], not 0"):
        TransposeReader(tiny, 0, 8)
    with pytest.raises(ValueError, match=r"width must be in the range \[1, 16\], not 17"):
        WordReader(tiny, 17)


def test_elaborates_default_preset():
    text = rtlil.convert(GemmUnit(PRESETS["default"]), name="gemm_unit")
    assert "engine" in text and "a_reader" in text
