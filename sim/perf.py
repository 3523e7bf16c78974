"""Analytic performance model of the accelerator's units.

Each function predicts the cycles the RTL takes for one operation when no stream stalls, from
the same configuration; the tests check the predictions against simulation exactly, so the
model can estimate full-size models without simulating every cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from golden.config import AccelConfig
from rtl.gemm import engine_latency

__all__ = ["GemmCycles", "gemm_cycles", "ceil_div"]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class GemmCycles:
    setup: int         # command validation
    load: int          # weights + epilogue parameters (or first activation tile row)
    compute: int       # first to last reduction step issued to the array
    drain: int         # last step issued -> last output row accepted
    total: int         # busy cycles counted by the engine
    ideal: float       # useful MACs / PEs

    @property
    def utilization(self) -> float:
        return self.ideal / self.total


def gemm_cycles(cfg: AccelConfig, m: int, k: int, n: int, load_weights: bool = True
                ) -> GemmCycles:
    """Busy cycles of one :class:`rtl.gemm.GemmEngine` command with every stream ready.

    A recurrence over tiles, cycle-exact for the RTL (the command is accepted in cycle 0):

    * validation ends in cycle ``S = nt + 1``; weight and parameter beats follow
      (``k*nt + nt`` of them), activation tile rows load into the two buffer halves, tile row
      ``i`` once the half it reuses has been released by tile row ``i - 2``;
    * a tile issues ``k`` reduction steps on consecutive cycles, its last one at least
      ``max(rows, cols)`` cycles after the previous tile's; a tile row starts the cycle after
      the previous one if its activations are loaded, else one cycle after they are;
    * the last output row leaves ``latency + rows_in_last_tile - 1`` cycles after the last step.

    In steady state this is ``mt * nt * max(k, rows, cols)`` compute cycles.
    """
    R, C = cfg.rows, cfg.cols
    mt, nt = ceil_div(m, R), ceil_div(n, C)
    period = max(R, C)
    S = nt + 1
    w_ready = S + 1 + ((k * nt + nt) if load_weights else 0)
    load_begin, avail, release = [], [], []
    last = None
    first_issue = None
    for i in range(mt):
        begin = S + 1 if i == 0 else load_begin[-1] + k
        if i >= 2:
            begin = max(begin, release[i - 2] + 1)
        load_begin.append(begin)
        avail.append(begin + k)
        if i == 0:
            start = max(w_ready, avail[0]) + 1
            first_issue = start
        elif avail[i] <= last:
            start = last + 1
        else:
            start = max(last + 1, avail[i]) + 1
        for t in range(nt):
            first = start if t == 0 else last + 1
            last = first + k - 1 if last is None else max(first + k - 1, last + period)
        release.append(last)
    rows_last = m - (mt - 1) * R
    end = last + engine_latency(cfg) + rows_last - 1
    return GemmCycles(setup=S, load=first_issue - S - 1, compute=last - first_issue + 1,
                      drain=end - last, total=end, ideal=m * k * n / cfg.pes)
