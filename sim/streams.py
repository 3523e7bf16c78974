"""Testbench helpers: drive and read ``amaranth.lib.stream`` interfaces with random stalls.

All helpers are ``async`` functions for ``Simulator.add_testbench``. Stalls are drawn from a
``numpy.random.Generator`` so that every test is reproducible from its seed:

* :func:`stream_send` keeps ``valid`` low for a random number of cycles before each beat
  (probability ``stall`` per cycle), and never lets ``valid`` depend on ``ready``.
* :func:`stream_recv` keeps ``ready`` low likewise, so the producer sees back-pressure.

:func:`run_simulation` runs a design with testbenches under a cycle budget: a design that hangs
fails with :class:`SimulationTimeout` instead of spinning forever.
"""

from __future__ import annotations

from amaranth.lib import data
from amaranth.sim import Simulator

__all__ = ["stream_send", "stream_recv", "stream_put", "stream_get", "run_simulation",
           "SimulationTimeout", "CLOCK_PERIOD"]

CLOCK_PERIOD = 1e-8  # 100 MHz: simulated time only; cycles are what the project reports


class SimulationTimeout(AssertionError):
    """A testbench did not complete within its cycle budget (a hang)."""


def _as_payload(value):
    """Convert a Const view (or plain int) read from the simulator into Python values.

    Array layouts become lists, struct layouts dicts of their fields.
    """
    if isinstance(value, int):
        return value
    if isinstance(value, data.Const) and isinstance(value.shape(), data.StructLayout):
        return {name: _as_payload(value[name]) for name, _ in value.shape()}
    try:
        return [_as_payload(v) for v in value]
    except TypeError:
        return value


async def stream_put(ctx, stream, payload):
    """Send one beat; returns in the cycle after the handshake."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream):
    """Receive one beat and return its payload (lists for array layouts)."""
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


async def _idle(ctx, rng, stall):
    if rng is None or stall <= 0:
        return
    while rng.random() < stall:
        await ctx.tick()


async def stream_send(ctx, stream, beats, *, rng=None, stall=0.0):
    """Send every payload in ``beats`` in order, idling randomly before each (``valid`` low)."""
    for beat in beats:
        await _idle(ctx, rng, stall)
        await stream_put(ctx, stream, beat)


async def stream_recv(ctx, stream, count, *, rng=None, stall=0.0, convert=True):
    """Receive ``count`` beats, de-asserting ``ready`` randomly before each. Returns a list."""
    out = []
    for _ in range(count):
        await _idle(ctx, rng, stall)
        payload = await stream_get(ctx, stream)
        out.append(_as_payload(payload) if convert else payload)
    return out


def run_simulation(dut, testbenches, *, max_cycles: int, vcd: str | None = None,
                   background=()):
    """Simulate ``dut`` with the given async testbenches, at most ``max_cycles`` cycles.

    Each testbench is an ``async def bench(ctx)``; their return values are returned as a list.
    Raises :class:`SimulationTimeout` if any of them has not finished within the budget.
    ``background`` testbenches (e.g. :class:`sim.memory.MemoryModel` servers) run alongside
    and do not keep the simulation alive.
    """
    sim = Simulator(dut)
    try:
        sim.add_clock(CLOCK_PERIOD)
    except NameError:      # a purely combinational design has no sync domain: no clock
        pass
    results = [None] * len(testbenches)
    done = [False] * len(testbenches)

    def wrap(i, bench):
        async def runner(ctx):
            results[i] = await bench(ctx)
            done[i] = True
        return runner

    for i, bench in enumerate(testbenches):
        sim.add_testbench(wrap(i, bench))

    async def watchdog(ctx):
        await ctx.delay((max_cycles + 0.5) * CLOCK_PERIOD)
        pending = [i for i, d in enumerate(done) if not d]
        raise SimulationTimeout(f"testbench(es) {pending} did not finish within {max_cycles} "
                                f"cycles")

    for bench in background:
        sim.add_testbench(bench, background=True)
    sim.add_testbench(watchdog, background=True)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return results
