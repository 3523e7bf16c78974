import math

import numpy as np
import pytest
import torch

from golden.compiler import build_tiny
from golden.config import PRESETS
from golden.executor import execute
from golden.fixedpoint import quantize_multiplier
from golden.gelu import gelu_int, gelu_params
from golden.gemm import EpilogueParams, gemm
from golden.isa import (
    AddParams,
    Buf,
    Flag,
    Instr,
    Op,
    Operand,
    ProgramError,
    add_int,
    gemm_ext,
    pack_add,
    pack_dense_weights,
    pack_epilogue,
    pack_gelu,
    pack_ln,
)
from golden.layernorm import layernorm_int, ln_params
from golden.pruning import block_prune, default_block
from golden.softmax import softmax_int
from golden.sparse_format import encode
from golden.token_prune import prune_tokens_attention
from golden.vit import (
    forward_int,
    quantize_input,
)

TINY = PRESETS["tiny"]


def _images(n, seed):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _build(**kw):
    _, q, compiled = build_tiny(TINY, seed=11, **kw)
    return q, compiled


@pytest.fixture(scope="module")
def tiny_model():
    return _build()


# -- whole model -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [{}, {"prune_layers": (), "weight_density": 1.0},
                                     {"prune_layers": (0, 1), "keep_rate": 0.6},
                                     {"num_classes": 40}])
def test_program_equals_integer_model(variant, tiny_model):
    q, c = tiny_model if not variant else _build(**variant)
    patches = quantize_input(q, _images(3, 300))
    for p in patches:
        res = execute(c.program, c.memory_with_input(p), TINY)
        assert np.array_equal(c.read_logits(res.memory), forward_int(q, p))
    # More classes than the LOGIT buffer is wide: the head runs in chunks.
    heads = [ins for ins, lab in zip(c.program, c.labels) if lab.startswith("head.")]
    assert len(heads) == 2 * -(-q.cfg.num_classes // TINY.max_tokens)


def test_trace_matches_integer_intermediates(tiny_model):
    q, c = tiny_model
    p = quantize_input(q, _images(1, 301))[0]
    ref = {}
    forward_int(q, p, ref)
    res = execute(c.program, c.memory_with_input(p), TINY)
    by_label = {c.labels[t.index]: t for t in res.trace}
    assert np.array_equal(by_label["embed.cls"].output[0], ref["x0"][0])
    assert np.array_equal(by_label["embed.add"].output, ref["x0"][1:])
    assert np.array_equal(by_label["b0.select"].output, ref["b0.mid"])
    assert np.array_equal(by_label["b0.add2"].output, ref["b0.out"])
    assert np.array_equal(by_label["b1.add2"].output, ref["b1.out"])
    assert len(by_label["b0.select"].info["kept"]) == 9
    assert [t.index for t in res.trace] == list(range(len(c.program) - 1))


def test_mac_counts_show_sparsity_and_pruning(tiny_model):
    q, c = tiny_model
    p = np.zeros(c.input_shape, np.int64)
    macs = execute(c.program, c.memory_with_input(p), TINY, keep_trace=False).stats()
    _, dense = _build(prune_layers=(), weight_density=1.0)
    macs_dense = execute(dense.program, dense.memory_with_input(p), TINY).stats()
    _, sparse_only = _build(prune_layers=())
    macs_sparse = execute(sparse_only.program, sparse_only.memory_with_input(p), TINY).stats()
    total = macs["GEMM"]["macs"]
    assert total < macs_sparse["GEMM"]["macs"] < macs_dense["GEMM"]["macs"]
    # Dense, unpruned: every GEMM of a 17-token, D = 32, hidden 64 ViT.
    n, d, h, hd = 17, 32, 64, 16
    per_block = n * d * 3 * d + 2 * 2 * n * n * hd + n * d * d + 2 * n * d * h
    assert macs_dense["GEMM"]["macs"] == 16 * 48 * d + 2 * per_block + d * 10


# -- instructions in isolation -----------------------------------------------------------------

class _Mem:
    def __init__(self):
        self.data = bytearray()

    def add(self, blob: bytes) -> int:
        self.data += bytes(-len(self.data) % 16)
        addr = len(self.data)
        self.data += blob
        return addr

    def bytes(self):
        return bytes(self.data) + bytes(64)


def _load(mem, buf, arr, row=0, col=0, dtype="i1"):
    arr = np.asarray(arr)
    wide = dtype == "<i2"
    addr = mem.add(arr.astype(dtype).tobytes())
    return Instr(Op.LOAD, int(Flag.OUT16) if wide else 0, arr.shape[0], 0, arr.shape[1],
                 dst=Operand(buf, row, col), addr=addr, imm=arr.shape[1] * (2 if wide else 1))


def _run(mem, prog):
    return execute(prog + [Instr(Op.HALT)], mem.bytes(), TINY)


def test_load_store(rng):
    mem = _Mem()
    a = rng.integers(-128, 128, (5, 7))
    lg = rng.integers(-(1 << 15), 1 << 15, (3, 9))
    out = mem.add(bytes(64))
    res = _run(mem, [_load(mem, Buf.ACT2, a, 3, 4), _load(mem, Buf.LOGIT, lg, dtype="<i2"),
                     Instr(Op.STORE, 0, 5, 0, 7, a=Operand(Buf.ACT2, 3, 4), addr=out, imm=7),
                     Instr(Op.STORE, int(Flag.OUT16), 1, 0, 9, a=Operand(Buf.LOGIT, 2, 0),
                           addr=out + 40, imm=18)])
    assert np.array_equal(res.buffers[Buf.ACT2][3:8, 4:11], a)
    assert np.array_equal(np.frombuffer(res.memory[out:out + 35], np.int8).reshape(5, 7), a)
    assert np.array_equal(np.frombuffer(res.memory[out + 40:out + 58], "<i2"), lg[2])


def test_gemm_dense(rng):
    mem = _Mem()
    m, k, n = 9, 20, 11
    a = rng.integers(-128, 128, (m, k))
    b = rng.integers(-128, 128, (k, n))
    ep = EpilogueParams.random(TINY, n, rng, k)
    ins = Instr(Op.GEMM, 0, m, k, n, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0),
                addr=mem.add(pack_dense_weights(TINY, b)), addr2=mem.add(pack_epilogue(TINY, ep)))
    res = _run(mem, [_load(mem, Buf.ACT0, a), ins])
    assert np.array_equal(res.trace[-1].output, gemm(TINY, a, b, ep))
    assert res.trace[-1].macs == m * k * n


