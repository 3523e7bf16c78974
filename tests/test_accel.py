"""rtl.accel.Accelerator: whole programs on the RTL, bit-exact with the golden executor."""

import numpy as np
import pytest

from golden.compiler import build_tiny
from golden.config import PRESETS
from golden.executor import execute, first_mismatch
from golden.isa import Buf, Flag, Instr, Op, Operand, ProgramError, validate_program
from golden.vit import forward_int
from rtl import exec_gemm, exec_row
from rtl.accel import (
    DISPATCH_CYCLES,
    Accelerator,
    ErrorCode,
    error_code_of_field,
    fetch_cycles,
)
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
    # The first instruction is fetched and checked before anything runs; every other one is
    # prefetched while the previous unit computes (it leaves the memory's read channels early)
    # and dispatched in DISPATCH_CYCLES, except after a LOAD, which reads memory until its last
    # cycle (the fetch starts in that cycle).
    assert run.timings[0].fetch == fetch_cycles(TINY, 3)
    for prev, t in zip(run.timings, run.timings[1:]):
        want = fetch_cycles(TINY, 3) - 1 if prev.instr.op == Op.LOAD else DISPATCH_CYCLES
        assert t.fetch == want, (t.index, t.fetch, want)
    halt = run.cycles - sum(t.total for t in run.timings)   # HALT, prefetched during STORE
    assert DISPATCH_CYCLES <= halt < fetch_cycles(TINY, 3)
    # GEMM preload: a GEMM that reads B from memory and follows a row or token unit starts its
    # load while that unit runs; every GEMM takes exactly the cycles of its model for the
    # measured head start (0: not preloaded). Record preload: a GELU/LAYERNORM/ADD that follows
    # anything but a LOAD/STORE or its own opcode reads its record while that one runs.
    preloaded, records = [], []
    for prev, t in zip(run.timings, run.timings[1:]):
        if t.instr.op in (Op.GELU, Op.LAYERNORM, Op.ADD):
            follows = prev.instr.op not in (Op.LOAD, Op.STORE, t.instr.op)
            assert (t.head > 0) == follows, t.index
            assert t.exec == exec_row.cycles(TINY, t.instr, 3, head=t.head), t.index
            if t.head:
                records.append(compiled.labels[t.index])
                assert t.exec < exec_row.cycles(TINY, t.instr, 3)
            continue
        if t.instr.op != Op.GEMM:
            assert t.head == 0
            continue
        follows = prev.instr.op in (Op.LAYERNORM, Op.GELU, Op.ADD, Op.SOFTMAX, Op.TOKEN_SELECT)
        assert (t.head > 0) == (follows and not t.instr.flags & Flag.B_BUF), t.index
        stream = None
        if t.instr.flags & Flag.SPARSE:
            stream = bytes(mem[t.instr.addr:t.instr.addr + t.instr.imm])
        assert t.exec == exec_gemm.cycles(TINY, t.instr, 3, stream, head=t.head), t.index
        if t.head:
            preloaded.append(compiled.labels[t.index])
            assert t.exec < exec_gemm.cycles(TINY, t.instr, 3, stream)
    assert records == ["embed.add", "b0.ln1", "b0.add1", "b0.ln2", "b0.gelu", "b0.add2",
                       "b1.ln1", "b1.add1", "b1.ln2", "b1.gelu", "b1.add2", "norm"]
    assert preloaded == ["b0.qkv", "b0.fc1", "b0.fc2", "b1.qkv", "b1.fc1", "b1.fc2", "head.0"]


def _bad(program, index, **change):
    program = list(program)
    program[index] = program[index].replace(**change)
    return program


@pytest.mark.parametrize("index, name, change", [
    (3, "unknown opcode", {"op": 0x7E}),        # embed.patch, fetched after a LOAD
    (3, "out-of-range address", {"addr": 0x7FFF_0000}),
    (3, "buffer overflow", {"dst": Operand(Buf.ACT2, 30, 0)}),
    (7, "unknown opcode", {"op": 0x7E}),        # b0.h0.qk, prefetched during b0.qkv
])
def test_malformed_program_ends_with_error_status(tiny_model, index, name, change):
    q, compiled = tiny_model
    prog = _bad(compiled.program, index, **change)
    mem = compiled.memory_with_input(_images(q, 1, seed=3)[0])
    with pytest.raises(ProgramError) as exc:
        validate_program(prog, TINY, len(mem))
    assert exc.value.index == index
    run = run_program(TINY, prog, mem, snapshot=False, max_cycles=20_000)
    assert run.error
    assert run.error_index == index
    assert run.error_code == error_code_of_field(exc.value.field)
    assert len(run.timings) == index                       # the ones before it ran


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


