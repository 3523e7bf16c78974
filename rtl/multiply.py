"""Pipelined multipliers that map onto FPGA DSP blocks with their registers.

:func:`pipelined_multiply` builds ``a * b`` as

1. operand registers,
2. one product register per partial product,
3. (only when an operand is wider than one DSP input) a register for the sum of the partial
   products.

Operands wider than 18 bits are split into 17-bit limbs (the low limbs zero-extended, the top
limb keeping the operand's sign), so that every partial product is an 18 x 18 signed multiply:
one DSP block on ECP5 (MULT18X18D) and UltraScale+ (DSP48E2).

Where the platform provides ``registered_multiply(m, a, b, *, name) -> Value`` (a signed product
of operands of at most 18 bits, registered inside the DSP; see :mod:`platforms.ecp5`), stage 1
is that primitive's input registers. Some flows (Yosys for ECP5) do not move fabric registers
into DSP blocks, and a DSP fed from and feeding fabric registers is the slowest path of the
design. The latency is the same either way, so simulation (no platform) is cycle-exact with
the synthesized design.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Signal, Value, signed

__all__ = ["pipelined_multiply", "multiply_latency", "LIMB_BITS"]

LIMB_BITS = 17      # unsigned low limbs; with a zero sign bit they fill an 18-bit DSP input


def _limb_count(width: int, is_signed: bool) -> int:
    if (is_signed and width <= 18) or (not is_signed and width <= 17):
        return 1
    return -(-width // LIMB_BITS)


def multiply_latency(a_width: int, a_signed: bool, b_width: int, b_signed: bool) -> int:
    """Cycles from operands to product for :func:`pipelined_multiply` of these operand shapes."""
    split = _limb_count(a_width, a_signed) * _limb_count(b_width, b_signed) > 1
    return 3 if split else 2


def _limbs(value: Value):
    """``[(limb, offset)]`` with every limb a signed value of at most 18 bits."""
    shape = value.shape()
    count = _limb_count(shape.width, shape.signed)
    if count == 1:
        return [(value if shape.signed else Cat(value, Const(0, 1)).as_signed(), 0)]
    limbs = []
    for i in range(count):
        part = value[i * LIMB_BITS:(i + 1) * LIMB_BITS]
        if i == count - 1 and shape.signed:
            limbs.append((part.as_signed(), i * LIMB_BITS))
        else:
            limbs.append((Cat(part, Const(0, 1)).as_signed(), i * LIMB_BITS))
    return limbs


def pipelined_multiply(m, platform, a, b, *, name: str, domain: str = "sync"):
    """Return ``(product, latency)``: ``a * b`` (exact, signed) ``latency`` cycles after ``a``
    and ``b`` are presented (see the module docstring for the stages)."""
    a, b = Value.cast(a), Value.cast(b)
    width = len(a) + len(b) + 1
    multiply = getattr(platform, "registered_multiply", None)
    a_limbs, b_limbs = _limbs(a), _limbs(b)
    single = len(a_limbs) * len(b_limbs) == 1
    partials = []
    for i, (ai, ashift) in enumerate(a_limbs):
        for j, (bj, bshift) in enumerate(b_limbs):
            tag = name if single else f"{name}_{i}_{j}"
            if multiply is not None:
                raw = multiply(m, ai, bj, name=tag)
            else:
                a_reg = Signal(signed(len(ai)), name=f"{tag}_a")
                b_reg = Signal(signed(len(bj)), name=f"{tag}_b")
                m.d[domain] += [a_reg.eq(ai), b_reg.eq(bj)]
                raw = a_reg * b_reg
            p = Signal(signed(len(ai) + len(bj)), name=f"{tag}_p")
            m.d[domain] += p.eq(raw)
            partials.append((p, ashift + bshift))
    if len(partials) == 1:
        return partials[0][0], 2
    total = Signal(signed(width), name=f"{name}_sum")
    m.d[domain] += total.eq(sum((p << shift) if shift else p for p, shift in partials))
    return total, 3
