"""A stand-in design for the FPGA flows: an R x C array of registered int8 MACs.

:class:`MacArray` is the arithmetic core of a GEMM engine and nothing else: an outer-product
multiply-accumulate of an ``rows``-vector of activations and a ``cols``-vector of weights into
``rows * cols`` accumulators, fully pipelined. It has no control, buffers or streams, so its
place-and-route figures are an upper bound on the Fmax and a lower bound on the resources of any
engine built from the same MACs: the reference the engine's figures are read against
(``docs/fpga_flow.md``). It is used by the flow tests and by ``python -m platforms.report
--design mac``.

The multiplier operands and product are registered (``a``/``b`` -> register -> multiply ->
register -> accumulate), the usual shape that lets synthesis map one multiply onto one DSP
block (MULT18X18D on ECP5, DSP48E2 on UltraScale+). With ``multiplier="mult18x18d"`` the operand
registers move into an instantiated ECP5 MULT18X18D (:func:`platforms.ecp5.mult18x18d`): same
latency and function, but the array can then only be synthesized for ECP5, not simulated.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MacArray"]


def _check(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in the range [{lo}, {hi}], not {value}")


class MacArray(wiring.Component):
    """``rows`` x ``cols`` registered multiply-accumulate array (outer product).

    Each cycle with ``en`` high, ``acc[r*cols + c] += a[r] * b[c]`` (or ``= a[r] * b[c]`` when
    ``clear`` is also high). Accumulators wrap at ``acc_width`` bits.

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

    Latency: 3 cycles from ``a``/``b``/``en``/``clear`` to the updated ``acc`` (operand register,
    product register, accumulator). Throughput: one outer product per cycle. No stalls.

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
        return 3

    def elaborate(self, platform):
        m = Module()
        en_q = Signal(2, name="en_q")
        clear_q = Signal(2, name="clear_q")
        m.d.sync += [en_q.eq((en_q << 1) | self.en), clear_q.eq((clear_q << 1) | self.clear)]
        if self.multiplier == "infer":
            a_q = Signal.like(self.a, name="a_q")
            b_q = Signal.like(self.b, name="b_q")
            m.d.sync += [a_q.eq(self.a), b_q.eq(self.b)]
        else:
            from .ecp5 import mult18x18d
        for r in range(self.rows):
            for c in range(self.cols):
                i = r * self.cols + c
                prod = Signal(signed(self.act_width + self.weight_width), name=f"prod_{r}_{c}")
                if self.multiplier == "infer":
                    m.d.sync += prod.eq(a_q[r] * b_q[c])
                else:
                    p = mult18x18d(m, self.a[r], self.b[c], name=f"dsp_{r}_{c}")
                    m.d.sync += prod.eq(p[:len(prod)])
                acc = self.acc[i]
                with m.If(en_q[1]):
                    with m.If(clear_q[1]):
                        m.d.sync += acc.eq(prod)
                    with m.Else():
                        m.d.sync += acc.eq(acc + prod)
        return m
