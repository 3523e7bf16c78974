"""External memory model for the accelerator's memory port (``rtl.ports.mem_port_signature``).

:class:`MemoryModel` serves read and write bursts from a ``bytearray`` in simulation, the way
an AXI memory with several outstanding transactions does:

* a read command is accepted every cycle (up to ``outstanding`` waiting bursts); the first
  beat of a burst is offered ``latency`` cycles after its command's handshake, or right after
  the previous burst's last beat if that is later, so the latency of one burst overlaps the
  beats of the ones before it;
* write commands are accepted likewise; the data beats of each burst are taken in command
  order, and a ``wresp`` beat follows each burst's last data beat (responses do not hold up
  the next burst's data).

Random stalls (``rng``, ``stall``: probability per cycle) de-assert ``ready``/``valid`` on every
channel. The model checks the protocol: a burst outside the memory, or a write burst whose
``last`` is misplaced, fails the simulation with :class:`MemoryProtocolError`.
"""

from __future__ import annotations

__all__ = ["MemoryModel", "MemoryProtocolError"]


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
        Cycles from a read command's handshake to its first data beat (at least 1).
    rng, stall : random stalls (probability per cycle) on every channel; ``None``/0: none.
    outstanding : int
        Read (and write) commands accepted before their data has started.

    Members
    -------
    reads, writes : int
        Bursts served. ``read_bytes``, ``write_bytes``: bytes moved.
    """

    def __init__(self, port, beat_bytes: int, memory: bytearray, *, latency: int = 2,
                 rng=None, stall: float = 0.0, outstanding: int = 8):
        self.port, self.B, self.mem = port, beat_bytes, memory
        self.latency, self.rng, self.stall = max(1, latency), rng, stall
        self.outstanding = outstanding
        self.reads = self.writes = self.read_bytes = self.write_bytes = 0

    def _stalled(self) -> bool:
        return self.rng is not None and self.stall > 0 and self.rng.random() < self.stall

    def _check(self, kind, addr, size):
        if size < 1 or addr + size > len(self.mem):
            raise MemoryProtocolError(f"{kind} burst [0x{addr:x}, 0x{addr + size:x}) outside "
                                      f"memory of {len(self.mem)} bytes")

    def processes(self):
        """The background testbenches to add to a simulation."""
        self._rq, self._wq, self._bq = [], [], []
        return [self._read_cmds, self._read_beats, self._write_cmds, self._write_beats,
                self._write_resps]

    async def _read_cmds(self, ctx):
        rcmd, t = self.port.rcmd, 0
        while True:
            ready = len(self._rq) < self.outstanding and not self._stalled()
            ctx.set(rcmd.ready, ready)
            _, _, valid, cmd = await ctx.tick().sample(rcmd.valid, rcmd.payload)
            t += 1
            if valid and ready:
                addr, size = int(cmd.addr), int(cmd.bytes)
                self._check("read", addr, size)
                self._rq.append((t + self.latency - 1, addr, size))

    async def _read_beats(self, ctx):
        B, rd, t = self.B, self.port.rdata, 0
        while True:
            if not self._rq or self._rq[0][0] > t:
                await ctx.tick()
                t += 1
                continue
            _, addr, size = self._rq.pop(0)
            self.reads += 1
            self.read_bytes += size
            beats = -(-size // B)
            for i in range(beats):
                while self._stalled():
                    ctx.set(rd.valid, 0)
                    await ctx.tick()
                    t += 1
                chunk = bytes(self.mem[addr + i * B:addr + min(size, (i + 1) * B)])
                ctx.set(rd.valid, 1)
                ctx.set(rd.payload, {"data": int.from_bytes(chunk, "little"),
                                     "last": int(i == beats - 1)})
                while True:
                    _, _, ready = await ctx.tick().sample(rd.ready)
                    t += 1
                    if ready:
                        break
            ctx.set(rd.valid, 0)

    async def _write_cmds(self, ctx):
        wcmd = self.port.wcmd
        while True:
            ready = len(self._wq) < self.outstanding and not self._stalled()
            ctx.set(wcmd.ready, ready)
            _, _, valid, cmd = await ctx.tick().sample(wcmd.valid, wcmd.payload)
            if valid and ready:
                addr, size = int(cmd.addr), int(cmd.bytes)
                self._check("write", addr, size)
                self._wq.append([addr, size, 0])

    async def _write_beats(self, ctx):
        B, wd = self.B, self.port.wdata
        while True:
            ready = bool(self._wq) and not self._stalled()
            ctx.set(wd.ready, ready)
            _, _, valid, beat = await ctx.tick().sample(wd.valid, wd.payload)
            if not (valid and ready):
                continue
            burst = self._wq[0]
            addr, size, off = burst
            n = min(B, size - off)
            if int(beat.last) != int(off + n == size):
                raise MemoryProtocolError(f"write burst of {size} bytes at 0x{addr:x}: "
                                          f"last={int(beat.last)} on the beat at offset {off}")
            self.mem[addr + off:addr + off + n] = int(beat.data).to_bytes(B, "little")[:n]
            burst[2] = off + n
            if off + n == size:
                self._wq.pop(0)
                self.writes += 1
                self.write_bytes += size
                self._bq.append(1)

    async def _write_resps(self, ctx):
        wr = self.port.wresp
        while True:
            if not self._bq or self._stalled():
                ctx.set(wr.valid, 0)
                await ctx.tick()
                continue
            self._bq.pop(0)
            ctx.set(wr.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(wr.ready)
                if ready:
                    break
            ctx.set(wr.valid, 0)