def test_gemm_sparse(rng):
    mem = _Mem()
    m, k, n = 6, 24, 16
    w = rng.integers(-128, 128, (n, k))
    pat = block_prune(w, 0.5, default_block(TINY))
    w = pat.apply(w)
    blob = encode(w, pat)
    a = rng.integers(-128, 128, (m, k))
    ep = EpilogueParams.random(TINY, n, rng, k)
    ins = Instr(Op.GEMM, int(Flag.SPARSE), m, k, n, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0),
                addr=mem.add(blob), addr2=mem.add(pack_epilogue(TINY, ep)), imm=len(blob))
    res = _run(mem, [_load(mem, Buf.ACT0, a), ins])
    assert np.array_equal(res.trace[-1].output, gemm(TINY, a, w.T, ep))
    assert res.trace[-1].macs == m * pat.kept_weights
    assert res.trace[-1].info["k_steps"] == 4 * 12


def test_gemm_attention_forms(rng):
    """Q.K^T (B from a bank, transposed, 16-bit out) and P.V (unsigned A)."""
    mem = _Mem()
    n, hd = 13, 8
    qkv = rng.integers(-128, 128, (n, 3 * hd))
    m_qk, s_qk = quantize_multiplier(0.02 ** 2 / math.sqrt(hd) * 256, 16, 48)
    ep_qk = EpilogueParams(TINY, n, None, [m_qk] * n, [s_qk] * n)
    qk = Instr(Op.GEMM, int(Flag.B_BUF | Flag.B_T | Flag.OUT16), n, hd, n,
               dst=Operand(Buf.LOGIT), a=Operand(Buf.ACT2, 0, 0), b=Operand(Buf.ACT2, 0, hd),
               addr2=mem.add(pack_epilogue(TINY, ep_qk)))
    m_pv, s_pv = quantize_multiplier(0.5, 16, 48)
    ep_pv = EpilogueParams(TINY, hd, None, [m_pv] * hd, [s_pv] * hd)
    pv = Instr(Op.GEMM, int(Flag.B_BUF | Flag.A_U8), n, n, hd, dst=Operand(Buf.ACT3, 0, 4),
               a=Operand(Buf.PROB), b=Operand(Buf.ACT2, 0, 2 * hd),
               addr2=mem.add(pack_epilogue(TINY, ep_pv)))
    sm = Instr(Op.SOFTMAX, 0, n, 0, n, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT))
    res = _run(mem, [_load(mem, Buf.ACT2, qkv), qk, sm, pv])
    logits = res.trace[1].output
    assert np.array_equal(logits, gemm_ext(TINY, qkv[:, :hd], qkv[:, hd:2 * hd].T, ep_qk,
                                           out_bits=16))
    assert np.abs(logits).max() > 127                  # really 16-bit
    probs = res.trace[2].output
    assert probs.max() > 127                           # really unsigned
    ref = ((probs @ qkv[:, 2 * hd:]) * m_pv + (1 << (s_pv - 1))) >> s_pv
    assert np.array_equal(res.trace[3].output, np.clip(ref, -128, 127))
    assert res.trace[3].macs == n * n * hd


