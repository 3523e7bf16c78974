import numpy as np
import pytest
import torch

from golden.compiler import ALIGN, build_tiny
from golden.config import PRESETS
from golden.gelu import gelu_params
from golden.gemm import EpilogueParams
from golden.isa import (
    INSTR_BYTES,
    AddParams,
    Buf,
    Flag,
    Instr,
    Op,
    Operand,
    ProgramError,
    buffers,
    decode_instr,
    decode_program,
    encode_program,
    pack_add,
    pack_dense_weights,
    pack_epilogue,
    pack_gelu,
    pack_ln,
    unpack_add,
    unpack_dense_weights,
    unpack_epilogue,
    unpack_gelu,
    unpack_ln,
)
from golden.layernorm import ln_params

TINY = PRESETS["tiny"]


def _images(n, seed):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _compiled(**kw):
    return build_tiny(TINY, seed=3, **kw)[2]


@pytest.fixture(scope="module")
def compiled():
    return _compiled()


def test_instruction_round_trip(rng):
    for _ in range(200):
        ins = Instr(int(rng.integers(0, 256)), int(rng.integers(0, 256)),
                    *(int(v) for v in rng.integers(0, 1 << 16, 3)),
                    *(Operand(int(rng.integers(0, 16)), int(rng.integers(0, 4096)),
                              int(rng.integers(0, 1 << 16))) for _ in range(3)),
                    *(int(v) for v in rng.integers(0, 1 << 32, 3)))
        word = ins.encode()
        assert len(word) == INSTR_BYTES
        assert decode_instr(word) == ins


def test_encoding_field_layout():
    ins = Instr(Op.GEMM, 0x16, 1, 2, 3, Operand(Buf.LOGIT, 5, 6), Operand(1, 2, 3),
                Operand(2, 0, 0x20), 0x11223344, 0x55667788, 0x99)
    word = ins.encode()
    assert word[0] == 0x03 and word[1] == 0x16
    assert word[2:8] == bytes([1, 0, 2, 0, 3, 0])
    assert int.from_bytes(word[8:12], "little") == (4 << 28) | (5 << 16) | 6
    assert int.from_bytes(word[20:24], "little") == 0x11223344
    assert int.from_bytes(word[28:32], "little") == 0x99


def test_encode_rejects_wide_fields():
    with pytest.raises(ValueError, match=r"m must be in the range \[0, 65535\], not 70000"):
        Instr(Op.ADD, m=70000).encode()
    with pytest.raises(ValueError, match=r"dst.row must be in the range \[0, 4095\]"):
        Instr(Op.ADD, dst=Operand(0, 5000, 0)).encode()


def test_program_round_trip(compiled):
    data = compiled.program_bytes
    assert len(data) == INSTR_BYTES * len(compiled.program)
    assert decode_program(data, TINY, len(compiled.image)) == compiled.program


def test_decode_program_rejects_bad_framing(compiled):
    data = compiled.program_bytes
    with pytest.raises(ValueError, match="not a multiple of 32 bytes"):
        decode_program(data[:-1], TINY)
    with pytest.raises(ProgramError, match=r"instruction 39 \(-\): opcode: the program does "
                                           r"not end with HALT"):
        decode_program(data[:-INSTR_BYTES], TINY)
    early = encode_program([Instr(Op.HALT), Instr(Op.HALT)])
    with pytest.raises(ProgramError, match=r"instruction 0 \(HALT\): opcode: HALT before"):
        decode_program(early, TINY)


def test_program_structure(compiled):
    prog, labels = compiled.program, compiled.labels
    assert len(prog) == len(labels)
    assert prog[-1].op == Op.HALT
    ops = [ins.op for ins in prog]
    assert ops.count(Op.TOKEN_SELECT) == 1
    assert ops.count(Op.SOFTMAX) == 2 * 2
    sparse = [lab for ins, lab in zip(prog, labels) if ins.flags & Flag.SPARSE]
    assert sparse == [f"b{i}.{n}" for i in range(2) for n in ("qkv", "proj", "fc1", "fc2")]
    # Token pruning shrinks every instruction after the selector to 10 tokens.
    sel = labels.index("b0.select")
    assert prog[sel].m == 17 and prog[sel].imm == 8
    assert all(ins.m in (0, 1, 10) for ins in prog[sel + 1:])
    assert len(compiled.image) % ALIGN == 0
    assert "b0.h1.pv" in compiled.listing()


def test_dense_unpruned_program():
    c = _compiled(prune_layers=(), weight_density=1.0)
    assert not any(ins.flags & Flag.SPARSE for ins in c.program)
    assert not any(ins.op == Op.TOKEN_SELECT for ins in c.program)
    assert all(ins.m in (0, 1, 16, 17) for ins in c.program)


def test_memory_with_input(compiled):
    p = np.arange(16 * 48).reshape(16, 48) % 256 - 128
    mem = compiled.memory_with_input(p)
    assert bytes(mem[:16 * 48]) == p.astype(np.int8).tobytes()
    assert bytes(mem[16 * 48:]) == compiled.image[16 * 48:]
    with pytest.raises(ValueError, match=r"patches must have shape \(16, 48\)"):
        compiled.memory_with_input(p[:4])


def test_buffers_from_config():
    b = buffers(TINY)
    assert b[Buf.ACT0] == ("ACT0", 32, 96, 8, True)
    assert b[Buf.LOGIT] == ("LOGIT", 32, 32, 16, True)
    assert b[Buf.PROB] == ("PROB", 32, 32, 8, False)
    assert b[Buf.SCORE].rows == TINY.max_heads


def test_records_round_trip(rng):
    n = 10
    ep = EpilogueParams.random(TINY, n, rng)
    back = unpack_epilogue(TINY, pack_epilogue(TINY, ep), n)
    for f in ("bias", "mult", "shift"):
        assert np.array_equal(getattr(back, f), getattr(ep, f))
    w = rng.integers(-128, 128, (7, n))
    data = pack_dense_weights(TINY, w)
    assert len(data) == TINY.weight_words(7, n) * TINY.cols
    assert np.array_equal(unpack_dense_weights(TINY, data, 7, n), w)
    # Engine order: word tj*k + kk holds B[kk, tj*cols:(tj+1)*cols].
    words = np.frombuffer(data, np.int8).reshape(-1, TINY.cols)
    assert np.array_equal(words[1 * 7 + 3], w[3, 4:8])
    ln = ln_params(rng.normal(1, 0.2, 12), rng.normal(0, 0.2, 12), n=12, scale_in=0.05,
                   scale_out=0.02)
    back = unpack_ln(pack_ln(ln), 12, TINY.mult_width)
    assert np.array_equal(back.gamma, ln.gamma) and np.array_equal(back.beta, ln.beta)
    assert (back.mult, back.shift, back.eps_int) == (ln.mult, ln.shift, ln.eps_int)
    g = gelu_params(0.05, 0.03)
    assert unpack_gelu(pack_gelu(g), 8, 16).as_dict() == g.as_dict()
    a = AddParams(40000, 123, 17)
    assert unpack_add(pack_add(a)) == a


def test_build_tiny_and_listing(capsys):
    from golden.compiler import array_steps, build_tiny, main
    from golden.executor import execute
    _, q, c = build_tiny(seed=2)
    res = execute(c.program, c.memory_with_input(np.zeros(c.input_shape, np.int64)), TINY)
    steps = array_steps(c, res.trace)
    assert res.macs / TINY.pes <= steps
    assert main(["--listing", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == len(c.program)
    assert "b0.select" in out and "TOKEN_SELECT" in out