def test_program_after_a_runtime_error_starts_clean(tiny_model):
    """A corrupt stream fails b0.qkv while the next instruction is being prefetched; that
    fetch is voided, so a second program (a lone HALT) started on the same accelerator ends at
    once, running nothing."""
    from rtl.ports import mem_beat_bytes
    from sim.accel import place_program
    from sim.memory import MemoryModel
    from sim.streams import run_simulation
    q, compiled = tiny_model
    index = next(i for i, ins in enumerate(compiled.program) if ins.flags & Flag.SPARSE)
    image = compiled.memory_with_input(_images(q, 1, seed=3)[0])
    addr = compiled.program[index].addr
    image[addr:addr + 4] = b"XXXX"
    prog1 = compiled.program[:index + 2] + [Instr(Op.HALT)]
    mem, addr1, size = place_program(image, prog1)
    addr2 = len(mem)
    mem += Instr(Op.HALT).encode()
    dut = Accelerator(TINY)
    model = MemoryModel(dut.mem, mem_beat_bytes(TINY), mem, latency=3)
    seen = {}

    async def bench(ctx):
        for name, pa, count in (("first", addr1, len(prog1)), ("second", addr2, 1)):
            ctx.set(dut.prog_addr, pa)
            ctx.set(dut.prog_len, count)
            ctx.set(dut.mem_size, size)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ops = set()
            while not ctx.get(dut.done):
                ops.add(ctx.get(dut.op))
                await ctx.tick()
            seen[name] = (ctx.get(dut.error), ctx.get(dut.error_code), ctx.get(dut.error_index),
                          ctx.get(dut.cycles), ops - {0})
            await ctx.tick()

    run_simulation(dut, [bench], max_cycles=100_000, background=model.processes())
    assert seen["first"][:3] == (1, ErrorCode.RUNTIME, index)
    err, code, _, cycles, ops = seen["second"]
    assert (err, code, ops) == (0, 0, set())
    assert cycles < 2 * fetch_cycles(TINY, 3)     # at most the voided fetch, then its own


def _run_twice(dut, prog, image, bad, watch, *, region, idle):
    """Run ``prog`` twice on ``dut``: first with the memory image ``bad``, then with ``image``
    (the defect repaired). ``watch(ctx, run)`` is called in every cycle of run 0 and 1 and
    returns events to log; every signal of ``idle`` must be low once a run is done. Returns
    ``{"first": ..., "second": ...}``, each ``(error, error_code, error_index, events)``, and
    ``"region"``: the output region of instruction ``region`` after the second run."""
    from rtl.ports import mem_beat_bytes
    from sim.accel import _region, place_program
    from sim.memory import MemoryModel
    from sim.streams import run_simulation
    mem, addr, size = place_program(bad, prog)
    model = MemoryModel(dut.mem, mem_beat_bytes(TINY), mem, latency=3)
    seen = {}

    async def bench(ctx):
        for run, name in enumerate(("first", "second")):
            ctx.set(dut.prog_addr, addr)
            ctx.set(dut.prog_len, len(prog))
            ctx.set(dut.mem_size, size)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            events = []
            while not ctx.get(dut.done):
                events += watch(ctx, run)
                await ctx.tick()
            for sig in idle:
                assert not ctx.get(sig), f"{sig} high after the program"
            seen[name] = (ctx.get(dut.error), ctx.get(dut.error_code),
                          ctx.get(dut.error_index), events)
            await ctx.tick()
            mem[:len(image)] = image                        # repair the defect
        seen["region"] = _region(ctx, TINY, dut.buffers, prog[region])

    run_simulation(dut, [bench], max_cycles=200_000, background=model.processes())
    return seen