def test_softmax_and_score(rng):
    mem = _Mem()
    x = rng.integers(-3000, 3000, (7, 11))
    sm = Instr(Op.SOFTMAX, int(Flag.SCORE), 7, 0, 11, dst=Operand(Buf.PROB, 2, 4),
               a=Operand(Buf.LOGIT), imm=5)
    res = _run(mem, [_load(mem, Buf.LOGIT, x, dtype="<i2"), sm])
    ref = softmax_int(x, TINY.max_tokens)
    assert np.array_equal(res.trace[-1].output, ref)
    assert np.array_equal(res.buffers[Buf.SCORE][5, :11], ref[0])


def test_gelu(rng):
    mem = _Mem()
    x = rng.integers(-128, 128, (5, 40))
    p = gelu_params(0.05, 0.03)
    ins = Instr(Op.GELU, 0, 5, 0, 40, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0),
                addr=mem.add(pack_gelu(p)))
    res = _run(mem, [_load(mem, Buf.ACT0, x), ins])
    assert np.array_equal(res.trace[-1].output, gelu_int(x, p))


def test_layernorm(rng):
    mem = _Mem()
    x = rng.integers(-128, 128, (6, 32))
    p = ln_params(rng.normal(1, 0.3, 32), rng.normal(0, 0.3, 32), n=32, scale_in=0.05,
                  scale_out=0.03)
    ins = Instr(Op.LAYERNORM, 0, 6, 0, 32, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0),
                addr=mem.add(pack_ln(p)))
    res = _run(mem, [_load(mem, Buf.ACT0, x), ins])
    assert np.array_equal(res.trace[-1].output, layernorm_int(x, p))


def test_add(rng):
    mem = _Mem()
    a = rng.integers(-128, 128, (4, 9))
    b = rng.integers(-128, 128, (4, 9))
    p = AddParams(40000, 9000, 16)
    ins = Instr(Op.ADD, 0, 4, 0, 9, dst=Operand(Buf.ACT2), a=Operand(Buf.ACT0),
                b=Operand(Buf.ACT1), addr=mem.add(pack_add(p)))
    res = _run(mem, [_load(mem, Buf.ACT0, a), _load(mem, Buf.ACT1, b), ins])
    out = res.trace[-1].output
    assert np.array_equal(out, add_int(a, b, p))
    real = (a * 40000 + b * 9000) / 65536
    assert np.abs(out - np.clip(real, -128, 127)).max() <= 0.5


def test_token_select(rng):
    mem = _Mem()
    n, d, heads = 17, 12, 3
    x = rng.integers(-128, 128, (n, d))
    logits = rng.integers(-2000, 2000, (heads, n))
    prog = [_load(mem, Buf.ACT1, x), _load(mem, Buf.LOGIT, logits, dtype="<i2")]
    # SCORE is filled by SOFTMAX with the SCORE flag: one head's CLS row each.
    prog += [Instr(Op.SOFTMAX, int(Flag.SCORE), 1, 0, n, dst=Operand(Buf.PROB, h),
                   a=Operand(Buf.LOGIT, h), imm=h) for h in range(heads)]
    probs = softmax_int(logits, TINY.max_tokens)
    prog += [Instr(Op.TOKEN_SELECT, 0, n, heads, d, dst=Operand(Buf.ACT0), a=Operand(Buf.ACT1),
                   imm=6)]
    res = _run(mem, prog)
    ref = prune_tokens_attention(x, probs, cfg=TINY, k=6)
    assert np.array_equal(res.trace[-1].output, ref.out)
    assert res.trace[-1].output.shape == (8, d)
    assert np.array_equal(res.trace[-1].info["kept"], ref.kept)


