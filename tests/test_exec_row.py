"""rtl.exec_row.RowUnit (SOFTMAX, GELU, LAYERNORM, ADD) against golden.executor, one
instruction at a time (sim.instr.check_instr), plus exact cycle counts, error paths, odd word
widths and a multi-instruction run that checks the bus rule while idle."""

import struct

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Value
from amaranth.lib.wiring import Out

from golden.config import PRESETS, AccelConfig
from golden.executor import _Machine, _step
from golden.gelu import gelu_params
from golden.isa import (
    AddParams,
    Buf,
    Flag,
    Instr,
    Op,
    Operand,
    buffers,
    pack_add,
    pack_gelu,
    pack_ln,
    validate_instr,
)
from golden.layernorm import ln_params
from rtl.exec_row import RowUnit, cycles, ln_reducer_cycles
from rtl.layernorm import ln_banks, ln_reducers, stats_stages
from rtl.ports import mem_beat_bytes
from rtl.softmax import DIVIDER_CYCLES, max_stages, sum_stages
from sim.instr import UnitHarness, check_instr, empty_buffers, execute_on_unit, read_buffers
from sim.memory import MemoryModel
from sim.streams import run_simulation

TINY = PRESETS["tiny"]
MEM_BYTES = 2048
ACT = (Buf.ACT0, Buf.ACT1, Buf.ACT2, Buf.ACT3)


def random_buffers(cfg, rng):
    """Every buffer filled with random values of its format (SCORE and PROB too, so that a
    stray write shows)."""
    bufs = empty_buffers(cfg)
    for b, spec in buffers(cfg).items():
        lo, hi = (-(1 << (spec.bits - 1)), 1 << (spec.bits - 1)) if spec.signed \
            else (0, 1 << spec.bits)
        bufs[b] = rng.integers(lo, hi, (spec.rows, spec.cols))
    return bufs


def ln_record(rng, n, **kw):
    p = ln_params(rng.normal(1, 0.4, n), rng.normal(0, 0.5, n), n=n,
                  scale_in=kw.pop("scale_in", 0.05), scale_out=kw.pop("scale_out", 0.04), **kw)
    return pack_ln(p)


def gelu_record(scale_in=0.05, scale_out=0.03):
    return pack_gelu(gelu_params(scale_in, scale_out))


def memory_with(records):
    mem = bytearray(MEM_BYTES)
    for addr, rec in records:
        mem[addr:addr + len(rec)] = rec
    return mem


def run_checked(cfg, ins, mem, bufs, *, rng=None, stall=0.0, latency=2, exact=None):
    """check_instr after validate_instr; with no stalls (or ``exact``) also the cycle count."""
    validate_instr(cfg, ins, mem_size=len(mem))
    res = check_instr(cfg, RowUnit(cfg), ins, mem, bufs, rng=rng, stall=stall, latency=latency)
    if exact or (exact is None and stall == 0):
        assert res["cycles"] == cycles(cfg, ins, latency), str(ins)
    return res


