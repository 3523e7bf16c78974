"""Row buffers of the row-wise units: a ring of banks filled from a ``last``-framed stream.

:class:`rtl.softmax.Softmax` and :class:`rtl.layernorm.LayerNorm` both need a whole row before
their first output, so each keeps ``banks`` row buffers of ``max_len`` words in one memory (bank
``b``, beat ``j`` at word ``b * max_len + j``) and lets a loader, the engines that reduce a
row and the emitter work on different banks at once. :func:`row_loader` is that loader, shared
so that both units frame rows, count free banks and reject malformed rows the same way:

* each accepted beat is written to the current bank at its position in the row; the beat with
  ``last`` closes the row (:attr:`RowLoader.row_end`) and moves on to the next bank;
* ``i.ready`` is high while a bank is free (an occupancy counter: up on ``row_end``, down on
  the parent's :attr:`RowLoader.row_freed`), or while a malformed row is being discarded;
* a row longer than ``max_len`` is malformed: the sticky ``error`` output is set (cleared by
  ``error_clear``; a new error wins over a clear in the same cycle), the beats up to and
  including the next ``last`` are accepted and dropped, and nothing is handed on for that row.

A beat is one memory word of ``cols`` elements (both units are word-wide); rows end with a
partly used word. Such a unit passes ``last_over``,
true when a row's last beat at the last word position holds more elements than the row may
still take; that row is malformed too.

:func:`row_reader` is the other side, used by every engine that walks a loaded row again (the
softmax summer and emitter, the LayerNorm emitter): it takes a row descriptor (its length and
statistics) from the previous engine's FIFO, reads the row's words from its bank one per
enabled cycle, and takes the next descriptor in the cycle of the last read, so rows follow each
other with no gap. Each reader visits the banks in the same ring order as the loader.

The per-row statistics a unit gathers while loading (the maximum; the sums of ``x`` and
``x*x``) stay in the unit: the loader only says which beat starts a row (:attr:`RowLoader.first`),
which beats continue it (:attr:`RowLoader.advance`) and which one ends it.

Trade-off: functions that add the loader and the readers to the parent's module, rather than
components of their own, let the parent keep the memory (one write port, a read port per
reader) and the ``error`` output in its own signature, with no extra registers on the input
path or between a reader and the engine's pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Mux, Signal, Value
from amaranth.utils import ceil_log2

__all__ = ["RowLoader", "RowReader", "WordStage", "delay", "next_bank", "pipelined_tree",
           "row_loader", "row_reader", "word_row_loader"]


def next_bank(bank, banks: int) -> Value:
    """The bank after ``bank`` in a ring of ``banks`` (a plain increment for powers of two)."""
    if banks & (banks - 1) == 0:
        return (bank + 1)[:len(bank)]
    return Mux(bank == banks - 1, 0, bank + 1)


@dataclass(frozen=True, eq=False)
class RowLoader:
    """Signals of a :func:`row_loader`.

    Members
    -------
    bank : Signal
        Bank being filled.
    idx : Signal
        Position of the current beat (word) in its row (0 for the first).
    length : Value
        ``idx + 1``: the row length when the current beat ends the row.
    first : Value
        The current beat starts a row (``idx == 0``).
    advance : Signal
        Comb: the current beat is stored and the row goes on (update running statistics).
    row_end : Signal
        Comb: the current beat is stored and closes the row (hand on the row descriptor).
    row_freed : Signal
        Driven by the parent: a bank is released this cycle.
    """

    bank: Signal
    idx: Signal
    length: Value
    first: Value
    advance: Signal
    row_end: Signal
    row_freed: Signal


def row_loader(m, i, wr, *, banks: int, max_len: int, error, error_clear, last_over=None,
               prefix: str = "l") -> RowLoader:
    """Add a row loader to module ``m``.

    Parameters
    ----------
    m : Module
    i : stream interface
        Input stream whose payload has ``data`` and ``last`` fields; the loader drives
        ``i.ready``.
    wr : memory write port
        Port of the row memory (``banks * max_len`` words); the loader drives all of it.
    banks, max_len : int
        Number of row buffers and the longest row.
    error, error_clear : Signal
        The parent's sticky ``error`` output (driven here) and its clear input.
    last_over : Value or None
        Optional: the current beat, if it is a row's last at word ``max_len - 1``, holds too
        many elements (the row is dropped with ``error``, as a row of too many beats).
    prefix : str
        Prefix of the loader's signal names.

    Latency: a beat is written in the cycle of its handshake; ``row_end`` is asserted in that
    cycle. Throughput: one beat per cycle while a bank is free. Stalls: ``i.ready`` is low
    while all banks are occupied (never while discarding a malformed row).
    """
    occupied = Signal(range(banks + 1), name=f"{prefix}_occupied")
    row_end = Signal(name=f"{prefix}_row_end")
    row_freed = Signal(name=f"{prefix}_row_freed")
    m.d.sync += occupied.eq(occupied + row_end - row_freed)

    bank = Signal(max(1, ceil_log2(banks)), name=f"{prefix}_bank")
    idx = Signal(ceil_log2(max_len + 1), name=f"{prefix}_idx")
    discard = Signal(name=f"{prefix}_discard")
    advance = Signal(name=f"{prefix}_advance")
    beat = i.payload
    m.d.comb += [
        i.ready.eq(discard | (occupied < banks)),
        wr.addr.eq(bank * max_len + idx),
        wr.data.eq(beat.data),
    ]
    with m.If(error_clear):
        m.d.sync += error.eq(0)
    with m.If(i.valid & i.ready):
        with m.If(discard), m.If(beat.last):
            m.d.sync += discard.eq(0)
        if last_over is not None:
            with m.Elif(beat.last & (idx == max_len - 1) & last_over):
                m.d.sync += [error.eq(1), idx.eq(0)]
        with m.Elif(beat.last):
            m.d.comb += [wr.en.eq(1), row_end.eq(1)]
            m.d.sync += [idx.eq(0), bank.eq(next_bank(bank, banks))]
        with m.Elif(idx == max_len - 1):
            # the row is longer than max_len: drop it
            m.d.sync += [error.eq(1), discard.eq(1), idx.eq(0)]
        with m.Else():
            m.d.comb += [wr.en.eq(1), advance.eq(1)]
            m.d.sync += idx.eq(idx + 1)
    return RowLoader(bank=bank, idx=idx, length=idx + 1, first=idx == 0, advance=advance,
                     row_end=row_end, row_freed=row_freed)


def pipelined_tree(m, values, op, name):
    """``values`` reduced by ``op`` (e.g. ``+``, a maximum) as a binary tree with a register
    after every second level (the last level included when it is a second one). Returns
    ``(result, registers on the path)``."""
    level, regs = 0, 0
    while len(values) > 1:
        values = [op(values[j], values[j + 1]) if j + 1 < len(values) else values[j]
                  for j in range(0, len(values), 2)]
        level += 1
        if level % 2 == 0:
            staged = []
            for j, v in enumerate(values):
                r = Signal(v.shape(), name=f"{name}_t{level}_{j}")
                m.d.sync += r.eq(v)
                staged.append(r)
            values, regs = staged, regs + 1
    return values[0], regs


def delay(m, value, n, name):
    """``value`` through ``n`` registers (named ``name_0`` ..)."""
    for j in range(n):
        r = Signal.like(value, name=f"{name}_{j}")
        m.d.sync += r.eq(value)
        value = r
    return value


@dataclass(frozen=True, eq=False)
class WordStage:
    """The first stage behind a :func:`word_row_loader`, registered from the loaded beat.

    Members
    -------
    valid, first, end : Signal
        A word was loaded (or a row ended), it was a row's first word, it ended its row.
    x : list of Signal
        The word's lanes, those past ``count`` on a row's last word replaced by the pad value.
    """

    valid: Signal
    first: Signal
    end: Signal
    x: list


def word_row_loader(m, i, wr, *, banks: int, lanes: int, words: int, max_elems: int, error,
                    error_clear, shape, pad: int, prefix: str):
    """A :func:`row_loader` for beats of ``lanes`` elements (payload ``data``, ``count`` -- the
    elements of a row's last word -- and ``last``), rows of at most ``max_elems`` elements in
    ``words`` words, and the first, always-advancing stage behind it (:class:`WordStage`, its
    lanes of ``shape`` with ``pad`` past ``count``). Returns ``(loader, stage)``."""
    beat = i.payload
    last_over = None
    if max_elems % lanes:
        last_over = beat.count > max_elems - (words - 1) * lanes
    loader = row_loader(m, i, wr, banks=banks, max_len=words, error=error,
                        error_clear=error_clear, last_over=last_over)
    stage = WordStage(valid=Signal(name=f"{prefix}_a_valid"),
                      first=Signal(name=f"{prefix}_a_first"),
                      end=Signal(name=f"{prefix}_a_end"),
                      x=[Signal(shape, name=f"{prefix}_a_x{k}") for k in range(lanes)])
    m.d.sync += [stage.valid.eq(loader.advance | loader.row_end),
                 stage.first.eq(loader.first), stage.end.eq(loader.row_end)]
    for k in range(lanes):
        m.d.sync += stage.x[k].eq(Mux(~beat.last | (beat.count > k), beat.data[k], pad))
    return loader, stage


@dataclass(frozen=True, eq=False)
class RowReader:
    """Signals of a :func:`row_reader`.

    Members
    -------
    active : Signal
        A row is being read.
    bank, idx : Signal
        Bank and word of the read issued this cycle (if ``issue``).
    desc : Signal
        Descriptor of the row being read.
    issue : Signal
        Comb: a read is issued this cycle (its data is on the port in the next cycle).
    last : Signal
        Comb: ``idx`` is the row's last word.
    pop : Signal
        Comb: the next descriptor is taken from the FIFO this cycle.
    """

    active: Signal
    bank: Signal
    idx: Signal
    desc: Signal
    issue: Signal
    last: Signal
    pop: Signal


def row_reader(m, q, rd, desc_layout, *, banks: int, max_len: int, en=1, row_freed=None,
               length=None, prefix: str) -> RowReader:
    """Add a row reader to module ``m``.

    Parameters
    ----------
    m : Module
    q : amaranth.lib.fifo.SyncFIFOBuffered
        FIFO of row descriptors (``desc_layout``, with a ``len`` field); the reader drives
        ``q.r_en``.
    rd : memory read port
        Port of the row memory; the reader drives its ``addr`` and ``en``.
    desc_layout : data.StructLayout
        Row descriptor.
    banks, max_len : int
        As for :func:`row_loader`.
    en : Value
        Advance enable (the downstream pipeline's, for a reader that can be stalled).
    row_freed : Signal or None
        If given, driven high when the last word of a row is read (the bank is free).
    length : callable or None
        The row length in memory words as a function of the descriptor (default its ``len``
        field).
    prefix : str
        Prefix of the reader's signal names.

    Latency: one cycle from ``issue`` to the data on ``rd.data``. Throughput: one word per
    enabled cycle, including across rows. Stalls: nothing advances while ``en`` is low.
    """
    active = Signal(name=f"{prefix}_active")
    bank = Signal(max(1, ceil_log2(banks)), name=f"{prefix}_bank")
    idx = Signal(ceil_log2(max_len + 1), name=f"{prefix}_idx")
    desc = Signal(desc_layout, name=f"{prefix}_desc")
    issue = Signal(name=f"{prefix}_issue")
    last = Signal(name=f"{prefix}_last")
    pop = Signal(name=f"{prefix}_pop")
    m.d.comb += [
        issue.eq(active & en), last.eq(idx == (desc.len if length is None else length(desc)) - 1),
        pop.eq(q.r_rdy & en & (~active | last)), q.r_en.eq(pop),
        rd.addr.eq(bank * max_len + idx), rd.en.eq(en),
    ]
    with m.If(issue):
        m.d.sync += idx.eq(idx + 1)
        with m.If(last):
            m.d.sync += [active.eq(0), bank.eq(next_bank(bank, banks))]
            if row_freed is not None:
                m.d.comb += row_freed.eq(1)
    with m.If(pop):
        m.d.sync += [active.eq(1), idx.eq(0), desc.eq(q.r_data)]
    return RowReader(active=active, bank=bank, idx=idx, desc=desc, issue=issue, last=last,
                     pop=pop)
