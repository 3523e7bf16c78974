"""Output-stationary systolic array of ``rows x cols`` PEs with skewed inputs and a row drain.

Every cycle the array takes one column of an activation tile (``a``: ``rows`` values, one per
output row) and one row of a weight tile (``b``: ``cols`` values, one per output column) for
the same reduction index ``k``, aligned; skew registers delay lane ``r`` of ``a`` by ``r``
cycles and lane ``c`` of ``b`` by ``c`` cycles so that PE ``(r, c)`` sees matching operands.
The :class:`~rtl.pe.Control` flags travel with ``a``. The ``a`` lanes are the PEs' A operand,
``act_width + 1`` bits signed (:func:`rtl.pe.a_operand_shape`): the array passes them through;
the GEMM engine sign- or zero-extends the stored activations into them.

When the ``last`` term of a tile reaches the end of PE row ``r``, that row of results is
complete; rows finish on consecutive cycles (``r = 0`` first), and the drain reads them out
through a one-hot row multiplexer, one row of ``cols`` accumulators per cycle.

Contract: consecutive tiles must be at least ``max(rows, cols)`` cycles apart (measured between
their ``last`` beats); otherwise two rows would finish in the same cycle or a result would be
overwritten before it is read. The GEMM engine enforces it. The array never stalls: beats with
``valid`` low are bubbles.
"""

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden.config import AccelConfig

from .pe import PE, Control, a_operand_shape

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """``rows x cols`` output-stationary MAC array (int9 x int8 at the presets).

    Latency: a tile whose ``last`` beat is presented in cycle ``t`` puts its row ``r`` on
    ``out_data`` in cycle ``t + latency + r`` with ``latency = cols + PE.latency``. Throughput: one
    reduction step (``rows * cols`` MACs) per cycle; one result row per cycle out.

    Members
    -------
    a : In(ArrayLayout(signed(act_width + 1), rows))
        Activation column for one ``k``, each lane an ``act_width``-bit activation already
        sign- or zero-extended by one bit.
    b : In(ArrayLayout(signed(weight_width), cols))
        Weight row for the same ``k``.
    ctl : In(Control)
        ``valid``/``first``/``last`` of this beat.
    out_valid : Out(1)
        ``out_data`` holds a finished row.
    out_row : Out(range(rows))
        Index of that row within its tile.
    out_data : Out(ArrayLayout(signed(acc_width), cols))
        The row of accumulators.
    """

    def __init__(self, cfg: AccelConfig):
        self._cfg = cfg
        super().__init__({
            "a": In(data.ArrayLayout(a_operand_shape(cfg), cfg.rows)),
            "b": In(data.ArrayLayout(signed(cfg.weight_width), cfg.cols)),
            "ctl": In(Control),
            "out_valid": Out(1),
            "out_row": Out(range(cfg.rows)),
            "out_data": Out(data.ArrayLayout(signed(cfg.acc_width), cfg.cols)),
        })

    @staticmethod
    def array_latency(cfg: AccelConfig) -> int:
        return cfg.cols + PE.latency

    @property
    def latency(self) -> int:
        return self.array_latency(self._cfg)

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        R, C = cfg.rows, cfg.cols

        pes = [[PE(cfg) for _ in range(C)] for _ in range(R)]
        for r in range(R):
            for c in range(C):
                m.submodules[f"pe_{r}_{c}"] = pes[r][c]

        # Skew: lane r of a (with the flags) is delayed r cycles, lane c of b is delayed c cycles.
        for r in range(R):
            a_val, a_ctl = self.a[r], self.ctl
            for i in range(r):
                a_next = Signal(a_operand_shape(cfg), name=f"a_skew_{r}_{i}")
                ctl_next = Signal(Control, name=f"ctl_skew_{r}_{i}")
                m.d.sync += [a_next.eq(a_val), ctl_next.eq(a_ctl)]
                a_val, a_ctl = a_next, ctl_next
            m.d.comb += [pes[r][0].a_in.eq(a_val), pes[r][0].ctl_in.eq(a_ctl)]
        for c in range(C):
            b_val = self.b[c]
            for i in range(c):
                b_next = Signal(signed(cfg.weight_width), name=f"b_skew_{c}_{i}")
                m.d.sync += b_next.eq(b_val)
                b_val = b_next
            m.d.comb += pes[0][c].b_in.eq(b_val)

        # Mesh connections.
        for r in range(R):
            for c in range(C):
                if c + 1 < C:
                    m.d.comb += [pes[r][c + 1].a_in.eq(pes[r][c].a_out),
                                 pes[r][c + 1].ctl_in.eq(pes[r][c].ctl_out)]
                if r + 1 < R:
                    m.d.comb += pes[r + 1][c].b_in.eq(pes[r][c].b_out)

        # Drain: row r is complete when its last PE finishes; results are visible a cycle later.
        row_done = Signal(R)
        m.d.sync += row_done.eq(Cat(pes[r][C - 1].done for r in range(R)))
        for c in range(C):
            column = 0
            for r in range(R):
                column = column | (pes[r][c].result & row_done[r].replicate(cfg.acc_width))
            m.d.sync += self.out_data[c].eq(column)
        row_index = 0
        for r in range(1, R):
            row_index = row_index | (row_done[r] * r)
        m.d.sync += [self.out_valid.eq(row_done.any()), self.out_row.eq(row_index)]
        return m