def col(rng, cfg, limit, n):
    """A random column origin (multiple of cols) such that ``n`` columns fit in ``limit``."""
    return int(rng.integers(0, (limit - n) // cfg.cols + 1)) * cfg.cols


# -- construction ------------------------------------------------------------------------------

def test_constructor_checks():
    with pytest.raises(TypeError, match=r"^cfg must be an AccelConfig, not 'tiny'$"):
        RowUnit("tiny")
    with pytest.raises(ValueError, match=r"^RowUnit needs act_width at most 14 \(GELU\), "
                                         r"not 16$"):
        RowUnit(TINY.replace(act_width=16))


def test_elaborates_for_default_preset():
    text = rtlil.convert(RowUnit(PRESETS["default"]), name="row_unit")
    assert "module \\row_unit" in text


# -- SOFTMAX -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_softmax_random(seed):
    rng = np.random.default_rng(100 + seed)
    cfg = TINY
    t = cfg.max_tokens
    m, n = int(rng.integers(1, t + 1)), int(rng.integers(1, t + 1))
    bufs = random_buffers(cfg, rng)
    bufs[Buf.LOGIT] = rng.integers(-2000, 2000, bufs[Buf.LOGIT].shape)
    flags = Flag.SCORE if seed % 2 else 0
    ins = Instr(Op.SOFTMAX, flags, m=m, n=n,
                dst=Operand(Buf.PROB, int(rng.integers(0, t - m + 1)), col(rng, cfg, t, n)),
                a=Operand(Buf.LOGIT, int(rng.integers(0, t - m + 1)), col(rng, cfg, t, n)),
                imm=int(rng.integers(0, cfg.max_heads)) if flags else 0)
    run_checked(cfg, ins, bytearray(64), bufs)


@pytest.mark.parametrize("m,n", [(1, 1), (3, 7), (2, 32)])
def test_softmax_shapes_and_extremes(m, n, rng):
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    logit = bufs[Buf.LOGIT]
    logit[0] = -32768
    logit[1] = 32767
    logit[2, ::2], logit[2, 1::2] = 32767, -32768
    ins = Instr(Op.SOFTMAX, Flag.SCORE, m=m, n=n, dst=Operand(Buf.PROB, 5, 0),
                a=Operand(Buf.LOGIT, 0, 0), imm=1)
    run_checked(cfg, ins, bytearray(64), bufs)


def test_softmax_score_rows(rng):
    """SCORE copies into several rows, back to back on one unit, leave every other SCORE row
    (and the columns past ``n``) untouched."""
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    program = [Instr(Op.SOFTMAX, Flag.SCORE, m=2, n=n, dst=Operand(Buf.PROB, 4, 0),
                     a=Operand(Buf.LOGIT, row, 0), imm=imm)
               for imm, n, row in ((0, 17, 8), (cfg.max_heads - 1, 9, 3), (5, 32, 20))]
    check_program(cfg, program, bytearray(64), bufs)


# -- LAYERNORM ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,stall", [(0, 0.0), (1, 0.3), (2, 0.4)])
def test_layernorm_random(seed, stall):
    rng = np.random.default_rng(200 + seed)
    cfg = TINY
    m, n = int(rng.integers(1, 9)), int(rng.integers(1, cfg.max_dim + 1))
    addr = int(rng.integers(0, 64))
    mem = memory_with([(addr, ln_record(rng, n))])
    cols = buffers(cfg)[Buf.ACT0].cols
    src, dst = (Buf(int(b)) for b in rng.choice(ACT, 2, replace=False))
    ins = Instr(Op.LAYERNORM, 0, m=m, n=n,
                dst=Operand(dst, int(rng.integers(0, cfg.max_tokens - m + 1)),
                            col(rng, cfg, cols, n)),
                a=Operand(src, int(rng.integers(0, cfg.max_tokens - m + 1)),
                          col(rng, cfg, cols, n)), addr=addr)
    run_checked(cfg, ins, mem, random_buffers(cfg, rng), rng=rng, stall=stall,
                latency=int(rng.integers(1, 6)))


@pytest.mark.parametrize("m,n,stall", [(1, 1, 0.0), (4, 1, 0.3), (3, 6, 0.0), (2, 32, 0.0),
                                       (32, 32, 0.0)])
def test_layernorm_shapes_and_extremes(m, n, stall, rng):
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    x = bufs[Buf.ACT1]
    x[0], x[1] = -128, 127                               # constant rows: variance 0, eps only
    x[2, ::2], x[2, 1::2] = 127, -128                     # largest variance
    x[3, 0] = 127
    x[3, 1:] = -128
    mem = memory_with([(16, ln_record(rng, n, eps=1e-3))])
    ins = Instr(Op.LAYERNORM, 0, m=m, n=n, dst=Operand(Buf.ACT3, 0, 64),
                a=Operand(Buf.ACT1, 0, 0), addr=16)
    run_checked(cfg, ins, mem, bufs, rng=rng, stall=stall)


# -- GELU --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,stall", [(0, 0.0), (1, 0.3), (2, 0.4)])
def test_gelu_random(seed, stall):
    rng = np.random.default_rng(300 + seed)
    cfg = TINY
    cols = buffers(cfg)[Buf.ACT0].cols
    m, n = int(rng.integers(1, cfg.max_tokens + 1)), int(rng.integers(1, cols + 1))
    addr = int(rng.integers(0, 64))
    mem = memory_with([(addr, gelu_record(float(rng.uniform(0.01, 0.2)), 0.03))])
    src, dst = (Buf(int(b)) for b in rng.choice(ACT, 2, replace=False))
    ins = Instr(Op.GELU, 0, m=m, n=n,
                dst=Operand(dst, int(rng.integers(0, cfg.max_tokens - m + 1)),
                            col(rng, cfg, cols, n)),
                a=Operand(src, int(rng.integers(0, cfg.max_tokens - m + 1)),
                          col(rng, cfg, cols, n)), addr=addr)
    run_checked(cfg, ins, mem, random_buffers(cfg, rng), rng=rng, stall=stall,
                latency=int(rng.integers(1, 6)))


@pytest.mark.parametrize("m,n", [(1, 1), (5, 7), (32, 96)])
def test_gelu_shapes_and_extremes(m, n, rng):
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    bufs[Buf.ACT2][0] = -128
    bufs[Buf.ACT2][1] = 127
    mem = memory_with([(32, gelu_record(0.1, 0.01))])        # saturates at both ends
    ins = Instr(Op.GELU, 0, m=m, n=n, dst=Operand(Buf.ACT0, 0, 0),
                a=Operand(Buf.ACT2, 0, 0), addr=32)
    run_checked(cfg, ins, mem, bufs)


# -- ADD ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,stall", [(0, 0.0), (1, 0.3), (2, 0.4)])
def test_add_random(seed, stall):
    rng = np.random.default_rng(400 + seed)
    cfg = TINY
    cols = buffers(cfg)[Buf.ACT0].cols
    m, n = int(rng.integers(1, cfg.max_tokens + 1)), int(rng.integers(1, cols // 2 + 1))
    addr = int(rng.integers(0, 64))
    p = AddParams(int(rng.integers(0, 1 << 16)), int(rng.integers(0, 1 << 16)),
                  int(rng.integers(0, 63)))
    mem = memory_with([(addr, pack_add(p))])
    a, b, dst = (Buf(int(x)) for x in rng.choice(ACT, 3, replace=False))
    if seed % 2:
        b = a                                    # both operands in one bank, other columns
    row = int(rng.integers(0, cfg.max_tokens - m + 1))
    ins = Instr(Op.ADD, 0, m=m, n=n, dst=Operand(dst, row, col(rng, cfg, cols, n)),
                a=Operand(a, int(rng.integers(0, cfg.max_tokens - m + 1)), 0),
                b=Operand(b, int(rng.integers(0, cfg.max_tokens - m + 1)),
                          col(rng, cfg, cols // 2, n) + cols // 2), addr=addr)
    run_checked(cfg, ins, mem, random_buffers(cfg, rng), rng=rng, stall=stall,
                latency=int(rng.integers(1, 6)))


@pytest.mark.parametrize("m,n,p", [(1, 1, AddParams(1, 1, 0)), (6, 9, AddParams(65535, 65535, 8)),
                                   (32, 96, AddParams(40000, 9000, 16))])
def test_add_shapes_and_saturation(m, n, p, rng):
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    bufs[Buf.ACT1][0], bufs[Buf.ACT2][0] = 127, 127
    bufs[Buf.ACT1][1], bufs[Buf.ACT2][1] = -128, -128
    mem = memory_with([(8, pack_add(p))])
    ins = Instr(Op.ADD, 0, m=m, n=n, dst=Operand(Buf.ACT3, 0, 0), a=Operand(Buf.ACT1, 0, 0),
                b=Operand(Buf.ACT2, 0, 0), addr=8)
    run_checked(cfg, ins, mem, bufs)


# -- every opcode on other word widths ------------------

@pytest.mark.parametrize("cols,stall", [(1, 0.0), (3, 0.3), (16, 0.3)])
def test_word_widths(cols, stall, rng):
    """Beats of 1 and 3 bytes (record fields straddle beats, word indices divide by 3) and of
    16 bytes (eight gammas per pop, a word wider than a softmax row)."""
    cfg = AccelConfig(rows=2, cols=cols, max_tokens=8, max_dim=12, max_hidden=64,
                      name=f"cols{cols}")
    bufs = random_buffers(cfg, rng)
    n = 11
    mem = memory_with([(3, ln_record(rng, n)), (301, gelu_record()),
                       (401, pack_add(AddParams(30000, 20000, 15)))])
    a, d = Operand(Buf.ACT0, 1, cols), Operand(Buf.ACT1, 2, 2 * cols)
    for ins in (Instr(Op.LAYERNORM, 0, m=3, n=n, dst=d, a=a, addr=3),
                Instr(Op.GELU, 0, m=3, n=n, dst=d, a=a, addr=301),
                Instr(Op.ADD, 0, m=3, n=n, dst=d, a=a, b=Operand(Buf.ACT0, 4, 3 * cols),
                      addr=401),
                Instr(Op.SOFTMAX, Flag.SCORE, m=3, n=7, dst=Operand(Buf.PROB, 2, 0),
                      a=Operand(Buf.LOGIT, 1, 0), imm=1)):
        run_checked(cfg, ins, mem, bufs, rng=rng, stall=stall, latency=3)


# -- cycles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ins", [
    Instr(Op.ADD, 0, m=17, n=32, dst=Operand(Buf.ACT2), a=Operand(Buf.ACT0), b=Operand(Buf.ACT1)),
    Instr(Op.LAYERNORM, 0, m=17, n=32, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
    Instr(Op.LAYERNORM, 0, m=10, n=32, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
    Instr(Op.LAYERNORM, 0, m=1, n=32, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
    Instr(Op.LAYERNORM, 0, m=9, n=13, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
    Instr(Op.LAYERNORM, 0, m=32, n=5, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
    Instr(Op.SOFTMAX, Flag.SCORE, m=17, n=17, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
    Instr(Op.SOFTMAX, 0, m=10, n=10, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
    Instr(Op.SOFTMAX, Flag.SCORE, m=10, n=10, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
    Instr(Op.SOFTMAX, 0, m=17, n=17, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
    Instr(Op.SOFTMAX, Flag.SCORE, m=1, n=32, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
    Instr(Op.SOFTMAX, 0, m=1, n=32, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
    Instr(Op.SOFTMAX, Flag.SCORE, m=20, n=13, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
    Instr(Op.SOFTMAX, 0, m=30, n=2, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
], ids=lambda ins: f"{ins.name}-{ins.m}x{ins.n}{'-score' if ins.flags else ''}")
def test_cycles_of_tiny_model_shapes(ins, rng):
    """The tiny model's shapes (and short LayerNorm rows, paced by the reducers and row
    buffers), simulated: exactly :func:`cycles`."""
    cfg = TINY
    mem = memory_with([(0, ln_record(rng, ins.n) if ins.op == Op.LAYERNORM else
                        gelu_record() if ins.op == Op.GELU else pack_add(AddParams(3, 5, 2)))])
    run_checked(cfg, ins, mem, random_buffers(cfg, rng))


def test_cycles_closed_forms():
    """The closed forms of docs/exec/exec_row.md against cycles() (itself checked against
    simulation by every test above)."""
    cfg = AccelConfig(rows=4, cols=4, max_tokens=64, max_dim=32, max_hidden=64, name="t64")
    a, d = Operand(Buf.ACT0), Operand(Buf.ACT1)
    for lat in (1, 2, 5):
        lp = max(1, lat)
        for m, n in ((1, 1), (17, 30), (10, 64)):
            # GELU/ADD: header beats, one word per cycle, the unit's pipeline
            words = m * -(-n // cfg.cols)
            assert cycles(cfg, Instr(Op.ADD, 0, m=m, n=n, dst=d, a=a, b=Operand(Buf.ACT2)),
                          lat) == lp + 2 + words + 3
            assert cycles(cfg, Instr(Op.GELU, 0, m=m, n=n, dst=d, a=a), lat) \
                == lp + 4 + words + 6
        # LayerNorm: the record's last pop P, then the rows at one word per cycle (w words
        # a row) once the K reducers (K w >= RC) and the B row buffers ((B - 2) w >= S + RC +
        # 4) keep up: w >= 8; shorter rows are paced by them (the recurrence of
        # docs/exec/exec_row.md).
        rc, s = ln_reducer_cycles(cfg), stats_stages(cfg)
        k, b = ln_reducers(cfg), ln_banks(cfg)
        assert (rc, s, k, b) == (25, 3, 4, 6)
        w_min = max(-(-rc // k), -(-(s + rc + 4) // (b - 2)))
        assert w_min == 8
        for n in range(1, 33):
            w = -(-n // cfg.cols)
            p = lp + max(-(-(8 + 6 * n) // 4), 2 + -(-n // 2) + n)
            for m in (1, 2, 3, 5, 17, 64):
                ln = Instr(Op.LAYERNORM, 0, m=m, n=n, dst=d, a=a)
                closed = max(w, p + 1) + s + rc + 11 + m * w
                if w >= w_min:
                    assert cycles(cfg, ln, lat) == closed, (m, n)
                else:
                    assert cycles(cfg, ln, lat) >= closed, (m, n)
    lat = max_stages(cfg) + sum_stages(cfg) + DIVIDER_CYCLES + 12
    assert lat == 30
    for m in range(1, 65):
        for n in range(1, 65):
            w = -(-n // cfg.cols)
            sm = Instr(Op.SOFTMAX, 0, m=m, n=n, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT))
            sc = Instr(Op.SOFTMAX, Flag.SCORE, m=m, n=n, dst=Operand(Buf.PROB),
                       a=Operand(Buf.LOGIT))
            # back to back after the first row's fill (one word per cycle from rows of 3
            # words); SCORE: row 0 leaves its FIFO one element per cycle
            expect = (m + 2) * w + lat
            score = max(expect, 2 * w + lat + n + 2)
            if w >= 3:
                assert cycles(cfg, sm, 2) == expect, (m, n)
                assert cycles(cfg, sc, 2) == score, (m, n)
            else:
                assert cycles(cfg, sm, 2) >= expect, (m, n)
                assert cycles(cfg, sc, 2) >= score, (m, n)


# -- errors ------------------------------------------------------------------------------------

def _ln_bad_shift(rng, n):
    rec = bytearray(ln_record(rng, n))
    rec[2] = 63
    return bytes(rec)


def test_errors_finish_cleanly(rng):
    """A record field outside its unit's range (the golden executor rejects the instruction)
    raises ``error`` at ``done``; the unit consumes the whole record and the next instruction
    on the same unit runs correctly."""
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    gelu_bad = bytearray(gelu_record())
    gelu_bad[0:4] = struct.pack("<i", 5)                     # b_int must be negative
    mem = memory_with([(0, pack_add(AddParams(3, 4, 1))[:4] + bytes([63, 0, 0, 0])),
                       (16, pack_add(AddParams(3, 4, 1))[:4] + bytes([200, 0, 0, 0])),
                       (32, bytes(gelu_bad)), (64, _ln_bad_shift(rng, 32)),
                       (512, ln_record(rng, 32)), (1024, pack_add(AddParams(9, 7, 3)))])
    a, d = Operand(Buf.ACT0, 0, 0), Operand(Buf.ACT1, 0, 0)
    good_ln = Instr(Op.LAYERNORM, 0, m=2, n=32, dst=Operand(Buf.ACT2, 3, 0), a=a, addr=512)
    good_add = Instr(Op.ADD, 0, m=2, n=32, dst=Operand(Buf.ACT2, 3, 0), a=a,
                     b=Operand(Buf.ACT3), addr=1024)
    program = [
        (Instr(Op.ADD, 0, m=2, n=8, dst=d, a=a, b=Operand(Buf.ACT3), addr=0), True),
        (Instr(Op.ADD, 0, m=2, n=8, dst=d, a=a, b=Operand(Buf.ACT3), addr=16), True),
        (Instr(Op.GELU, 0, m=2, n=8, dst=d, a=a, addr=32), True),
        (Instr(Op.LAYERNORM, 0, m=2, n=32, dst=d, a=a, addr=64), True),
        (good_ln, False), (good_add, False),
    ]
    errors, out = run_program(cfg, program, mem, bufs, rng=rng, stall=0.3)
    assert errors == [e for _, e in program]
    # the good instructions' results: golden from the initial state (they do not read ACT1)
    mc = _Machine(cfg, mem)
    for b, x in bufs.items():
        mc.bufs[b] = np.array(x)
    for ins in (good_ln, good_add):
        _step(mc, ins, 0)
    for b in bufs:
        if b != Buf.ACT1:
            assert np.array_equal(out[b], mc.bufs[b]), Buf(b).name


def test_sequence_of_every_opcode_matches_golden(rng):
    """Back-to-back instructions of every opcode on one unit (its row buffers, FIFOs and
    gearbox return to their idle state between instructions)."""
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    bufs[Buf.LOGIT] = rng.integers(-3000, 3000, bufs[Buf.LOGIT].shape)
    mem = memory_with([(40, ln_record(rng, 13)), (200, gelu_record()),
                       (300, pack_add(AddParams(20000, 30000, 15)))])
    program = [
        Instr(Op.SOFTMAX, Flag.SCORE, m=5, n=19, dst=Operand(Buf.PROB, 1, 4),
              a=Operand(Buf.LOGIT, 3, 8), imm=2),
        Instr(Op.LAYERNORM, 0, m=3, n=13, dst=Operand(Buf.ACT1, 2, 8),
              a=Operand(Buf.ACT0, 5, 4), addr=40),
        Instr(Op.SOFTMAX, 0, m=6, n=5, dst=Operand(Buf.PROB, 10, 0),
              a=Operand(Buf.LOGIT, 0, 0)),
        Instr(Op.GELU, 0, m=4, n=21, dst=Operand(Buf.ACT2, 0, 0),
              a=Operand(Buf.ACT1, 2, 8), addr=200),
        Instr(Op.ADD, 0, m=4, n=21, dst=Operand(Buf.ACT3, 1, 0),
              a=Operand(Buf.ACT2, 0, 0), b=Operand(Buf.ACT1, 2, 8), addr=300),
        Instr(Op.LAYERNORM, 0, m=2, n=13, dst=Operand(Buf.ACT0, 20, 0),
              a=Operand(Buf.ACT3, 1, 0), addr=40),
    ]
    check_program(cfg, program, mem, bufs)


def check_program(cfg, program, mem, bufs):
    """Run ``program`` on one unit (:func:`run_program`) and compare every buffer with the
    golden executor's."""
    gold = _golden(cfg, program, mem, bufs)
    errors, out = run_program(cfg, [(ins, False) for ins in program], mem, bufs)
    assert not any(errors)
    for b in bufs:
        assert np.array_equal(out[b], gold[b]), Buf(b).name


def run_program(cfg, program, mem, bufs, *, rng=None, stall=0.0):
    """Run ``(instr, expect_error)`` pairs on one RowUnit; while the unit is idle (before each
    ``start``, after each ``done``, with random words on ``instr``) every member it drives must
    be zero (the bus rule), but the status ``preload_ready``.
    Returns the ``error`` of each instruction and the final buffers."""
    unit = RowUnit(cfg)
    h = UnitHarness(cfg, unit, bufs)
    model = MemoryModel(unit.mem, mem_beat_bytes(cfg), bytearray(mem), rng=rng, stall=stall)
    driven = [(".".join(map(str, path)), Value.cast(value))
              for path, member, value in unit.signature.flatten(unit)
              if member.flow == Out and path != ("preload_ready",)]   # a status, not a bus
    assert len(driven) > 20
    errors, out = [], {}

    noise = np.random.default_rng(7)

    async def idle_check(ctx, count):
        for _ in range(count):
            # another unit's instruction on the shared instr bus: still nothing driven
            ctx.set(unit.instr.as_value(), int.from_bytes(noise.bytes(32), "little"))
            for name, value in driven:
                assert not ctx.get(value), f"{name} driven while idle"
            await ctx.tick()

    async def bench(ctx):
        await idle_check(ctx, 2)
        for ins, _ in program:
            errors.append((await execute_on_unit(ctx, unit, ins))[0])
            await ctx.tick()
            await idle_check(ctx, 3)
        out.update(read_buffers(ctx, cfg, h.buffers))

    run_simulation(h, [bench], max_cycles=20_000, background=model.processes())
    return errors, out




# -- record preload ----------------------------------------------------------------------------

@pytest.mark.parametrize("op", [Op.LAYERNORM, Op.GELU, Op.ADD])
@pytest.mark.parametrize("head", [1, 2, 3, 7, 30, 80])
def test_preload_heads(op, head, rng):
    """A record preloaded ``head`` cycles before ``start`` while the unit is idle (the shared
    ``instr`` holding another instruction): bit-exact, buffer ports idle and no ``done``
    until ``start`` (sim.instr.execute_on_unit), and exactly ``cycles(..., head=head)``,
    which for a long head is the instruction without its record."""
    cfg = TINY
    a, d = Operand(Buf.ACT0, 2, 0), Operand(Buf.ACT1, 1, 4)
    rec = {Op.LAYERNORM: ln_record(rng, 32), Op.GELU: gelu_record(),
           Op.ADD: pack_add(AddParams(300, 700, 9))}[op]
    ins = Instr(op, 0, m=10, n=32 if op == Op.LAYERNORM else 28, dst=d, a=a,
                b=Operand(Buf.ACT2 if op == Op.ADD else 0, 0, 0), addr=96)
    mem = memory_with([(96, rec)])
    validate_instr(cfg, ins, mem_size=len(mem))
    res = check_instr(cfg, RowUnit(cfg), ins, mem, random_buffers(cfg, rng), latency=3,
                      head=head)
    assert res["cycles"] == cycles(cfg, ins, 3, head=head)
    assert cycles(cfg, ins, 3, head=head) <= cycles(cfg, ins, 3)
    if head == 80:
        assert cycles(cfg, ins, 3, head=head) < cycles(cfg, ins, 3)


def test_preload_head_checked():
    ins = Instr(Op.GELU, 0, m=1, n=4, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0))
    with pytest.raises(ValueError, match="head must be non-negative"):
        cycles(TINY, ins, head=-1)
    with pytest.raises(TypeError, match="head must be an integer"):
        cycles(TINY, ins, head=1.5)


def _run_chain(cfg, program, mem, bufs, *, rng=None, stall=0.0, abort=False, then=None):
    """Run ``program`` on one RowUnit as the controller does: while an instruction runs, the
    next one's record is preloaded (``preload``) in the first cycle with ``preload_ready`` and
    ``mem_busy`` low (it must come for a GELU, LAYERNORM or ADD, and never for a SOFTMAX),
    and the next instruction starts the cycle after ``done``. With ``abort``, the last
    instruction is aborted instead of started, and ``then`` (if given) runs on its own once
    ``preloaded`` has fallen. Returns ``(errors, heads, cycles, ready,
    buffers)``: per instruction run its ``error``, head start (0: not preloaded) and cycles,
    and ``preload_ready`` of every cycle of the first instruction."""
    unit = RowUnit(cfg)
    h = UnitHarness(cfg, unit, bufs)
    model = MemoryModel(unit.mem, mem_beat_bytes(cfg), bytearray(mem), latency=3, rng=rng,
                        stall=stall)
    res = {"ready": [], "errors": [], "heads": [], "cycles": []}
    words = [int.from_bytes(ins.encode(), "little") for ins in program]

    async def bench(ctx):
        t, t_pl = 0, None
        for i, w in enumerate(words):
            last = i == len(words) - 1
            if last and abort:
                ctx.set(unit.abort, 1)
                await ctx.tick()
                ctx.set(unit.abort, 0)
                while ctx.get(unit.preloaded):
                    await ctx.tick()
                assert not ctx.get(unit.mem_busy)
                if then is not None:
                    res["errors"].append((await execute_on_unit(ctx, unit, then))[0])
                break
            ctx.set(unit.instr.as_value(), w)
            ctx.set(unit.start, 1)
            res["heads"].append(0 if t_pl is None else t - t_pl)
            await ctx.tick()
            ctx.set(unit.start, 0)
            t, t0, t_pl = t + 1, t, None
            if not last:
                ctx.set(unit.preload_instr.as_value(), words[i + 1])
            while not ctx.get(unit.done):
                if i == 0:
                    res["ready"].append(ctx.get(unit.preload_ready))
                if t_pl is not None and t_pl < t0 + 1:
                    assert not ctx.get(unit.mem.rcmd.valid), "record read twice"
                if (not last and t_pl is None and ctx.get(unit.preload_ready)
                        and not ctx.get(unit.mem_busy)):
                    ctx.set(unit.preload, 1)
                    await ctx.tick()
                    ctx.set(unit.preload, 0)
                    t_pl, t = t, t + 1
                    continue
                await ctx.tick()
                t += 1
            res["errors"].append(ctx.get(unit.error))
            res["cycles"].append(t - t0)
            if not last and program[i + 1].op in (Op.GELU, Op.LAYERNORM, Op.ADD):
                assert t_pl is not None, "no preload while the instruction ran"
            await ctx.tick()
            t += 1
        await ctx.tick()
        res["buffers"] = read_buffers(ctx, cfg, h.buffers)

    run_simulation(h, [bench], max_cycles=20_000, background=model.processes())
    return res["errors"], res["heads"], res["cycles"], res["ready"], res["buffers"]


def _golden(cfg, program, mem, bufs):
    """The buffers after ``program`` on the golden executor from ``bufs`` and ``mem``."""
    mc = _Machine(cfg, mem)
    for b, x in bufs.items():
        mc.bufs[b] = np.array(x)
    for i, ins in enumerate(program):
        validate_instr(cfg, ins, i, len(mem))
        _step(mc, ins, i)
    return mc.bufs


@pytest.mark.parametrize("stall", [0.0, 0.3])
@pytest.mark.parametrize("pair", ["add-ln", "ln-gelu", "gelu-add", "softmax-ln"])
def test_preload_while_running(pair, stall, rng):
    """The next instruction's record is read while the unit runs another opcode (ADD ->
    LAYERNORM as in the model, and the other orders): both bit-exact, the second reads no
    record of its own and takes exactly ``cycles(..., head=h)`` for the measured head start
    (no stalls). ``preload_ready`` is low while the first instruction's record is still
    being read."""
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    bufs[Buf.LOGIT] = rng.integers(-3000, 3000, bufs[Buf.LOGIT].shape)
    mem = memory_with([(64, ln_record(rng, 32)), (512, gelu_record()),
                       (640, pack_add(AddParams(20000, 30000, 15)))])
    a0, a2 = Operand(Buf.ACT0, 0, 0), Operand(Buf.ACT2, 0, 0)
    make = {
        "add": Instr(Op.ADD, 0, m=10, n=32, dst=Operand(Buf.ACT3), a=a0, b=a2, addr=640),
        "ln": Instr(Op.LAYERNORM, 0, m=10, n=32, dst=Operand(Buf.ACT1, 4, 0),
                    a=Operand(Buf.ACT3), addr=64),
        "gelu": Instr(Op.GELU, 0, m=6, n=32, dst=Operand(Buf.ACT0, 20, 0),
                      a=Operand(Buf.ACT1, 4, 0), addr=512),
        "softmax": Instr(Op.SOFTMAX, Flag.SCORE, m=10, n=10, dst=Operand(Buf.PROB),
                         a=Operand(Buf.LOGIT), imm=1),
    }
    first, second = (make[x] for x in pair.split("-"))
    if pair == "gelu-add":
        second = second.replace(a=Operand(Buf.ACT0, 20, 0), dst=Operand(Buf.ACT2, 12, 0))
    errors, heads, n, ready, out = _run_chain(cfg, [first, second], mem, bufs,
                                              rng=np.random.default_rng(5), stall=stall)
    assert errors == [0, 0]
    gold = _golden(cfg, [first, second], mem, bufs)
    for b in bufs:
        assert np.array_equal(out[b], gold[b]), Buf(b).name
    if first.op != Op.SOFTMAX:
        assert not ready[0]                 # the first record is still being read
    assert heads[0] == 0 and heads[1] > 1
    if stall == 0:
        assert n == [cycles(cfg, first, 3), cycles(cfg, second, 3, head=heads[1])]


def test_preload_not_ready_for_the_running_opcode(rng):
    """``preload_ready`` stays low while an instruction of the preloaded opcode runs (its
    header fields would be replaced)."""
    cfg = TINY
    mem = memory_with([(640, pack_add(AddParams(20000, 30000, 15)))])
    add = Instr(Op.ADD, 0, m=10, n=32, dst=Operand(Buf.ACT3), a=Operand(Buf.ACT0),
                b=Operand(Buf.ACT2), addr=640)
    with pytest.raises(AssertionError, match="no preload"):
        _run_chain(cfg, [add, add.replace(dst=Operand(Buf.ACT1))], mem, random_buffers(cfg, rng))


def test_preloaded_record_error_and_abort(rng):
    """A preloaded LayerNorm record with a shift above 62: the running ADD finishes without
    error and the LayerNorm reports it at its own ``done``. An aborted preload is read to its
    end and dropped: a following LayerNorm with another record is bit-exact."""
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    mem = memory_with([(64, _ln_bad_shift(rng, 32)), (320, ln_record(rng, 32)),
                       (640, pack_add(AddParams(20000, 30000, 15)))])
    add = Instr(Op.ADD, 0, m=4, n=32, dst=Operand(Buf.ACT3), a=Operand(Buf.ACT0),
                b=Operand(Buf.ACT2), addr=640)
    bad_ln = Instr(Op.LAYERNORM, 0, m=4, n=32, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT3),
                   addr=64)
    errors, *_ = _run_chain(cfg, [add, bad_ln], mem, bufs)
    assert errors == [0, 1]
    good_ln = bad_ln.replace(addr=320, dst=Operand(Buf.ACT2, 20, 0))
    errors, _, _, _, out = _run_chain(cfg, [add, bad_ln], mem, bufs, abort=True, then=good_ln)
    assert errors == [0, 0]
    gold = _golden(cfg, [add, good_ln], mem, bufs)
    for b in bufs:
        assert np.array_equal(out[b], gold[b]), Buf(b).name


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_preload_chain(stall, rng):
    """Every instruction's record preloaded during the one before, as the controller runs
    them: LAYERNORM, a one-word ADD (shorter than the next LayerNorm's record), another
    LAYERNORM with other parameters, GELU, SOFTMAX, ADD. Bit-exact; the LayerNorm after the
    short ADD starts before its betas are in and must wait for them (not for the previous
    LayerNorm's); no stalls: every instruction takes exactly ``cycles(..., head=h)``."""
    cfg = TINY
    bufs = random_buffers(cfg, rng)
    bufs[Buf.LOGIT] = rng.integers(-3000, 3000, bufs[Buf.LOGIT].shape)
    mem = memory_with([(64, ln_record(rng, 32)), (320, ln_record(rng, 32, scale_out=0.02)),
                       (576, gelu_record()), (640, pack_add(AddParams(20000, 30000, 15))),
                       (656, pack_add(AddParams(9000, 7000, 14)))])
    program = [
        Instr(Op.LAYERNORM, 0, m=3, n=32, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0), addr=64),
        Instr(Op.ADD, 0, m=1, n=4, dst=Operand(Buf.ACT3), a=Operand(Buf.ACT1),
              b=Operand(Buf.ACT2), addr=640),
        Instr(Op.LAYERNORM, 0, m=4, n=32, dst=Operand(Buf.ACT2, 8, 0), a=Operand(Buf.ACT3),
              addr=320),
        Instr(Op.GELU, 0, m=4, n=32, dst=Operand(Buf.ACT0, 12, 0), a=Operand(Buf.ACT2, 8, 0),
              addr=576),
        Instr(Op.SOFTMAX, 0, m=5, n=9, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
        Instr(Op.ADD, 0, m=4, n=32, dst=Operand(Buf.ACT1, 20, 0), a=Operand(Buf.ACT0, 12, 0),
              b=Operand(Buf.ACT2, 8, 0), addr=656),
    ]
    errors, heads, n, _, out = _run_chain(cfg, program, mem, bufs,
                                          rng=np.random.default_rng(9), stall=stall)
    assert errors == [0] * len(program)
    gold = _golden(cfg, program, mem, bufs)
    for b in bufs:
        assert np.array_equal(out[b], gold[b]), Buf(b).name
    assert heads[0] == 0 and all(h > 1 for h in heads[1:4]) and heads[5] > 1
    assert heads[4] == 0                    # SOFTMAX reads no record
    if stall == 0:
        assert n == [cycles(cfg, ins, 3, head=h) for ins, h in zip(program, heads)]
        assert n[2] > cycles(cfg, program[2], 3, head=1000)   # waited for its betas
