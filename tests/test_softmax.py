import numpy as np
import pytest
import torch
from amaranth.lib import data

from golden.config import AccelConfig
from golden.softmax import (
    E_MAX,
    LN2_Q,
    ND_MAX,
    RECIP,
    RECIP_BITS,
    RECIP_SHIFT,
    exp_int,
    softmax_int,
    softmax_row,
    sum_bits,
)
from rtl.softmax import (
    DIVIDER_CYCLES,
    DIVIDERS,
    FULL_RATE_WORDS,
    Divider,
    Softmax,
    max_stages,
    sm_banks,
    sm_output_cycles,
    sm_words,
)
from sim.nonlinear import recv_and_clear_error, row_beats, run_rows, run_timed, word_beats
from sim.streams import run_simulation, stream_send

# -- golden ----------------------------------------------------------------------------------

def test_golden_range_reduction_is_exact():
    nd = np.arange(ND_MAX + 1)
    assert np.array_equal((nd * RECIP) >> RECIP_SHIFT, nd // LN2_Q)


def test_golden_exp_hand_cases():
    # exp(0): (0 + 346)^2 + 62885 = 182601 -> 182601 * 0.3585 / 2**16 = 0.9989
    assert exp_int(0) == E_MAX == 182601
    # nd = 177 (x = -ln 2): z = 1, p = 0 -> E_MAX >> 1
    assert exp_int(177) == E_MAX >> 1
    assert exp_int(ND_MAX) == 0 and exp_int(10 ** 6) == 0


def test_golden_hand_rows():
    assert list(softmax_row([7])) == [255]                  # probability 1.0 saturates
    assert list(softmax_row([-5, -5, -5, -5])) == [64] * 4  # 0.25 * 256
    assert list(softmax_row([0, -32768])) == [255, 0]
    # ln 3 apart: 0.75 / 0.25 (integer exp ratio 182601 : 60899)
    assert list(softmax_row([round(np.log(3) * 256), 0])) == [192, 64]


def test_golden_vs_torch(rng):
    errs = []
    for n in (1, 8, 64, 197):
        for sd in (0.5, 2.0, 8.0):
            for _ in range(20):
                x = np.clip(np.round(rng.normal(0, sd, n) * 256), -32768, 32767).astype(int)
                ref = torch.softmax(torch.tensor(x / 256.0), 0).numpy() * 256
                errs.append(np.abs(softmax_row(x) - ref))
    err = np.concatenate(errs)
    report = (f"max {err.max():.3f} LSB, mean {err.mean():.3f} LSB, "
              f"{100 * (err <= 1).mean():.3f}% within 1 LSB")
    assert err.max() < 1.6, report
    assert (err <= 1).mean() >= 0.99, report


def test_golden_bad_inputs():
    with pytest.raises(ValueError, match=r"row length must be in the range \[1, 32\], not 33"):
        softmax_int(np.zeros((2, 33), int), max_tokens=32)
    with pytest.raises(ValueError, match=r"x values must be in the range \[-32768, 32767\]"):
        softmax_row([40000])
    with pytest.raises(ValueError, match=r"non-empty 1-D row"):
        softmax_row(np.zeros(0, int))


def test_rtl_bad_parameters():
    with pytest.raises(TypeError, match=r"cfg must be an AccelConfig, not 'tiny'"):
        Softmax("tiny")
    with pytest.raises(ValueError, match=r"max_tokens must be in the range \[1, 4096\], not 0"):
        AccelConfig(max_tokens=0)


# -- RTL vs golden -----------------------------------------------------------------------------

def _check(dut, rows, rng, stall=0.3):
    data, last = run_rows(dut, rows, rng, stall)
    assert data == [int(v) for r in rows for v in softmax_row(r)]
    assert last == [b["last"] for b in row_beats(rows)]


def _words(cfg, n):
    return -(-n // cfg.cols)


def _timed(cfg, rows):
    """Rows back to back, output always ready: (outputs, first and last word cycle per row)."""
    dut = Softmax(cfg)
    outs, stamps = run_timed(dut, word_beats(rows, cfg.cols),
                             read=lambda p: [int(p.data[k]) for k in range(int(p.count))],
                             max_cycles=5000)
    assert outs == [int(v) for r in rows for v in softmax_row(r)]
    spans, j = [], 0
    for r in rows:
        w = _words(cfg, len(r))
        spans.append((stamps[j], stamps[j + w - 1]))
        j += w
    return dut, spans


def test_rtl_random_rows(tiny, rng):
    dut = Softmax(tiny)
    rows = [rng.integers(-3000, 3000, size=n) for n in rng.integers(1, tiny.max_tokens + 1, 8)]
    _check(dut, rows, rng)


def test_rtl_edge_rows(tiny, rng):
    t = tiny.max_tokens
    one_hot = np.full(t, -32768)
    one_hot[5] = 32767
    ties = np.full(t - 3, -700)
    ties[[0, 9, t - 4]] = 2000                   # three tied maxima, in different words
    rows = [
        np.full(t, 1234),                        # all equal, max length
        one_hot,                                 # one dominant element, most negative others
        np.full(3, -32768),                      # most negative, all equal
        [32767],                                 # length 1
        [-32768],
        np.array([32767, -32768] * (t // 2)),    # extreme spread
        rng.integers(-32768, 32768, size=t),     # full range
        np.arange(t) * 30 - 500,                 # monotone
        ties,
        np.arange(tiny.cols + 1)[::-1] * -200,   # cols + 1: a last word of one element
        np.full(tiny.cols, -32768),              # one full word
    ]
    _check(dut := Softmax(tiny), rows, rng)
    assert dut.max_tokens == t and dut.lanes == tiny.cols


@pytest.mark.parametrize("cols", [1, 3, 8, 16])
def test_rtl_word_widths(tiny, rng, cols):
    """Other word widths (rows not a multiple of ``cols``, rows of one word and of many),
    random stalls on both streams."""
    cfg = tiny.replace(cols=cols)
    lengths = [1, cols, cols + 1, 2 * cols + 1, cfg.max_tokens, 17, 10, 5]
    rows = [rng.integers(-4000, 4000, size=n) for n in lengths if n <= cfg.max_tokens]
    rows.append(np.full(min(cols + 2, cfg.max_tokens), 77))
    _check(Softmax(cfg), rows, rng, stall=0.4)


def test_rtl_no_stalls_and_heavy_stalls(tiny, rng):
    rows = [rng.integers(-1500, 1500, size=n) for n in (32, 1, 2, 31, 16)]
    _check(Softmax(tiny), rows, rng, stall=0.0)
    _check(Softmax(tiny), rows, rng, stall=0.6)


@pytest.mark.parametrize("cols,max_tokens", [(4, 32), (3, 32)])
def test_rtl_overlong_row_raises_error(tiny, rng, cols, max_tokens):
    """A row of too many words, and (``max_tokens`` not a multiple of ``cols``) a row whose
    last word holds too many elements: ``error``, the row dropped, the next rows intact."""
    cfg = tiny.replace(cols=cols, max_tokens=max_tokens)
    t = cfg.max_tokens
    dut = Softmax(cfg)
    good1 = rng.integers(-500, 500, size=7)
    bad = rng.integers(-500, 500, size=t + 5)
    good2 = rng.integers(-500, 500, size=t)
    rows = [good1, bad, good2]
    if t % cols:
        rows += [rng.integers(-500, 500, size=t + 1), rng.integers(-500, 500, size=5)]
    beats = word_beats(rows, cols)
    good = [r for r in rows if len(r) <= t]
    expect = [int(v) for r in good for v in softmax_row(r)]

    async def send(ctx):
        assert not ctx.get(dut.error)
        await stream_send(ctx, dut.i, beats, rng=rng, stall=0.2)

    async def recv(ctx):
        return await recv_and_clear_error(ctx, dut, sum(_words(cfg, len(r)) for r in good),
                                          rng=rng, stall=0.2)

    _, (out, err, cleared) = run_simulation(dut, [send, recv], max_cycles=3000)
    assert out == expect          # the malformed rows are dropped, the next ones are intact
    assert err == 1 and cleared == 0


def test_rtl_latency_and_throughput(tiny, rng):
    n = tiny.max_tokens
    w = _words(tiny, n)
    dut, spans = _timed(tiny, [rng.integers(-1000, 1000, size=n) for _ in range(6)])
    # first output word: 2w + latency cycles after the first input handshake
    assert dut.latency == dut.max_stages + dut.sum_stages + DIVIDER_CYCLES + 12 == 30
    assert spans[0][0] == 2 * w + dut.latency
    # steady state: one word per cycle, no gaps between rows
    assert spans[-1][1] - spans[0][0] == 6 * w - 1


@pytest.mark.parametrize("cols,m,n", [
    (4, 17, 17), (4, 10, 10), (4, 1, 32), (4, 12, 13), (4, 20, 5), (4, 24, 1), (4, 20, 9),
    (1, 17, 17), (1, 10, 10), (3, 17, 17), (3, 9, 10), (8, 17, 17), (8, 10, 10),
    (8, 12, 32), (16, 17, 17), (16, 12, 3),
])
def test_rtl_output_cycles_exact(tiny, rng, cols, m, n):
    """Every row's first and last output word exactly at :func:`sm_output_cycles`; rows of
    at least ``FULL_RATE_WORDS`` words stream back to back at one word per cycle."""
    cfg = tiny.replace(cols=cols)
    rows = [rng.integers(-2000, 2000, size=n) for _ in range(m)]
    dut, spans = _timed(cfg, rows)
    w = _words(cfg, n)
    assert spans == sm_output_cycles(cfg, m, w)
    assert spans[0][0] == 2 * w + dut.latency
    if w >= FULL_RATE_WORDS:
        assert spans[-1][1] - spans[0][0] == m * w - 1


def test_rtl_sizing():
    """Dividers and row buffers cover rows of FULL_RATE_WORDS words: K dividers take a row
    each per DIVIDER_CYCLES, a row holds its buffer for 3 w + hold cycles."""
    assert (DIVIDER_CYCLES, DIVIDERS, FULL_RATE_WORDS) == (10, 4, 3)
    assert DIVIDERS * FULL_RATE_WORDS >= DIVIDER_CYCLES
    for cols, banks in ((1, 10), (4, 11), (8, 11), (16, 16)):
        cfg = AccelConfig(rows=4, cols=cols, max_tokens=32, max_dim=32, max_hidden=64)
        assert sm_banks(cfg) == banks and sm_words(cfg) == -(-32 // cols)
        assert max_stages(cfg) == 1 + (cols > 2) + (cols > 8)


def test_divider(rng):
    """floor(2**32 / sum) for sums from E_MAX to the largest row sum; one row per
    DIVIDER_CYCLES cycles, offered DIVIDER_CYCLES - 1 cycles after it is taken."""
    sw = sum_bits(197)
    dut = Divider(sw, data.StructLayout({"n": 8}))
    sums = [E_MAX, E_MAX + 1, 2 * E_MAX, (1 << sw) - 1, E_MAX * 197,
            *map(int, rng.integers(E_MAX, E_MAX * 197, 40))]

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        taken, offered, out = [], [], []
        cycle, k = 0, 0
        while len(out) < len(sums):
            ctx.set(dut.i.valid, k < len(sums))
            if k < len(sums):
                ctx.set(dut.i.payload, {"sum": sums[k], "tag": {"n": k}})
            took = k < len(sums) and ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid):
                out.append((int(ctx.get(dut.o.payload.factor)), int(ctx.get(dut.o.payload.tag.n))))
                offered.append(cycle)
            if took:
                taken.append(cycle)
                k += 1
            await ctx.tick()
            cycle += 1
        return taken, offered, out

    (taken, offered, out), = run_simulation(dut, [bench], max_cycles=2000)
    assert out == [((1 << RECIP_BITS) // s, j) for j, s in enumerate(sums)]
    assert [o - t for t, o in zip(taken, offered)] == [DIVIDER_CYCLES - 1] * len(sums)
    assert all(b - a == DIVIDER_CYCLES for a, b in zip(taken, taken[1:]))


def test_rtl_emits_verilog(tiny):
    from amaranth.back import verilog
    assert "module softmax" in verilog.convert(Softmax(tiny), name="softmax")


@pytest.mark.parametrize("max_tokens", [1, 3])
def test_rtl_tiny_max_tokens(tiny, rng, max_tokens):
    cfg = tiny.replace(max_tokens=max_tokens)
    rows = [rng.integers(-32768, 32768, size=n) for n in rng.integers(1, max_tokens + 1, 9)]
    _check(Softmax(cfg), rows, rng)
