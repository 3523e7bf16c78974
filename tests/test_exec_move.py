"""rtl.exec_move: LOAD/STORE against the golden executor (sim.instr.check_instr)."""

import numpy as np
import pytest
from amaranth.back import rtlil

from golden.config import PRESETS, AccelConfig
from golden.isa import Buf, Flag, Instr, Op, Operand, buffers, validate_instr
from rtl.exec_move import MoveUnit, cycles
from rtl.ports import mem_beat_bytes
from sim.instr import UnitHarness, check_instr, empty_buffers, golden_instr, read_buffers
from sim.memory import MemoryModel
from sim.streams import run_simulation

MEM_BYTES = 8192
BANKS = (Buf.ACT0, Buf.ACT1, Buf.ACT2, Buf.ACT3, Buf.LOGIT, Buf.PROB)
RANGES = {Buf.LOGIT: (-(1 << 15), 1 << 15), Buf.PROB: (0, 256), Buf.SCORE: (0, 256)}


def random_buffers(cfg, rng):
    bufs = empty_buffers(cfg)
    for b, x in bufs.items():
        lo, hi = RANGES.get(b, (-128, 128))
        bufs[b] = rng.integers(lo, hi, x.shape)
    return bufs


def random_memory(rng, size=MEM_BYTES):
    return bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def move(op, buf, *, m, n, row=0, col=0, addr=0, imm=None):
    wide = buf == Buf.LOGIT
    e = 2 if wide else 1
    field = "dst" if op == Op.LOAD else "a"
    return Instr(op, flags=Flag.OUT16 if wide else 0, m=m, n=n, addr=addr,
                 imm=n * e if imm is None else imm, **{field: Operand(buf, row, col)})


