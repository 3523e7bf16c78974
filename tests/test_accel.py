"""rtl.accel.Accelerator: whole programs on the RTL, bit-exact with the golden executor."""

import numpy as np
import pytest

from golden.compiler import build_tiny
from golden.config import PRESETS
from golden.executor import execute, first_mismatch
from golden.isa import Buf, Flag, Instr, Op, Operand, ProgramError, validate_program
from golden.vit import forward_int
from rtl.accel import Accelerator, ErrorCode, error_code_of_field, fetch_cycles
from sim.accel import run_program
from sim.run import _images

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_model():
    _, q, compiled = build_tiny(seed=0)
    return q, compiled


def test_tiny_vit_bit_exact_end_to_end(tiny_model):
    """2 blocks, D = 32, 2 heads, 17 tokens, token pruning after block 0's attention, every
    encoder linear block-sparse: logits and every instruction's output equal golden."""
    q, compiled = tiny_model
    ops = {Op(i.op) for i in compiled.program}
    assert ops == set(Op)                                   # every opcode is exercised
    assert any(i.flags & Flag.SPARSE for i in compiled.program)
    patches = _images(q, 1, seed=3)[0]
    mem = compiled.memory_with_input(patches)
    gold = execute(compiled.program, mem, TINY)
    run = run_program(TINY, compiled.program, mem, latency=3)
    assert not run.error
    assert first_mismatch(gold.trace, run.outputs) is None
    assert len(run.outputs) == len(compiled.program) - 1     # every instruction compared
    got = compiled.read_logits(run.memory)
    assert np.array_equal(got, forward_int(q, patches))
    assert bytes(run.memory[:len(compiled.image)]) == bytes(gold.memory)
    # Fetch and checks cost the same for every instruction.
    assert all(t.fetch == fetch_cycles(TINY, 3) for t in run.timings[1:])
    assert run.cycles == sum(t.total for t in run.timings) + fetch_cycles(TINY, 3)   # + HALT


def _bad(program, index, **change):
    program = list(program)
    program[index] = program[index].replace(**change)
    return program


@pytest.mark.parametrize("name, change", [
    ("unknown opcode", {"op": 0x7E}),
    ("out-of-range address", {"addr": 0x7FFF_0000}),
    ("buffer overflow", {"dst": Operand(Buf.ACT2, 30, 0)}),
])
def test_malformed_program_ends_with_error_status(tiny_model, name, change):
    q, compiled = tiny_model
    index = 3                                              # embed.add: after three that run
    prog = _bad(compiled.program, index, **change)
    mem = compiled.memory_with_input(_images(q, 1, seed=3)[0])
    with pytest.raises(ProgramError) as exc:
        validate_program(prog, TINY, len(mem))
    assert exc.value.index == index
    run = run_program(TINY, prog, mem, snapshot=False, max_cycles=20_000)
    assert run.error
    assert run.error_index == index
    assert run.error_code == error_code_of_field(exc.value.field)
    assert len(run.timings) == index                       # the first three ran


def test_program_without_halt_ends_with_error_status():
    prog = [Instr(Op.LOAD, 0, 1, 0, 4, dst=Operand(Buf.ACT0), addr=0, imm=4)] * 3
    run = run_program(TINY, prog, bytes(64), snapshot=False, max_cycles=5_000)
    assert run.error and run.error_code == ErrorCode.NO_HALT and run.error_index == 3


def test_corrupt_sparse_stream_is_a_runtime_error(tiny_model):
    q, compiled = tiny_model
    index = next(i for i, ins in enumerate(compiled.program) if ins.flags & Flag.SPARSE)
    mem = compiled.memory_with_input(_images(q, 1, seed=3)[0])
    addr = compiled.program[index].addr
    mem[addr:addr + 4] = b"XXXX"                           # destroy the stream's magic
    with pytest.raises(ProgramError) as exc:
        execute(compiled.program, mem, TINY)
    assert exc.value.index == index
    run = run_program(TINY, compiled.program, mem, snapshot=False, max_cycles=100_000)
    assert run.error and run.error_index == index and run.error_code == ErrorCode.RUNTIME


def test_memory_stalls_keep_results(tiny_model):
    """The first block of the model with random stalls on every memory channel."""
    q, compiled = tiny_model
    end = next(i for i, lab in enumerate(compiled.labels) if lab.startswith("b0.fc1"))
    prog = compiled.program[:end] + [Instr(Op.HALT)]
    mem = compiled.memory_with_input(_images(q, 1, seed=4)[0])
    gold = execute(prog, mem, TINY)
    run = run_program(TINY, prog, mem, rng=np.random.default_rng(7), stall=0.3)
    assert not run.error
    assert first_mismatch(gold.trace, run.outputs) is None
    assert len(run.outputs) == end


def test_config_type_checked():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig"):
        Accelerator("tiny")


def test_first_mismatch_names_the_instruction(tiny_model):
    """The runner's report: a weight byte the RTL sees differently shows up at the GEMM that
    uses it (golden on the original memory, RTL on the altered one)."""
    q, compiled = tiny_model
    prog = compiled.program[:3] + [Instr(Op.HALT)]          # load, patch GEMM, load
    mem = compiled.memory_with_input(_images(q, 1, seed=3)[0])
    gold = execute(prog, mem, TINY)
    altered = bytearray(mem)
    altered[prog[1].addr] ^= 0x40                           # weight B[0, 0] of embed.patch
    run = run_program(TINY, prog, altered)
    mm = first_mismatch(gold.trace, run.outputs)
    assert mm is not None and mm.index == 1 and mm.instr.op == Op.GEMM
    assert mm.element[1] == 0                               # output column 0
    assert "instruction 1 (GEMM): first difference at element" in str(mm)