# -- malformed programs ------------------------------------------------------------------------

def _valid_add():
    mem = _Mem()
    addr = mem.add(pack_add(AddParams(1, 1, 0)))
    return mem, Instr(Op.ADD, 0, 4, 0, 8, dst=Operand(Buf.ACT2), a=Operand(Buf.ACT0),
                      b=Operand(Buf.ACT1), addr=addr)


@pytest.mark.parametrize("change, match", [
    ({"op": 0x7F}, r"instruction 1 \(0x7f\): opcode: unknown opcode 0x7f"),
    ({"flags": 0x40}, r"instruction 1 \(ADD\): flags: unknown flag bits 0x40"),
    ({"addr": 1 << 20}, r"instruction 1 \(ADD\): addr: external range \[0x100000, 0x100008\) "
                        r"is outside memory"),
    ({"dst": Operand(Buf.ACT2, 30, 0)}, r"instruction 1 \(ADD\): dst.row: rows \[30, 34\) "
                                        r"overflow buffer ACT2 of 32 rows"),
    ({"a": Operand(Buf.ACT0, 0, 92)}, r"a.col: columns \[92, 100\) overflow buffer ACT0"),
    ({"a": Operand(Buf.ACT0, 0, 6)}, r"a.col: column 6 of buffer ACT0 must be a "
                                     r"multiple of cols \(4\)"),
    ({"b": Operand(Buf.LOGIT)}, r"b.buf: must be one of ACT0, ACT1, ACT2, ACT3, not LOGIT"),
    ({"b": Operand(9)}, r"b.buf: must be one of .*, not 9"),
    ({"dst": Operand(Buf.ACT0, 2, 4)}, r"dst: destination region overlaps source operand a"),
    ({"m": 0}, r"m: must be in the range \[1, 4096\], not 0"),
])
def test_malformed_instruction_rejected(change, match):
    mem, ins = _valid_add()
    prog = [Instr(Op.HALT)]
    _run(mem, [ins])                                   # the unmodified program runs
    with pytest.raises(ProgramError, match=match):
        execute([ins, ins.replace(**change)] + prog, mem.bytes(), TINY)


@pytest.mark.parametrize("ins, match", [
    (Instr(Op.GEMM, 0, 40, 8, 8, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
     r"m: must be in the range \[1, 32\], not 40"),
    (Instr(Op.GEMM, int(Flag.B_T), 4, 8, 8, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
     r"flags: B_T needs B_BUF"),
    (Instr(Op.GEMM, int(Flag.OUT16), 4, 8, 8, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
     r"dst.buf: must be one of LOGIT, not ACT1"),
    (Instr(Op.SOFTMAX, 0, 4, 0, 40, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT)),
     r"n: softmax rows must be in the range \[1, 32\], not 40"),
    (Instr(Op.SOFTMAX, int(Flag.SCORE), 4, 0, 4, dst=Operand(Buf.PROB), a=Operand(Buf.LOGIT),
           imm=16), r"imm: score row must be in the range \[0, 15\], not 16"),
    (Instr(Op.TOKEN_SELECT, 0, 10, 2, 8, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0), imm=10),
     r"imm: keep count must be in the range \[1, 9\], not 10"),
    (Instr(Op.LOAD, 0, 2, 0, 8, dst=Operand(Buf.LOGIT), imm=16),
     r"flags: W16 must be set for buffer LOGIT"),
    (Instr(Op.LOAD, 0, 2, 0, 8, dst=Operand(Buf.ACT0), imm=4),
     r"imm: row pitch 4 is shorter than a row of 8 elements"),
    (Instr(Op.LOAD, 0, 2, 0, 8, dst=Operand(Buf.SCORE), imm=8),
     r"dst.buf: must be one of ACT0, ACT1, ACT2, ACT3, LOGIT, PROB, not SCORE"),
    (Instr(Op.STORE, 0, 2, 0, 8, a=Operand(Buf.PROB, 0, 2), imm=8),
     r"a.col: column 2 of buffer PROB must be a multiple of cols \(4\)"),
    (Instr(Op.LAYERNORM, 0, 2, 0, 40, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0)),
     r"n: LayerNorm rows must be in the range \[1, 32\], not 40"),
])
def test_malformed_unit_fields_rejected(ins, match):
    with pytest.raises(ProgramError, match=r"instruction 0 .*" + match):
        execute([ins, Instr(Op.HALT)], bytes(1 << 12), TINY)