def random_move(cfg, rng, op, buf, *, m=None, n=None):
    """A valid random LOAD/STORE on ``buf``: offsets, unaligned address, pitch >= row."""
    spec = buffers(cfg)[buf]
    C = cfg.cols
    e = 2 if buf == Buf.LOGIT else 1
    n = int(rng.integers(1, spec.cols + 1)) if n is None else n
    m = int(rng.integers(1, spec.rows + 1)) if m is None else m
    col = C * int(rng.integers(0, (spec.cols - n) // C + 1))
    row = int(rng.integers(0, spec.rows - m + 1))
    imm = n * e + int(rng.integers(0, 9))
    addr = int(rng.integers(0, MEM_BYTES - (m - 1) * imm - n * e + 1))
    return move(op, buf, m=m, n=n, row=row, col=col, addr=addr, imm=imm)


def check(cfg, ins, rng, *, stall=0.0, latency=2, memory=None, bufs=None):
    validate_instr(cfg, ins, mem_size=MEM_BYTES)
    memory = random_memory(rng) if memory is None else memory
    bufs = random_buffers(cfg, rng) if bufs is None else bufs
    res = check_instr(cfg, MoveUnit(cfg), ins, memory, bufs, rng=rng, stall=stall,
                      latency=latency)
    if stall == 0:
        assert res["cycles"] == cycles(cfg, ins, latency), str(ins)
    return res


def test_config_is_checked():
    with pytest.raises(TypeError, match=r"^cfg must be an AccelConfig, not None$"):
        MoveUnit(None)


def test_cycles_rejects_other_opcodes(tiny):
    with pytest.raises(ValueError, match="must be a LOAD or a STORE, not GEMM"):
        cycles(tiny, Instr(Op.GEMM, m=1, k=1, n=1))


@pytest.mark.parametrize("op", [Op.LOAD, Op.STORE])
@pytest.mark.parametrize("buf", BANKS, ids=lambda b: b.name)
def test_each_buffer(tiny, rng, op, buf):
    for _ in range(2):
        check(tiny, random_move(tiny, rng, op, buf), rng)


SWEEP = {Buf.ACT2: (1, 3, 8, 17, 95), Buf.LOGIT: (1, 2, 5, 31), Buf.PROB: (1, 6, 13, 32)}


@pytest.mark.parametrize("op", [Op.LOAD, Op.STORE])
@pytest.mark.parametrize("buf", list(SWEEP), ids=lambda b: b.name)
def test_n_sweep(tiny, rng, op, buf):
    """n from 1 to a full row (not multiples of cols too), m = 1, unaligned, with offsets."""
    for n in SWEEP[buf]:
        check(tiny, random_move(tiny, rng, op, buf, m=1, n=n), rng)


@pytest.mark.parametrize("op", [Op.LOAD, Op.STORE])
@pytest.mark.parametrize("buf", [Buf.ACT3, Buf.LOGIT, Buf.PROB], ids=lambda b: b.name)
def test_full_buffer(tiny, rng, op, buf):
    """m = 32 rows of a full row each (ACT: 96 columns), pitch larger than the row."""
    spec = buffers(tiny)[buf]
    e = 2 if buf == Buf.LOGIT else 1
    ins = move(op, buf, m=spec.rows, n=spec.cols, addr=3, imm=spec.cols * e + 5)
    check(tiny, ins, rng)


@pytest.mark.parametrize("op", [Op.LOAD, Op.STORE])
def test_stalls(tiny, rng, op):
    for i, buf in enumerate((Buf.ACT1, Buf.LOGIT, Buf.PROB, Buf.LOGIT)):
        ins = random_move(tiny, rng, op, buf, m=int(rng.integers(1, 6)))
        check(tiny, ins, rng, stall=(0.2, 0.3, 0.4)[i % 3], latency=int(rng.integers(1, 6)))


@pytest.mark.parametrize("op", [Op.LOAD, Op.STORE])
def test_extreme_values(tiny, rng, op):
    pattern = bytes([0x00, 0x7F, 0x80, 0xFF, 0x01, 0xFE])
    memory = bytearray((pattern * (MEM_BYTES // len(pattern) + 1))[:MEM_BYTES])
    bufs = empty_buffers(tiny)
    for b in BANKS:
        lo, hi = RANGES.get(b, (-128, 128))
        bufs[b] = rng.choice([lo, lo + 1, (lo + hi) // 2 - 1, (lo + hi) // 2, hi - 2, hi - 1],
                             bufs[b].shape)
    for buf in (Buf.ACT0, Buf.LOGIT, Buf.PROB):
        ins = move(op, buf, m=3, n=13, row=2, col=4, addr=1, imm=37)
        check(tiny, ins, rng, memory=memory, bufs=bufs)


@pytest.mark.parametrize("latency", [1, 5])
def test_cycles_exact(tiny, rng, latency):
    """Tiny-model shapes: patch embedding, CLS token, classifier logits; no stalls."""
    shapes = [
        move(Op.LOAD, Buf.ACT1, m=16, n=48, row=1, imm=48),
        move(Op.LOAD, Buf.ACT0, m=1, n=32, addr=0x320),
        move(Op.STORE, Buf.LOGIT, m=1, n=10, addr=0x300, imm=20),
        move(Op.LOAD, Buf.LOGIT, m=5, n=7, addr=9, imm=31),
        move(Op.STORE, Buf.PROB, m=4, n=17, row=3, col=12, addr=11, imm=17),
    ]
    for ins in shapes:
        res = check(tiny, ins, rng, latency=latency)
        C = tiny.cols
        e = 2 if ins.flags else 1
        beats = ins.m * -(-ins.n * e // C)       # one beat per cycle, latency paid once
        assert res["cycles"] == (1 + latency + beats if ins.op == Op.LOAD else 3 + beats)


def test_cycles_examples(tiny):
    assert cycles(tiny, move(Op.LOAD, Buf.ACT1, m=16, n=48), 2) == 1 + 2 + 16 * 12
    assert cycles(tiny, move(Op.STORE, Buf.LOGIT, m=1, n=10, imm=20), 2) == 3 + 5
    assert cycles(tiny, move(Op.LOAD, Buf.PROB, m=32, n=32), 0) == 1 + 1 + 32 * 8


@pytest.mark.parametrize("cols", [1, 3])
def test_odd_beat_width(rng, cols):
    """cols not a power of two: int16 elements straddle beats; the word base is col // cols."""
    cfg = AccelConfig(rows=cols, cols=cols, max_tokens=8, max_dim=8, max_hidden=16)
    for op in (Op.LOAD, Op.STORE):
        for buf in (Buf.ACT1, Buf.LOGIT, Buf.PROB):
            check(cfg, random_move(cfg, rng, op, buf, m=3), rng)
        check(cfg, random_move(cfg, rng, op, Buf.LOGIT, m=3), rng, stall=0.3)


def test_bus_idle_and_back_to_back(tiny, rng):
    """Outgoing members are zero while idle and the unused ports stay zero while running; the
    unit runs a LOAD, then a STORE of the loaded rows, each ``done`` one cycle."""
    cfg = tiny
    unit = MoveUnit(cfg)
    bufs = random_buffers(cfg, rng)
    memory = random_memory(rng)
    load = move(Op.LOAD, Buf.LOGIT, m=3, n=9, row=4, col=8, addr=101, imm=23)
    store = move(Op.STORE, Buf.LOGIT, m=3, n=9, row=4, col=8, addr=3001, imm=19)
    for ins in (load, store):
        validate_instr(cfg, ins, mem_size=MEM_BYTES)
    mem = bytearray(memory)
    h = UnitHarness(cfg, unit, bufs)
    model = MemoryModel(unit.mem, mem_beat_bytes(cfg), mem, rng=rng, stall=0.2)
    outs = [(p, v) for p, mb, v in unit.signature.flatten(unit)
            if mb.flow.name == "Out" and p[0] not in ("done", "error")]
    unused = {"load": ("rd0", "rd1", "score_wr", "score_rd", ("mem", "wcmd"), ("mem", "wdata"),
                       ("mem", "wresp")),
              "store": ("wr", "rd1", "score_wr", "score_rd", ("mem", "rcmd"),
                        ("mem", "rdata"))}
    result = {}

    def nonzero(ctx, prefixes=None):
        return [p for p, v in outs if ctx.get(v.as_value() if hasattr(v, "as_value") else v)
                and (prefixes is None or any(p[:len(x)] == x if isinstance(x, tuple)
                                             else p[0] == x for x in prefixes))]

    async def bench(ctx):
        for _ in range(3):
            await ctx.tick()
            assert not nonzero(ctx)
        for kind, ins in (("load", load), ("store", store)):
            ctx.set(unit.instr.as_value(), int.from_bytes(ins.encode(), "little"))
            ctx.set(unit.start, 1)
            await ctx.tick()
            ctx.set(unit.start, 0)
            while not ctx.get(unit.done):
                assert not nonzero(ctx, unused[kind]), kind
                await ctx.tick()
            assert not ctx.get(unit.error)
            assert not nonzero(ctx), kind
            for _ in range(4):
                await ctx.tick()
                assert not ctx.get(unit.done)
                assert not nonzero(ctx), kind
        result["buffers"] = read_buffers(ctx, cfg, h.buffers)

    run_simulation(h, [bench], max_cycles=5000, background=model.processes())
    g_mem, g_bufs, _ = golden_instr(cfg, load, memory, bufs)
    g_mem, g_bufs, _ = golden_instr(cfg, store, g_mem, g_bufs)
    for b in g_bufs:
        np.testing.assert_array_equal(result["buffers"][b], g_bufs[b], err_msg=Buf(b).name)
    assert bytes(mem) == bytes(g_mem)
    assert mem[3001:3001 + 18] == memory[101:101 + 18]


def test_elaborates_default():
    cfg = PRESETS["default"]
    text = rtlil.convert(MoveUnit(cfg), name="move")
    assert "move" in text


@pytest.mark.parametrize("op", [Op.LOAD, Op.STORE])
def test_one_beat_per_cycle(tiny, rng, op):
    """The memory overlaps bursts: the unit moves one beat per cycle across rows."""
    for buf, m, n, latency in ((Buf.ACT1, 16, 48, 2), (Buf.LOGIT, 5, 7, 6),
                               (Buf.PROB, 8, 5, 4)):
        ins = random_move(tiny, rng, op, buf, m=m, n=n)
        validate_instr(tiny, ins, mem_size=MEM_BYTES)
        res = check_instr(tiny, MoveUnit(tiny), ins, random_memory(rng),
                          random_buffers(tiny, rng), latency=latency)
        e = 2 if buf == Buf.LOGIT else 1
        beats = m * -(-n * e // tiny.cols)
        expect = 1 + latency + beats if op == Op.LOAD else 3 + beats
        assert res["cycles"] == expect == cycles(tiny, ins, latency), str(ins)
