import numpy as np

from golden.gemm import gemm_acc
from rtl.systolic import SystolicArray
from sim.streams import run_simulation


def test_back_to_back_tiles_rows_and_latency(tiny, rng):
    """Tiles of different k stream through with minimum spacing; each row equals A @ B."""
    cfg = tiny
    R, C = cfg.rows, cfg.cols
    dut = SystolicArray(cfg)
    ks = [5, 1, 4, 9]
    tiles = [(rng.integers(-128, 128, (R, k)), rng.integers(-128, 128, (k, C))) for k in ks]
    period = max(R, C)
    schedule = []                                     # one entry per cycle
    for a, b in tiles:
        k = a.shape[1]
        # bubbles first, so that consecutive last beats are exactly max(k, period) apart
        schedule += [(np.zeros(R), np.zeros(C), 0, 0, 0)] * max(0, period - k)
        schedule += [(a[:, i], b[i], 1, i == 0, i == k - 1) for i in range(k)]
    last_cycles = [i for i, s in enumerate(schedule) if s[2] and s[4]]
    out = []

    async def drive(ctx):
        for a, b, valid, first, last in schedule + [(np.zeros(R), np.zeros(C), 0, 0, 0)] * 30:
            ctx.set(dut.a, [int(x) for x in a])
            ctx.set(dut.b, [int(x) for x in b])
            ctx.set(dut.ctl, {"valid": valid, "first": first, "last": last})
            await ctx.tick()

    async def collect(ctx):
        cycle = 0
        while len(out) < R * len(tiles):
            if ctx.get(dut.out_valid):
                out.append((cycle, ctx.get(dut.out_row), [int(x) for x in ctx.get(dut.out_data)]))
            await ctx.tick()
            cycle += 1

    run_simulation(dut, [drive, collect], max_cycles=len(schedule) + 60)
    for t, (a, b) in enumerate(tiles):
        rows = out[t * R:(t + 1) * R]
        assert [r for _, r, _ in rows] == list(range(R))
        assert np.array_equal(np.array([d for _, _, d in rows]), gemm_acc(a, b))
        assert rows[0][0] == last_cycles[t] + dut.latency
        assert [c for c, _, _ in rows] == list(range(rows[0][0], rows[0][0] + R))
