"""rtl.accel.InstrChecker: the hardware instruction checks agree with golden.isa.validate_instr."""

import numpy as np
import pytest

from golden.config import PRESETS
from golden.isa import Buf, Flag, Instr, Op, Operand, ProgramError, validate_instr
from rtl.accel import ErrorCode, InstrChecker, error_code_of_field
from sim.streams import run_simulation

TINY = PRESETS["tiny"]
MEM = 1 << 14


def expected_code(cfg, ins, mem_size):
    try:
        validate_instr(cfg, ins, 0, mem_size)
    except ProgramError as exc:
        return int(error_code_of_field(exc.field))
    return 0


def _templates():
    """One well-formed instruction per opcode and flag combination (tiny preset)."""
    A, L, P = Operand(Buf.ACT1), Operand(Buf.LOGIT), Operand(Buf.PROB)
    return [
        Instr(Op.LOAD, 0, 16, 0, 48, dst=Operand(Buf.ACT1, 1), addr=0x40, imm=48),
        Instr(Op.LOAD, 0x10, 4, 0, 10, dst=L, addr=0x40, imm=20),
        Instr(Op.STORE, 0x10, 1, 0, 10, a=L, addr=0x300, imm=20),
        Instr(Op.STORE, 0, 3, 0, 17, a=P, addr=0x300, imm=17),
        Instr(Op.GEMM, 0, 16, 48, 32, dst=Operand(Buf.ACT2, 1), a=Operand(Buf.ACT1, 1),
              addr=0x620, addr2=0x540),
        Instr(Op.GEMM, int(Flag.SPARSE), 17, 32, 96, dst=Operand(Buf.ACT2), a=A, addr=0xfa0,
              addr2=0xd00, imm=1800),
        Instr(Op.GEMM, int(Flag.B_BUF | Flag.B_T | Flag.OUT16), 17, 16, 17, dst=L,
              a=Operand(Buf.ACT2), b=Operand(Buf.ACT2, 0, 32), addr2=0x16b0),
        Instr(Op.GEMM, int(Flag.B_BUF | Flag.A_U8), 17, 17, 16, dst=Operand(Buf.ACT3), a=P,
              b=Operand(Buf.ACT2, 0, 64), addr2=0x1740),
        Instr(Op.SOFTMAX, int(Flag.SCORE), 17, 0, 17, dst=P, a=L, imm=1),
        Instr(Op.GELU, 0, 10, 0, 64, dst=A, a=Operand(Buf.ACT2), addr=0x2260),
        Instr(Op.LAYERNORM, 0, 17, 0, 32, dst=A, a=Operand(Buf.ACT0), addr=0xc30),
        Instr(Op.ADD, 0, 17, 0, 32, dst=Operand(Buf.ACT2), a=Operand(Buf.ACT0), b=A,
              addr=0x1b00),
        Instr(Op.TOKEN_SELECT, 0, 17, 2, 32, dst=Operand(Buf.ACT0), a=Operand(Buf.ACT2),
              imm=8),
        Instr(Op.HALT),
    ]


def random_instr(rng, cfg):
    """A template with one to three fields replaced by random (often out-of-range) values."""
    tpl = _templates()
    ins = tpl[rng.integers(len(tpl))]
    small = [0, 1, 2, 3, 16, 17, 31, 32, 33, 48, 64, 95, 96, 97, 4096, 4097, 65535]
    for _ in range(rng.integers(1, 4)):
        f = rng.choice(["op", "flags", "m", "k", "n", "dst", "a", "b", "addr", "addr2", "imm",
                        "alias"])
        if f == "alias":      # the destination moves onto (part of) a source
            src = ins.a if rng.random() < .6 else ins.b
            f, v = "dst", src._replace(row=src.row + int(rng.integers(0, 3)),
                                       col=src.col + 4 * int(rng.integers(0, 2)))
        elif f == "op":
            v = int(rng.choice([0, 9, 0x7F, *[int(o) for o in Op]]))
        elif f == "flags":
            v = int(rng.integers(0, 64)) if rng.random() < .8 else int(rng.integers(0, 256))
        elif f in ("m", "k", "n"):
            v = int(rng.choice(small)) if rng.random() < .5 else int(rng.integers(1, 100))
        elif f in ("dst", "a", "b"):
            old = getattr(ins, f)
            v = Operand(int(rng.choice([old.buf, rng.integers(0, 16)])),
                        int(rng.choice([old.row, rng.integers(0, 34), rng.integers(0, 4096)])),
                        int(rng.choice([old.col, 4 * rng.integers(0, 26),
                                        rng.integers(0, 100)])))
        elif f in ("addr", "addr2"):
            v = int(rng.choice([rng.integers(0, MEM), MEM - rng.integers(0, 400),
                                rng.integers(0, 1 << 32)]))
        else:
            v = int(rng.choice([rng.integers(0, 40), rng.integers(0, 4000),
                                rng.integers(0, 1 << 32)]))
        ins = ins.replace(**{f: v})
    return ins


