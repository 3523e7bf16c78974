"""External memory model for the accelerator's memory port (``rtl.ports.mem_port_signature``).

:class:`MemoryModel` serves read and write bursts from a ``bytearray`` in simulation, with a
fixed first-beat latency and random stalls on every channel (drawn from a seeded
``numpy.random.Generator``). It checks the port protocol: a burst outside the memory, a write
burst with the wrong number of beats or a misplaced ``last`` fail the simulation with
:class:`MemoryProtocolError`.
"""

from __future__ import annotations

__all__ = ["MemoryModel", "MemoryProtocolError"]


async def _get(ctx, s):
    # Plain tick loop (no ``until``): background processes end mid-wait without warnings.
    ctx.set(s.ready, 1)
    while True:
        _, _, valid, payload = await ctx.tick().sample(s.valid, s.payload)
        if valid:
            ctx.set(s.ready, 0)
            return payload


async def _put(ctx, s, payload):
    ctx.set(s.valid, 1)
    ctx.set(s.payload, payload)
    while True:
        _, _, ready = await ctx.tick().sample(s.ready)
        if ready:
            ctx.set(s.valid, 0)
            return


class MemoryProtocolError(AssertionError):
    """The accelerator broke the memory-port protocol."""


class MemoryModel:
    """A byte-addressed memory behind ``port`` (the accelerator's ``mem`` interface).

    Parameters
    ----------
    port : the accelerator-side interface of ``mem_port_signature(cfg)``
    beat_bytes : int
        ``rtl.ports.mem_beat_bytes(cfg)``.
    memory : bytearray
        Contents; written in place by write bursts.
    latency : int
        Cycles from a read command to its first data beat (at least 1).
    rng, stall : random stalls (probability per cycle) on every channel; ``None``/0: none.

    Members
    -------
    reads, writes : int
        Read and write bursts served. ``read_bytes``, ``write_bytes``: bytes moved.
    """

    def __init__(self, port, beat_bytes: int, memory: bytearray, *, latency: int = 2,
                 rng=None, stall: float = 0.0):
        self.port, self.B, self.mem = port, beat_bytes, memory
        self.latency, self.rng, self.stall = max(1, latency), rng, stall
        self.reads = self.writes = self.read_bytes = self.write_bytes = 0

    async def _idle(self, ctx):
        if self.rng is None or self.stall <= 0:
            return
        while self.rng.random() < self.stall:
            await ctx.tick()

    def _check(self, kind, addr, size):
        if size < 1 or addr + size > len(self.mem):
            raise MemoryProtocolError(f"{kind} burst [0x{addr:x}, 0x{addr + size:x}) outside "
                                      f"memory of {len(self.mem)} bytes")

    async def serve_reads(self, ctx):
        """Background testbench: answer read bursts forever."""
        B = self.B
        while True:
            await self._idle(ctx)
            cmd = await _get(ctx, self.port.rcmd)
            addr, size = int(cmd.addr), int(cmd.bytes)
            self._check("read", addr, size)
            self.reads += 1
            self.read_bytes += size
            if self.latency > 1:
                await ctx.tick().repeat(self.latency - 1)
            beats = -(-size // B)
            for i in range(beats):
                chunk = bytes(self.mem[addr + i * B:addr + min(size, (i + 1) * B)])
                await self._idle(ctx)
                await _put(ctx, self.port.rdata, {
                    "data": int.from_bytes(chunk, "little"), "last": int(i == beats - 1)})

    async def serve_writes(self, ctx):
        """Background testbench: accept write bursts forever."""
        B = self.B
        while True:
            await self._idle(ctx)
            cmd = await _get(ctx, self.port.wcmd)
            addr, size = int(cmd.addr), int(cmd.bytes)
            self._check("write", addr, size)
            beats = -(-size // B)
            for i in range(beats):
                await self._idle(ctx)
                beat = await _get(ctx, self.port.wdata)
                if int(beat.last) != int(i == beats - 1):
                    raise MemoryProtocolError(f"write burst of {size} bytes at 0x{addr:x}: "
                                              f"last={int(beat.last)} on beat {i} of {beats}")
                n = min(B, size - i * B)
                self.mem[addr + i * B:addr + i * B + n] = \
                    int(beat.data).to_bytes(B, "little")[:n]
            self.writes += 1
            self.write_bytes += size
            await self._idle(ctx)
            await _put(ctx, self.port.wresp, 0)

    def processes(self):
        """The two background testbenches to add to a simulation."""
        return [self.serve_reads, self.serve_writes]
