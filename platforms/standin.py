"""A stand-in design for the FPGA flows: an R x C systolic array of registered int8 MACs.

:class:`MacArray` is the arithmetic core of a GEMM engine and nothing else: an output-stationary
systolic array in which activations flow left to right, weights top to bottom, and each PE
multiply-accumulates the pair it holds into its own accumulator. Functionally it accumulates
outer products (``acc[r][c] += a[r] * b[c]``); inputs are skewed inside, so the ports take one
whole ``a`` and ``b`` vector per cycle. It has no control, buffers or streams, so its
place-and-route figures are an upper bound on the Fmax and a lower bound on the resources of an
engine built from the same MACs: the reference the engine's figures are read against
(``docs/fpga_flow.md``). It is used by the flow tests and by ``python -m platforms.report
--design mac``.

Each PE is operand registers (forwarded to the neighbours, so every register drives one
multiplier and one register: no broadcast) -> multiply -> product register -> accumulator, the
usual shape that lets synthesis map one multiply onto one DSP block (MULT18X18D on ECP5,
DSP48E2 on UltraScale+). With ``multiplier="mult18x18d"`` each multiplier's operand registers
are duplicated inside an instantiated ECP5 MULT18X18D (:func:`platforms.ecp5.mult18x18d`): same
latency and function, but the array can then only be synthesized for ECP5, not simulated.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MacArray"]


def _check(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in the range [{lo}, {hi}], not {value}")


class MacArray(wiring.Component):
    """``rows`` x ``cols`` systolic multiply-accumulate array (outer products).

    Each cycle with ``en`` high, ``acc[r*cols + c] += a[r] * b[c]`` (or ``= a[r] * b[c]`` when
    ``clear`` is also high), each PE doing its update ``r + c`` cycles after PE ``(0, 0)``.
    Accumulators wrap at ``acc_width`` bits.

    Parameters
    ----------
    rows, cols : int
        Array shape, each in the range [1, 64].
    act_width, weight_width : int
        Signed operand widths, in the range [2, 18].
    acc_width : int
        Accumulator width, in the range [act_width + weight_width, 64].
    multiplier : str
        ``"infer"`` (a ``*`` that synthesis maps) or ``"mult18x18d"`` (an ECP5 MULT18X18D
        instance with its input registers; synthesis only).

    Latency: ``3 + r + c`` cycles from ``a``/``b``/``en``/``clear`` to the updated
    ``acc[r*cols + c]`` (input skew ``r + c``, operand register, product register, accumulator);
    :attr:`latency` is that of the last PE, ``rows + cols + 1``. Throughput: one outer product
    per cycle. No stalls.

    Members
    -------
    a : In(ArrayLayout(signed(act_width), rows))
        Activations.
    b : In(ArrayLayout(signed(weight_width), cols))
        Weights.
    en : In(1)
        Accumulate this cycle's product.
    clear : In(1)
        With ``en``: start a new sum instead of adding to the old one.
    acc : Out(ArrayLayout(signed(acc_width), rows * cols))
        Accumulators, row-major.
    """

    def __init__(self, rows=4, cols=4, *, act_width=8, weight_width=8, acc_width=32,
                 multiplier="infer"):
        _check("rows", rows, 1, 64)
        _check("cols", cols, 1, 64)
        _check("act_width", act_width, 2, 18)
        _check("weight_width", weight_width, 2, 18)
        _check("acc_width", acc_width, act_width + weight_width, 64)
        if multiplier not in ("infer", "mult18x18d"):
            raise ValueError(f"multiplier must be 'infer' or 'mult18x18d', not {multiplier!r}")
        self.rows, self.cols = rows, cols
        self.multiplier = multiplier
        self.act_width, self.weight_width, self.acc_width = act_width, weight_width, acc_width
        super().__init__({
            "a": In(data.ArrayLayout(signed(act_width), rows)),
            "b": In(data.ArrayLayout(signed(weight_width), cols)),
            "en": In(1),
            "clear": In(1),
            "acc": Out(data.ArrayLayout(signed(acc_width), rows * cols)),
        })

    @classmethod
    def from_config(cls, cfg, **kwargs):
        """The MAC array of an :class:`~golden.config.AccelConfig`'s GEMM engine."""
        return cls(cfg.rows, cfg.cols, act_width=cfg.act_width, weight_width=cfg.weight_width,
                   acc_width=cfg.acc_width, **kwargs)

    @property
    def latency(self):
        return 3 + (self.rows - 1) + (self.cols - 1)

    def elaborate(self, platform):
        m = Module()
        if self.multiplier == "mult18x18d":
            from .ecp5 import mult18x18d

        def delayed(value, cycles, name):
            for k in range(cycles):
                reg = Signal.like(value, name=f"{name}_d{k}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        # Skew: row r of `a` (and its en/clear) by r cycles, column c of `b` by c cycles.
        ctrl_in = [delayed(Cat(self.en, self.clear), r, f"ctrl_skew_{r}")
                   for r in range(self.rows)]
        a_in = [delayed(self.a[r], r, f"a_skew_{r}") for r in range(self.rows)]
        b_in = [delayed(self.b[c], c, f"b_skew_{c}") for c in range(self.cols)]

        prod_shape = signed(self.act_width + self.weight_width)
        b_above = b_in
        for r in range(self.rows):
            a_left, ctrl_left = a_in[r], ctrl_in[r]
            for c in range(self.cols):
                a_pe = Signal(signed(self.act_width), name=f"a_{r}_{c}")
                b_pe = Signal(signed(self.weight_width), name=f"b_{r}_{c}")
                ctrl_pe = Signal(2, name=f"ctrl_{r}_{c}")
                ctrl_q = Signal(2, name=f"ctrl_q_{r}_{c}")
                prod = Signal(prod_shape, name=f"prod_{r}_{c}")
                m.d.sync += [a_pe.eq(a_left), b_pe.eq(b_above[c]), ctrl_pe.eq(ctrl_left),
                             ctrl_q.eq(ctrl_pe)]
                if self.multiplier == "infer":
                    m.d.sync += prod.eq(a_pe * b_pe)
                else:
                    # The DSP's input registers load what a_pe/b_pe load: same timing.
                    p = mult18x18d(m, a_left, b_above[c], name=f"dsp_{r}_{c}")
                    m.d.sync += prod.eq(p[:len(prod)])
                acc = self.acc[r * self.cols + c]
                with m.If(ctrl_q[0]):
                    with m.If(ctrl_q[1]):
                        m.d.sync += acc.eq(prod)
                    with m.Else():
                        m.d.sync += acc.eq(acc + prod)
                a_left, ctrl_left = a_pe, ctrl_pe
                b_above = b_above[:c] + [b_pe] + b_above[c + 1:]
        return m