def run_checker(cfg, instrs, mem_size):
    dut = InstrChecker(cfg)
    got = []

    async def bench(ctx):
        ctx.set(dut.mem_size, mem_size)
        for ins in instrs:
            ctx.set(dut.instr.as_value(), int.from_bytes(ins.encode(), "little"))
            await ctx.tick().repeat(dut.latency)
            got.append(ctx.get(dut.code))

    run_simulation(dut, [bench], max_cycles=len(instrs) * 2 + 10)
    return got


def test_random_instructions_match_golden():
    rng = np.random.default_rng(5)
    instrs = [random_instr(rng, TINY) for _ in range(4000)]
    want = [expected_code(TINY, ins, MEM) for ins in instrs]
    got = run_checker(TINY, instrs, MEM)
    hist = np.bincount(want, minlength=9)
    assert all(hist[c] >= 40 for c in range(7)), hist      # every code is exercised
    for ins, w, g in zip(instrs, want, got):
        assert g == w, f"{ins}: expected {ErrorCode(w).name}, got {ErrorCode(g).name}"


def _gemm(**kw):
    base = dict(op=Op.GEMM, m=17, k=32, n=96, dst=Operand(Buf.ACT2), a=Operand(Buf.ACT1),
                addr=0x100, addr2=0x40)
    base.update(kw)
    return Instr(**base)


@pytest.mark.parametrize("ins, code", [
    (_gemm(), ErrorCode.NONE),
    (_gemm(op=0x7F), ErrorCode.OPCODE),
    (_gemm(flags=0x40), ErrorCode.FLAGS),
    (_gemm(flags=int(Flag.B_T)), ErrorCode.FLAGS),
    (_gemm(m=33), ErrorCode.FIELD),
    (_gemm(k=96, n=40), ErrorCode.FIELD),                      # 960 > 768 weight words
    (_gemm(flags=int(Flag.SPARSE), imm=23), ErrorCode.FIELD),
    (_gemm(dst=Operand(Buf.ACT2, 16)), ErrorCode.OPERAND),     # rows [16, 33) overflow
    (_gemm(a=Operand(Buf.ACT1, 0, 66)), ErrorCode.OPERAND),    # unaligned column
    (_gemm(dst=Operand(Buf.ACT1, 0, 0)), ErrorCode.OVERLAP),
    (_gemm(addr=MEM - 10), ErrorCode.EXTERNAL),
    (_gemm(addr2=MEM - 7 * 4 * 24 + 1), ErrorCode.EXTERNAL),
    (_gemm(addr2=MEM - 7 * 4 * 24), ErrorCode.NONE),           # ends exactly at the end
    (Instr(Op.LOAD, 0x10, 2, 0, 8, dst=Operand(Buf.ACT0), imm=16), ErrorCode.FLAGS),
    (Instr(Op.LOAD, 0, 2, 0, 8, dst=Operand(Buf.ACT0), imm=7), ErrorCode.FIELD),
    (Instr(Op.LOAD, 0, 2, 0, 8, dst=Operand(Buf.SCORE), imm=8), ErrorCode.OPERAND),
    (Instr(Op.LOAD, 0, 32, 0, 8, dst=Operand(Buf.ACT0), addr=MEM - 8 - 31 * 100, imm=100),
     ErrorCode.NONE),
    (Instr(Op.LOAD, 0, 32, 0, 8, dst=Operand(Buf.ACT0), addr=MEM - 7 - 31 * 100, imm=100),
     ErrorCode.EXTERNAL),
    (Instr(Op.TOKEN_SELECT, 0, 17, 2, 32, dst=Operand(Buf.ACT0), a=Operand(Buf.ACT2),
           imm=16), ErrorCode.NONE),
    (Instr(Op.TOKEN_SELECT, 0, 17, 2, 32, dst=Operand(Buf.ACT0), a=Operand(Buf.ACT2),
           imm=17), ErrorCode.FIELD),
    (Instr(Op.HALT), ErrorCode.NONE),
    (Instr(Op.HALT, 1), ErrorCode.FLAGS),
])
def test_edge_cases(ins, code):
    assert expected_code(TINY, ins, MEM) == code                # the golden agrees
    assert run_checker(TINY, [ins], MEM) == [code]


def test_latency():
    # run_checker reads ``code`` exactly ``latency`` cycles after setting the instruction.
    assert InstrChecker.latency == 1


def test_error_code_of_field():
    assert error_code_of_field("a.row") == ErrorCode.OPERAND
    assert error_code_of_field("dst") == ErrorCode.OVERLAP
    assert error_code_of_field("addr2") == ErrorCode.EXTERNAL
    assert error_code_of_field("program") == ErrorCode.NO_HALT
    assert error_code_of_field("data") == ErrorCode.RUNTIME


def test_config_type_checked():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig"):
        InstrChecker("tiny")