def test_missing_halt_rejected():
    mem, ins = _valid_add()
    with pytest.raises(ProgramError, match="does not end with HALT"):
        execute([ins], mem.bytes(), TINY)


def test_corrupt_sparse_weights_fail_at_the_instruction(rng):
    mem = _Mem()
    w = rng.integers(-128, 128, (8, 8))
    pat = block_prune(w, 0.5, default_block(TINY))
    blob = bytearray(encode(pat.apply(w), pat))
    ep = mem.add(pack_epilogue(TINY, EpilogueParams(TINY, 8)))
    good = Instr(Op.GEMM, int(Flag.SPARSE), 4, 8, 8, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0),
                 addr=mem.add(bytes(blob)), addr2=ep, imm=len(blob))
    _run(mem, [good])
    blob[0:4] = b"XXXX"
    bad = good.replace(addr=mem.add(bytes(blob)))
    with pytest.raises(ProgramError, match=r"instruction 0 \(GEMM\): addr: .*bad magic"):
        _run(mem, [bad])
    with pytest.raises(ProgramError, match=r"instruction 0 \(GEMM\): addr: compressed weights "
                                           r"are 8 x 8 \(out x in\), the instruction needs "
                                           r"12 x 8"):
        _run(mem, [good.replace(n=12, addr2=mem.add(bytes(7 * 12)))])


def test_first_mismatch(tiny_model):
    from golden.executor import first_mismatch
    q, c = tiny_model
    p = quantize_input(q, _images(1, 302))[0]
    res = execute(c.program, c.memory_with_input(p), TINY)
    outputs = {t.index: t.output.copy() for t in res.trace}
    assert first_mismatch(res.trace, outputs) is None
    outputs[20][3, 5] += 1
    outputs[25][0, 0] += 1
    mm = first_mismatch(res.trace, outputs)
    assert (mm.index, mm.element, mm.got - mm.expected) == (20, (3, 5), 1)
    assert str(mm).startswith("instruction 20 (ADD): first difference at element (3, 5)")
    outputs[7] = outputs[7][:2]
    assert "output shape" in str(first_mismatch(res.trace, outputs))


def test_bad_parameter_record_fails_at_the_instruction():
    import struct
    mem = _Mem()
    addr = mem.add(struct.pack("<iiiHBB", 0, -5, -5, 1, 0, 0))     # b_int must be negative
    ins = Instr(Op.GELU, 0, 2, 0, 8, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT0), addr=addr)
    with pytest.raises(ProgramError, match=r"instruction 0 \(GELU\): data: b_int must be in "
                                           r"the range"):
        _run(mem, [ins])


def test_gemm_ext_is_the_gemm_engine(rng):
    """Without options gemm_ext is golden.gemm.gemm; A_U8 and OUT16 against exact integers."""
    a = rng.integers(-128, 128, (7, 30))
    b = rng.integers(-128, 128, (30, 9))
    ep = EpilogueParams.random(TINY, 9, rng, 30)
    assert np.array_equal(gemm_ext(TINY, a, b, ep), gemm(TINY, a, b, ep))
    p = rng.integers(0, 256, (7, 30))
    one = EpilogueParams(TINY, 9, None, [1] * 9, [0] * 9)
    assert np.array_equal(gemm_ext(TINY, p, b, one, a_unsigned=True, out_bits=16),
                          np.clip(p @ b, -(1 << 15), (1 << 15) - 1))
    with pytest.raises(ValueError, match=r"a values must be in the range \[-128, 127\]"):
        gemm_ext(TINY, p, b, one)
