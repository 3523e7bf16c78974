import numpy as np
import pytest
import torch

from golden.config import AccelConfig
from golden.softmax import (
    E_MAX,
    LN2_Q,
    ND_MAX,
    RECIP,
    RECIP_SHIFT,
    exp_int,
    softmax_int,
    softmax_row,
)
from rtl.softmax import Softmax
from sim.nonlinear import recv_and_clear_error, row_beats, run_rows, run_timed
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


def test_rtl_random_rows(tiny, rng):
    dut = Softmax(tiny)
    rows = [rng.integers(-3000, 3000, size=n) for n in rng.integers(1, tiny.max_tokens + 1, 8)]
    _check(dut, rows, rng)


def test_rtl_edge_rows(tiny, rng):
    t = tiny.max_tokens
    one_hot = np.full(t, -32768)
    one_hot[5] = 32767
    rows = [
        np.full(t, 1234),                        # all equal, max length
        one_hot,                                 # one dominant element, most negative others
        np.full(3, -32768),                      # most negative, all equal
        [32767],                                 # length 1
        [-32768],
        np.array([32767, -32768] * (t // 2)),    # extreme spread
        rng.integers(-32768, 32768, size=t),     # full range
        np.arange(t) * 30 - 500,                 # monotone
    ]
    _check(dut := Softmax(tiny), rows, rng)
    assert dut.max_tokens == t


def test_rtl_no_stalls_and_heavy_stalls(tiny, rng):
    rows = [rng.integers(-1500, 1500, size=n) for n in (32, 1, 2, 31, 16)]
    _check(Softmax(tiny), rows, rng, stall=0.0)
    _check(Softmax(tiny), rows, rng, stall=0.6)


def test_rtl_overlong_row_raises_error(tiny, rng):
    t = tiny.max_tokens
    dut = Softmax(tiny)
    good1 = rng.integers(-500, 500, size=7)
    bad = rng.integers(-500, 500, size=t + 5)
    good2 = rng.integers(-500, 500, size=t)
    beats = row_beats([good1, bad, good2])
    expect = [int(v) for r in (good1, good2) for v in softmax_row(r)]

    async def send(ctx):
        assert not ctx.get(dut.error)
        await stream_send(ctx, dut.i, beats, rng=rng, stall=0.2)

    async def recv(ctx):
        return await recv_and_clear_error(ctx, dut, len(expect), rng=rng, stall=0.2)

    _, (out, err, cleared) = run_simulation(dut, [send, recv], max_cycles=3000)
    assert out == expect          # the malformed row is dropped, the next one is intact
    assert err == 1 and cleared == 0


def test_rtl_latency_and_throughput(tiny, rng):
    dut = Softmax(tiny)
    n = tiny.max_tokens
    rows = [rng.integers(-1000, 1000, size=n) for _ in range(6)]
    beats = row_beats(rows)
    _, stamps = run_timed(dut, beats, max_cycles=2000)
    # first output: 2n + latency cycles after the first input handshake
    assert stamps[0] == 2 * n + dut.latency == 2 * n + 34
    # steady state: one element per cycle, no gaps between rows
    assert stamps[-1] - stamps[0] == len(beats) - 1


@pytest.mark.parametrize("n", [16, 17, 26])
def test_rtl_full_rate_from_16_elements(tiny, rng, n):
    """Six row buffers keep rows of 16+ elements back to back (a row holds its buffer for
    about 3n + 27 cycles)."""
    dut = Softmax(tiny)
    rows = [rng.integers(-1000, 1000, size=n) for _ in range(12)]
    beats = row_beats(rows)
    _, stamps = run_timed(dut, beats, max_cycles=3000)
    assert stamps[0] == 2 * n + dut.latency
    assert stamps[-1] - stamps[0] == len(beats) - 1


@pytest.mark.parametrize("n", [1, 5, 16])
def test_rtl_latency_short_rows(tiny, rng, n):
    dut = Softmax(tiny)
    rows = [rng.integers(-1000, 1000, size=n) for _ in range(4)]
    beats = row_beats(rows)
    _, stamps = run_timed(dut, beats, max_cycles=2000)
    assert stamps[0] == 2 * n + dut.latency
    # rows shorter than FACTOR_BITS + 1 are paced by the divider: one row per 16 cycles at most
    assert stamps[-1] - stamps[0] <= (len(rows) - 1) * max(n, 16) + n - 1


def test_rtl_emits_verilog(tiny):
    from amaranth.back import verilog
    assert "module softmax" in verilog.convert(Softmax(tiny), name="softmax")


@pytest.mark.parametrize("max_tokens", [1, 3])
def test_rtl_tiny_max_tokens(tiny, rng, max_tokens):
    cfg = tiny.replace(max_tokens=max_tokens)
    rows = [rng.integers(-32768, 32768, size=n) for n in rng.integers(1, max_tokens + 1, 9)]
    _check(Softmax(cfg), rows, rng)
