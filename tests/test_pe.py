
import numpy as np
from amaranth.hdl import signed

from golden.gemm import gemm_acc
from rtl.pe import PE
from sim.streams import run_simulation


def _run_pe(cfg, beats):
    """beats: list of (a, b, valid, first, last); returns [(cycle, result)] at each done."""
    dut = PE(cfg)
    seen = []

    async def bench(ctx):
        done_cycles = []
        for cycle, (a, b, valid, first, last) in enumerate(beats + [(0, 0, 0, 0, 0)] * 3):
            ctx.set(dut.a_in, a)
            ctx.set(dut.b_in, b)
            ctx.set(dut.ctl_in, {"valid": valid, "first": first, "last": last})
            if done_cycles and done_cycles[-1] == cycle - 1:
                seen.append((cycle - 1, ctx.get(dut.result)))
            if ctx.get(dut.done):
                done_cycles.append(cycle)
            await ctx.tick()
            assert ctx.get(dut.a_out) == a and ctx.get(dut.b_out) == b  # 1-cycle pass-through
        return seen

    return run_simulation(dut, [bench], max_cycles=len(beats) + 10)[0]


def test_dot_products_with_bubbles_and_extremes(tiny, rng):
    a = rng.integers(-128, 128, 7)
    b = rng.integers(-128, 128, 7)
    a[:3], b[:3] = -128, -128                        # extreme products
    beats = []
    for i in range(7):
        beats.append((int(a[i]), int(b[i]), 1, i == 0, i == 6))
        if i % 3 == 1:
            beats.append((99, 99, 0, 1, 1))          # bubble: ignored
    beats += [(-128, 127, 1, 1, 1)]                  # length-1 product straight after
    seen = _run_pe(tiny, beats)
    assert [r for _, r in seen] == [int(gemm_acc(a[None], b[:, None])[0, 0]), -128 * 127]
    # done pulses PE.latency - 1 cycles after the last term; result visible one cycle later
    assert seen[0][0] == beats.index((int(a[6]), int(b[6]), 1, False, True)) + PE.latency - 1


def test_a_operand_is_one_bit_wider_than_an_activation(tiny):
    """Unsigned activations (zero-extended by the GEMM engine) reach the MAC unchanged:
    255 x -128 and 255 x 127 over a long dot product."""
    dut = PE(tiny)
    dut._MustUse__silence = True                     # never elaborated
    assert dut.a_in.shape() == dut.a_out.shape() == signed(tiny.act_width + 1)
    a = np.array([255] * 40 + [0, 1, 128, 254])
    b = np.array([-128] * 30 + [127] * 10 + [-128, 127, -1, 5])
    beats = [(int(a[i]), int(b[i]), 1, i == 0, i == len(a) - 1) for i in range(len(a))]
    beats += [(-256, -128, 1, 1, 1)]                 # the most negative A operand
    seen = _run_pe(tiny, beats)
    assert [r for _, r in seen] == [int(gemm_acc(a[None], b[:, None])[0, 0]), 32768]
