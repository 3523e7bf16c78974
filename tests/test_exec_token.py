"""rtl.exec_token.TokenUnit against the golden executor (TOKEN_SELECT)."""

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Value
from amaranth.lib.wiring import Out

from golden.config import PRESETS, AccelConfig
from golden.isa import Buf, Instr, Op, Operand, validate_instr
from rtl.exec_token import TokenUnit, cycles, token_stride
from sim.instr import UnitHarness, check_instr, empty_buffers, golden_instr, read_buffers, run_instr
from sim.streams import run_simulation

MEM = bytearray(64)


def _bufs(cfg, rng, probs=None):
    """Every buffer random (stale data everywhere, including SCORE rows past ``k``)."""
    bufs = empty_buffers(cfg)
    for b in (Buf.ACT0, Buf.ACT1, Buf.ACT2, Buf.ACT3):
        bufs[b] = rng.integers(-128, 128, bufs[b].shape)
    bufs[Buf.LOGIT] = rng.integers(-(1 << 15), 1 << 15, bufs[Buf.LOGIT].shape)
    bufs[Buf.PROB] = rng.integers(0, 256, bufs[Buf.PROB].shape)
    bufs[Buf.SCORE] = rng.integers(0, 256, bufs[Buf.SCORE].shape) if probs is None else probs
    return bufs


def _instr(cfg, m, n, keep, k, a=(Buf.ACT0, 0, 0), dst=(Buf.ACT1, 0, 0)):
    ins = Instr(Op.TOKEN_SELECT, m=m, k=k, n=n, a=Operand(*a), dst=Operand(*dst), imm=keep)
    validate_instr(cfg, ins, 0)
    return ins


def _check(cfg, ins, bufs, rng, stall=0.0, latency=2):
    res = check_instr(cfg, TokenUnit(cfg), ins, MEM, bufs, rng=rng, stall=stall,
                      latency=latency)
    assert res["cycles"] == cycles(cfg, ins, latency)
    assert res["model"].reads == res["model"].writes == 0
    return res


# m, n, keep, heads, a, dst
SHAPES = [
    (2, 1, 1, 1, (Buf.ACT0, 0, 0), (Buf.ACT1, 0, 0)),            # smallest
    (2, 32, 1, 4, (Buf.ACT3, 30, 64), (Buf.ACT2, 30, 32)),       # last rows of the banks
    (3, 5, 1, 2, (Buf.ACT0, 4, 8), (Buf.ACT0, 20, 36)),          # same bank, offsets
    (9, 13, 8, 3, (Buf.ACT1, 1, 4), (Buf.ACT2, 2, 60)),          # keep all: no package
    (17, 32, 8, 2, (Buf.ACT2, 0, 0), (Buf.ACT0, 0, 0)),          # the tiny model's selection
    (20, 30, 5, 4, (Buf.ACT1, 3, 12), (Buf.ACT1, 3, 48)),        # same bank, n % cols != 0
    (32, 32, 1, 4, (Buf.ACT0, 0, 0), (Buf.ACT3, 29, 8)),         # keep one of 31
    (32, 7, 31, 1, (Buf.ACT2, 0, 88), (Buf.ACT3, 0, 0)),         # keep all of 31
    (32, 18, 16, 4, (Buf.ACT3, 0, 32), (Buf.ACT0, 0, 12)),
]


@pytest.mark.parametrize("m, n, keep, heads, a, dst", SHAPES)
def test_shapes(m, n, keep, heads, a, dst, tiny, rng):
    ins = _instr(tiny, m, n, keep, heads, a, dst)
    _check(tiny, ins, _bufs(tiny, rng), rng)


@pytest.mark.parametrize("seed", range(6))
def test_random_with_stalls(seed, tiny):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, tiny.max_tokens + 1))
    n = int(rng.integers(1, tiny.max_dim + 1))
    keep = int(rng.integers(1, m))
    heads = int(rng.integers(1, tiny.max_heads + 1))
    a = (Buf(int(rng.integers(0, 4))), int(rng.integers(0, tiny.max_tokens - m + 1)),
         tiny.cols * int(rng.integers(0, 8)))
    dst = (Buf((int(a[0]) + 1) % 4), int(rng.integers(0, tiny.max_tokens - m + 1)),
           tiny.cols * int(rng.integers(0, 8)))
    ins = _instr(tiny, m, n, keep, heads, a, dst)
    _check(tiny, ins, _bufs(tiny, rng), rng, stall=0.2 + 0.2 * rng.random(),
           latency=int(rng.integers(1, 6)))