def test_row_unit_error_during_gemm_preload(tiny_model):
    """b0.ln1 fails (a LayerNorm shift above 62, a RUNTIME error of the RowUnit) while b0.qkv
    preloads: the GEMM runs to its end without writing a buffer and drains its bursts before
    the program ends (at b0.ln1, RUNTIME); a second program on the same accelerator, with the
    record repaired, preloads b0.qkv and is bit-exact."""
    q, compiled = tiny_model
    ln = compiled.labels.index("b0.ln1")
    assert compiled.program[ln + 1].op == Op.GEMM
    image = compiled.memory_with_input(_images(q, 1, seed=3)[0])
    prog = compiled.program[:ln + 2] + [Instr(Op.HALT)]
    gold = execute(prog, image, TINY)
    shift_at = compiled.program[ln].addr + 2               # LayerNorm record: mult, shift, ...
    bad = bytearray(image)
    bad[shift_at] = 63
    with pytest.raises(ProgramError) as exc:
        execute(prog, bad, TINY)
    assert exc.value.index == ln and exc.value.field == "data"
    dut = Accelerator(TINY)
    gemm = dut.units["gemm"]
    preloaded = {}

    def watch(ctx, run):
        preloaded[run] = preloaded.get(run, False) or bool(ctx.get(gemm.preload))
        if preloaded[run] and not ctx.get(gemm.start):
            assert not (run == 0 and ctx.get(gemm.wr.en)), "aborted GEMM wrote"
        return [(what, ctx.get(dut.index)) for what, sig in
                (("gemm done", gemm.done), ("abort", gemm.abort)) if ctx.get(sig)]

    seen = _run_twice(dut, prog, image, bad, watch, region=ln + 1,
                      idle=[gemm.mem_busy, dut.mem.rdata.valid])
    seen["first"] = seen["first"][:3] + (preloaded[0],) + seen["first"][3:]
    seen["second"] = seen["second"][:3] + (preloaded[1],) + seen["second"][3:]
    seen["qkv"] = seen["region"]
    err, code, index, preloaded, events = seen["first"]
    assert (err, code, index, preloaded) == (1, ErrorCode.RUNTIME, ln, True)
    assert events[-2:] == [("abort", ln), ("gemm done", ln)]
    err, code, _, preloaded, _ = seen["second"]
    assert (err, code, preloaded) == (0, 0, True)
    assert np.array_equal(seen["qkv"], gold.trace[ln + 1].output)


def test_runtime_error_during_record_preload():
    """An ADD fails (a shift above 62 in its record, RUNTIME) while the next LAYERNORM's record
    is preloaded: the record is read to its end and dropped before the program ends (at the
    ADD); a second program on the same accelerator, with the record repaired, preloads the
    LayerNorm's record and is bit-exact."""
    from golden.isa import AddParams, pack_add, pack_ln
    from golden.layernorm import ln_params
    rng = np.random.default_rng(11)
    m, n = 6, 32
    image = bytearray(1024)
    image[0:2 * m * n] = rng.integers(-128, 128, 2 * m * n).astype(np.int8).tobytes()
    add_at, ln_at = 512, 576
    image[add_at:add_at + 8] = pack_add(AddParams(20000, 30000, 15))
    ln_rec = pack_ln(ln_params(rng.normal(1, 0.4, n), rng.normal(0, 0.5, n), n=n,
                               scale_in=0.05, scale_out=0.04))
    image[ln_at:ln_at + len(ln_rec)] = ln_rec
    prog = [Instr(Op.LOAD, 0, m, 0, n, dst=Operand(Buf.ACT0), addr=0, imm=n),
            Instr(Op.LOAD, 0, m, 0, n, dst=Operand(Buf.ACT2), addr=m * n, imm=n),
            Instr(Op.ADD, 0, m, 0, n, dst=Operand(Buf.ACT3), a=Operand(Buf.ACT0),
                  b=Operand(Buf.ACT2), addr=add_at),
            Instr(Op.LAYERNORM, 0, m, 0, n, dst=Operand(Buf.ACT1), a=Operand(Buf.ACT3),
                  addr=ln_at),
            Instr(Op.HALT)]
    gold = execute(prog, image, TINY)
    bad = bytearray(image)
    bad[add_at + 4] = 63
    with pytest.raises(ProgramError) as exc:
        execute(prog, bad, TINY)
    assert exc.value.index == 2 and exc.value.field == "data"
    dut = Accelerator(TINY)
    row = dut.units["row"]

    def watch(ctx, run):
        return [(what, ctx.get(dut.index)) for what in ("preload", "abort", "done")
                if ctx.get(getattr(row, what))]

    seen = _run_twice(dut, prog, image, bad, watch, region=3,
                      idle=[row.preloaded, row.mem_busy, dut.mem.rdata.valid])
    seen["ln"] = seen["region"]
    err, code, index, events = seen["first"]
    assert (err, code, index) == (1, ErrorCode.RUNTIME, 2)
    assert events == [("preload", 2), ("done", 2), ("abort", 2)]
    err, code, _, events = seen["second"]
    assert (err, code) == (0, 0)
    assert events == [("preload", 2), ("done", 2), ("done", 3)]
    assert np.array_equal(seen["ln"], gold.trace[3].output)


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
    ip = compiled.labels.index("embed.patch")               # after the three LOADs
    prog = compiled.program[:ip + 1] + [Instr(Op.HALT)]
    mem = compiled.memory_with_input(_images(q, 1, seed=3)[0])
    gold = execute(prog, mem, TINY)
    altered = bytearray(mem)
    altered[prog[ip].addr] ^= 0x40                          # weight B[0, 0] of embed.patch
    run = run_program(TINY, prog, altered)
    mm = first_mismatch(gold.trace, run.outputs)
    assert mm is not None and mm.index == ip and mm.instr.op == Op.GEMM
    assert mm.element[1] == 0                               # output column 0
    assert f"instruction {ip} (GEMM): first difference at element" in str(mm)