@pytest.mark.parametrize("kind", ["all_equal", "few_values", "saturated", "zero_weights",
                                  "extremes"])
def test_ties_and_extremes(kind, tiny, rng):
    m, n, keep, heads = 24, 22, 9, 4
    probs = rng.integers(0, 256, (tiny.max_heads, tiny.max_tokens))
    bufs = _bufs(tiny, rng, probs)
    if kind == "all_equal":
        probs[:heads] = 37
    elif kind == "few_values":            # many ties at the threshold
        probs[:heads] = rng.choice([0, 3, 4], probs[:heads].shape)
    elif kind == "saturated":             # head sums above 255 saturate to equal scores
        probs[:heads] = rng.integers(200, 256, probs[:heads].shape)
        probs[:heads, 5] = 1
    elif kind == "zero_weights":          # every pruned token has score 0: zero package row
        probs[:heads] = 0
        probs[:heads, 1:keep + 1] = 9
    elif kind == "extremes":
        probs[:heads] = 255
        bufs[Buf.ACT0][:m, :n // 2] = -128
        bufs[Buf.ACT0][:m, n // 2:] = 127
    ins = _instr(tiny, m, n, keep, heads, (Buf.ACT0, 2, 4), (Buf.ACT1, 5, 8))
    _check(tiny, ins, bufs, rng)


def test_stale_scores_past_heads(tiny, rng):
    """SCORE rows past ``k`` would change the selection if they were summed."""
    m, n, keep = 16, 8, 5
    probs = np.zeros((tiny.max_heads, tiny.max_tokens), np.int64)
    probs[0, :m] = np.arange(m)                  # keeps tokens 11 .. 15
    probs[1:, :m] = np.arange(m)[::-1] * 16      # would keep tokens 1 .. 5
    ins = _instr(tiny, m, n, keep, 1)
    res = _check(tiny, ins, _bufs(tiny, rng, probs), rng)
    assert list(res["entry"].info["kept"]) == [0, 11, 12, 13, 14, 15]


def test_cycle_formula_wide_rows(rng):
    """Rows longer than the score phase (``segs > m + scan_words + 3``) extend the run."""
    cfg = AccelConfig(rows=1, cols=1, max_tokens=6, max_dim=24, max_hidden=8, score_width=1,
                      max_heads=2, mult_width=4)
    for m, n, keep in [(2, 9, 1), (3, 24, 1), (5, 20, 4), (4, 6, 2)]:
        ins = _instr(cfg, m, n, keep, 2)
        _check(cfg, ins, _bufs(cfg, rng), rng)


def test_cols_not_power_of_two(rng):
    """Word offsets ``col // cols`` and ``ceil(n / cols)`` with ``cols = 3``."""
    cfg = AccelConfig(rows=3, cols=3, max_tokens=12, max_dim=16, max_hidden=16, max_heads=3)
    assert token_stride(cfg) == 8
    ins = _instr(cfg, 11, 14, 6, 3, (Buf.ACT2, 1, 9), (Buf.ACT2, 0, 24))
    _check(cfg, ins, _bufs(cfg, rng), rng, stall=0.3)


def test_cycles_values(tiny):
    assert cycles(tiny, _instr(tiny, 17, 32, 8, 2)) == 200
    assert cycles(tiny, _instr(tiny, 2, 1, 1, 1)) == 41
    deit = PRESETS["default"]
    assert cycles(deit, _instr(deit, 197, 192, 138, 3)) == 4972


BAD = [
    {"m": 1, "imm": 1},
    {"m": 33, "imm": 3},
    {"imm": 0},
    {"imm": 8},
    {"k": 0},
    {"k": 17},
    {"n": 0},
    {"n": 33},
]


def _bad(fields):
    fields = {"m": 8, "k": 2, "n": 8, "imm": 3, **fields}
    return Instr(Op.TOKEN_SELECT, dst=Operand(Buf.ACT1, 0, 0), a=Operand(Buf.ACT0, 0, 0),
                 **fields)


def test_invalid_instruction_raises_error(tiny, rng):
    bufs = _bufs(tiny, rng)
    res = run_instr(tiny, TokenUnit(tiny), _bad(BAD[3]), MEM, bufs, rng=rng, stall=0.3)
    assert res["error"] and res["cycles"] == 1
    for b, x in bufs.items():
        np.testing.assert_array_equal(res["buffers"][b], x)


def test_bus_rule_and_back_to_back(tiny, rng):
    """Outgoing members are zero while idle; instructions run back to back from a clean state,
    also after a rejected one (every kind of out-of-range argument: error, nothing written)."""
    unit = TokenUnit(tiny)
    bufs = _bufs(tiny, rng)
    program = [
        _instr(tiny, 12, 10, 4, 3, (Buf.ACT0, 0, 0), (Buf.ACT1, 0, 0)),
        *[_bad(fields) for fields in BAD],
        _instr(tiny, 9, 17, 5, 4, (Buf.ACT1, 0, 0), (Buf.ACT3, 3, 4)),
        _instr(tiny, 9, 17, 8, 2, (Buf.ACT1, 0, 4), (Buf.ACT3, 20, 40)),
    ]
    valid = [program[0], program[-2], program[-1]]
    expect = {b: x.copy() for b, x in bufs.items()}
    for ins in valid:
        _, expect, _ = golden_instr(tiny, ins, MEM, expect)
    h = UnitHarness(tiny, unit, bufs)
    outgoing = []
    for name in ("mem", "rd0", "rd1", "wr", "score_wr", "score_rd"):
        port = getattr(unit, name)
        for path, member, value in port.signature.flatten(port):
            if member.flow == Out:
                outgoing.append((f"{name}.{'.'.join(map(str, path))}", value))
    state = {}

    async def idle(ctx, cycles):
        for _ in range(cycles):
            for name, value in outgoing:
                assert ctx.get(Value.cast(value)) == 0, f"{name} driven while idle"
            assert not ctx.get(unit.done)
            await ctx.tick()

    async def bench(ctx):
        errors = []
        for ins in program:
            ctx.set(unit.instr.as_value(), int.from_bytes(ins.encode(), "little"))
            await idle(ctx, 3)
            ctx.set(unit.start, 1)
            await ctx.tick()
            ctx.set(unit.start, 0)
            count = 1
            while not ctx.get(unit.done):
                await ctx.tick()
                count += 1
            errors.append(bool(ctx.get(unit.error)))
            assert count == (cycles(tiny, ins, 2) if ins in valid else 1)
            await ctx.tick()
            await idle(ctx, 2)
        state["errors"] = errors
        state["buffers"] = read_buffers(ctx, tiny, h.buffers)

    run_simulation(h, [bench], max_cycles=3000)
    assert state["errors"] == [ins not in valid for ins in program]
    for b in expect:
        np.testing.assert_array_equal(state["buffers"][b], expect[b], err_msg=Buf(b).name)


def test_constructor_checks(tiny):
    with pytest.raises(TypeError, match=r"^cfg must be an AccelConfig, not 3$"):
        TokenUnit(3)
    with pytest.raises(ValueError, match=r"^max_tokens must be in the range \[2, 4096\] for "
                                         r"token selection, not 1$"):
        TokenUnit(tiny.replace(max_tokens=1))
    with pytest.raises(ValueError, match=r"^mult_width must be in the range \[2, 29\] for "
                                         r"token selection, not 1$"):
        TokenUnit(tiny.replace(mult_width=1))


def test_stride(tiny):
    assert token_stride(tiny) == 8
    assert token_stride(PRESETS["default"]) == 32
    assert token_stride(tiny.replace(max_dim=20)) == 8
    assert token_stride(tiny.replace(max_dim=4)) == 1


def test_elaborates_default_preset():
    text = rtlil.convert(TokenUnit(PRESETS["default"]), name="token_unit")
    assert "token_unit" in text
