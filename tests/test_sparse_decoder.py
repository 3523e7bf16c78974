"""RTL block-sparse weight decoder: buffer images bit-exact vs the golden schedule, exact cycle
model, every malformed stream flagged (and rejected by the golden decoder), no hangs."""

import struct

import numpy as np
import pytest

from golden.config import AccelConfig
from golden.pruning import BlockPattern, block_prune, hierarchical_prune
from golden.sparse_format import decode, encode, tile_schedule, tile_weight_words
from rtl.sparse_decoder import SparseDecoder
from sim.gemm import pack_compressed
from sim.perf import decode_cycles
from sim.streams import run_simulation, stream_send


def run_decoder(cfg, streams, *, rng=None, stall=0.0, dut=None, trace=None):
    """Decode ``streams`` (``(bytes, k, n)`` or ``(beats, k, n)``) one after the other on one
    decoder. Returns, per stream, ``(error, cycles, wmem, kmem, cmem)``; ``cycles`` counts the
    start cycle to the ``done`` pulse inclusive. ``trace``, a list, receives per stream the
    writes in order: ``(cycle, "w" or "c", addr)``."""
    dut = SparseDecoder(cfg) if dut is None else dut
    src_rng = np.random.default_rng(rng.integers(1 << 32)) if rng is not None else None
    go = []

    async def control(ctx):
        results = []
        for i, (_, k, n) in enumerate(streams):
            wmem, kmem, cmem = {}, {}, {}
            events = []
            if trace is not None:
                trace.append(events)
            ctx.set(dut.exp_k, k)
            ctx.set(dut.exp_n, n)
            ctx.set(dut.start, 1)
            go.append(i)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 1
            while True:
                if ctx.get(dut.w_en):
                    addr = ctx.get(dut.w_addr)
                    wmem[addr] = [int(x) for x in ctx.get(dut.w_data)]
                    kmem[addr] = ctx.get(dut.w_k)
                    events.append((cycles, "w", addr))
                if ctx.get(dut.c_en):
                    cmem[ctx.get(dut.c_addr)] = ctx.get(dut.c_data)
                    events.append((cycles, "c", ctx.get(dut.c_addr)))
                cycles += 1
                if ctx.get(dut.done):
                    results.append((ctx.get(dut.error), cycles, wmem, kmem, cmem))
                    break
                await ctx.tick()
            await ctx.tick()
        return results

    async def source(ctx):
        for i, (data, _, _) in enumerate(streams):
            while len(go) <= i:
                await ctx.tick()
            beats = data if isinstance(data, list) else pack_compressed(
                cfg, data, src_rng if stall > 0 else None)
            await stream_send(ctx, dut.cw, beats, rng=src_rng, stall=stall)

    total = sum(len(d) if not isinstance(d, list) else 8 * len(d) for d, _, _ in streams)
    return run_simulation(dut, [control, source], max_cycles=4 * total + 2000)[0]


def expected_image(cfg, w, pattern):
    sched = tile_schedule(pattern, cfg)
    words = tile_weight_words(pattern.apply(w), sched, cfg)
    return (np.concatenate(words) if words else np.zeros((0, cfg.cols)),
            np.concatenate(sched), [len(s) for s in sched])


def check_image(cfg, result, w, pattern):
    error, _, wmem, kmem, cmem = result
    assert error == 0
    exp_w, exp_k, exp_c = expected_image(cfg, w, pattern)
    assert sorted(wmem) == list(range(len(exp_w)))
    assert np.array_equal(np.array([wmem[i] for i in range(len(exp_w))]).reshape(exp_w.shape),
                          exp_w)
    assert [kmem[i] for i in range(len(exp_k))] == exp_k.tolist()
    assert [cmem[i] for i in range(len(exp_c))] == exp_c


def patterns(rng):
    """(w, pattern) cases on the tiny preset (cols = 4)."""
    cases = []
    w = rng.integers(-128, 128, (20, 30))                   # N, K not multiples of the block
    cases.append((w, block_prune(w, 0.5, (8, 8), balanced=True)))
    cases.append((w, block_prune(w, 0.5, (8, 8), balanced=False)))
    cases.append((w, hierarchical_prune(w, 0.5, (8, 8), balanced=False)))
    w2 = rng.integers(-128, 128, (16, 32))
    blocks = np.array([[1, 0, 1, 1], [0, 0, 0, 0]], bool)   # an all-zero block-row
    cases.append((w2, BlockPattern((16, 32), (8, 8), blocks)))
    cases.append((w2, BlockPattern.dense((16, 32), (4, 4))))  # density 1.0, q = 1
    one = np.zeros((1, 2), bool)
    one[0, 1] = True                                       # a single kept block, q = 4
    cases.append((w2, BlockPattern((16, 32), (16, 16), one)))
    cases.append((w, hierarchical_prune(w, 0.5, (4, 4))))  # q = 1: a new column every word
    cases.append((w, block_prune(w, 0.3, (4, 1), balanced=False)))  # b_c = 1: long index walks
    return cases


def test_decoder_images_and_cycles(tiny, rng):
    cases = patterns(rng)
    results = run_decoder(tiny, [(encode(w, p), p.shape[1], p.shape[0]) for w, p in cases])
    for (w, p), res in zip(cases, results):
        check_image(tiny, res, w, p)
        assert res[1] == decode_cycles(tiny, p)


def test_decoder_stalls_and_ragged_beats(tiny, rng):
    cases = patterns(rng)[:4]
    results = run_decoder(tiny, [(encode(w, p), p.shape[1], p.shape[0]) for w, p in cases],
                          rng=rng, stall=0.3)
    for (w, p), res in zip(cases, results):
        check_image(tiny, res, w, p)


def test_unused_beat_lanes_are_ignored(tiny, rng):
    """Ragged beats whose unused lanes hold garbage decode like zero-filled ones."""
    cases = patterns(rng)[:3]
    streams = []
    for w, p in cases:
        beats = pack_compressed(tiny, encode(w, p), rng)
        for b in beats:
            b["data"] = b["data"][:b["n"]] + [0xA5] * (tiny.cols - b["n"])
        streams.append((beats, p.shape[1], p.shape[0]))
    for (w, p), res in zip(cases, run_decoder(tiny, streams)):
        check_image(tiny, res, w, p)


def _corruptions(rng):
    """(name, stream, k, n, golden_rejects) on the tiny preset."""
    w = rng.integers(-128, 128, (20, 30))
    p = block_prune(w, 0.5, (8, 8), balanced=False)
    good = encode(w, p)
    k, n = 30, 20
    nbc = 4
    ph = hierarchical_prune(w, 0.5, (8, 8), balanced=False)
    hgood = encode(w, ph)
    h4 = encode(w, hierarchical_prune(w, 0.5, (4, 4)))   # b_c = 4: mask bits 4..7 unused

    def patch(data, offset, fmt, value):
        out = bytearray(data)
        struct.pack_into(fmt, out, offset, value)
        return bytes(out)

    hcount0 = struct.unpack_from("<H", hgood, 24)[0]
    last = 26 + 3 * (hcount0 - 1)            # last entry of block-row 0: index, 1 mask byte
    first_idx = struct.unpack_from("<H", good, 26)[0]
    count0 = struct.unpack_from("<H", good, 24)[0]
    assert count0 >= 2
    cases = [
        ("magic", patch(good, 0, "<B", ord("X")), k, n, True),
        ("magic, high half", patch(good, 3, "<B", good[3] ^ 0x40), k, n, True),
        ("version", patch(good, 4, "<B", 2), k, n, True),
        ("flags", patch(good, 5, "<B", good[5] | 0x04), k, n, True),
        ("balanced flag", patch(good, 5, "<B", good[5] ^ 0x02), k, n, True),
        ("reserved", patch(good, 10, "<H", 1), k, n, True),
        ("b_r zero", patch(good, 6, "<H", 0), k, n, True),
        ("out_features vs command", good, k, n - 1, False),
        ("in_features vs command", good, k + 1, n, False),
        ("out_features, high half", patch(good, 14, "<H", 1), k, n, False),
        ("in_features, high half", patch(good, 18, "<H", 1), k, n, False),
        ("b_r not a multiple of cols", encode(w, block_prune(w, 0.5, (2, 2))), k, n, False),
        ("count too large", patch(good, 24, "<H", nbc + 1), k, n, True),
        ("index out of range", patch(good, 26, "<H", nbc), k, n, True),
        ("index not increasing", patch(good, 28, "<H", first_idx), k, n, True),
        ("total too small", patch(good, 20, "<I", p.kept_blocks - 1), k, n, True),
        ("total too large", patch(good, 20, "<I", p.kept_blocks + 1), k, n, True),
        ("truncated header", good[:10], k, n, True),
        ("truncated index list", good[:27], k, n, True),
        ("truncated payload", good[:-5], k, n, True),
        ("trailing bytes", good + b"\0", k, n, True),
        ("nonzero padding row", good[:-1] + b"\x01", k, n, True),
        ("empty mask", patch(hgood, 28, "<B", 0), k, n, True),
        ("mask past in_features", patch(patch(hgood, last, "<H", nbc - 1), last + 2, "<B", 0xff),
         k, n, True),
        ("mask unused bits", patch(h4, 28, "<B", h4[28] | 0x10), k, n, True),
    ]
    return cases, (good, k, n, w, p)


def test_corrupted_streams_raise_error(tiny, rng):
    cases, (good, k, n, w, p) = _corruptions(rng)
    streams = []
    for _, data, ck, cn, _ in cases:
        streams += [(data, ck, cn), (good, k, n)]     # every error followed by a good stream
    results = run_decoder(tiny, streams)
    for i, (name, data, _, _, golden_rejects) in enumerate(cases):
        assert results[2 * i][0] == 1, name
        check_image(tiny, results[2 * i + 1], w, p)
        if golden_rejects:
            with pytest.raises(ValueError, match="compressed weights"):
                decode(data)


def test_overlong_beat_and_weight_buffer_overflow(tiny, rng):
    w = rng.integers(-128, 128, (20, 30))
    p = block_prune(w, 0.5, (8, 8))
    good = encode(w, p)
    beats = pack_compressed(tiny, good)
    beats[3] = dict(beats[3], n=tiny.cols + 1)
    small = AccelConfig.from_dict({**tiny.to_dict(), "weight_buffer_depth": 16})
    results = run_decoder(tiny, [(beats, 30, 20), (good, 30, 20)])
    assert results[0][0] == 1
    check_image(tiny, results[1], w, p)                 # the error does not outlive its stream
    results = run_decoder(small, [(good, 30, 20)])
    assert results[0][0] == 1


def test_narrow_weight_width_rejects_wide_weights(tiny, rng):
    cfg = tiny.replace(weight_width=6)
    w = rng.integers(-32, 32, (8, 16))
    p = block_prune(w, 0.5, (4, 4))
    wide = w.copy()
    wide[p.element_mask()] = 100
    results = run_decoder(cfg, [(encode(wide, p), 16, 8), (encode(w, p), 16, 8)])
    assert results[0][0] == 1
    check_image(cfg, results[1], w, p)


def test_decoder_rejects_bad_config():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig"):
        SparseDecoder("tiny")


def test_fuzz_matches_golden_decoder(tiny, rng):
    """Random byte flips, truncations and insertions: the RTL flags an error exactly when the
    golden decoder rejects the stream (or it breaks a hardware limit), else writes the golden
    image of the decoded pattern."""
    w = rng.integers(-128, 128, (20, 30))
    sources = [encode(w, block_prune(w, 0.5, (8, 8), balanced=False)),
               encode(w, hierarchical_prune(w, 0.5, (8, 8)))]
    streams, expect = [], []
    for i in range(40):
        data = bytearray(sources[i % 2])
        kind = rng.integers(3)
        pos = int(rng.integers(len(data)))
        if kind == 0:
            data[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            del data[pos:]
        else:
            data.insert(pos, int(rng.integers(256)))
        data = bytes(data)
        try:
            dec = decode(data)
        except ValueError:
            dec = None
        ok = (dec is not None and dec.pattern.shape == (20, 30)
              and dec.pattern.block[0] % tiny.cols == 0
              and (not dec.pattern.hierarchical or dec.pattern.block[1] <= 32))
        streams.append((data, 30, 20))
        expect.append(dec if ok else None)
    results = run_decoder(tiny, streams)
    for dec, res in zip(expect, results):
        if dec is None:
            assert res[0] == 1
        else:
            check_image(tiny, res, dec.weights, dec.pattern)


# ---- the pipelined column generator ------------------------------------------------------

def _blocks(n_rows, n_cols, rows):
    """A block mask with the listed block-columns kept in each block-row."""
    b = np.zeros((n_rows, n_cols), bool)
    for r, cs in enumerate(rows):
        b[r, list(cs)] = True
    return b


def _columns(pattern_blocks, bc, masks):
    """Hierarchical column masks: ``masks[(r, c)]`` (an int, bit j keeps column j)."""
    nbr, nbc = pattern_blocks.shape
    cols = np.zeros((nbr, nbc, bc), bool)
    for (r, c), mask in masks.items():
        cols[r, c] = [(mask >> j) & 1 for j in range(bc)]
    return cols


def pipeline_patterns():
    """(name, pattern) cases on the tiny preset for the column generator: back-to-back kept
    blocks, adjacent and far block-columns, single-column blocks (a new block every word),
    partial last block-columns, empty block-rows (first, consecutive, last), q = 1, 2, 4 and
    hierarchical masks of one to four bytes."""
    cases = [
        ("adjacent, every block kept",
         BlockPattern((12, 30), (4, 4), np.ones((3, 8), bool))),
        ("adjacent runs",
         BlockPattern((12, 32), (4, 4), _blocks(3, 8, [range(8), [0, 1, 2], [6, 7]]))),
        ("far apart",
         BlockPattern((12, 64), (4, 4), _blocks(3, 16, [[0, 15], [15], [0]]))),
        ("single-column blocks back to back",
         BlockPattern((8, 12), (4, 1), _blocks(2, 12, [range(12), [0, 11]]))),
        ("partial last block-column",
         BlockPattern((8, 30), (4, 8), _blocks(2, 4, [[3], [0, 3]]))),
        ("empty block-rows",
         BlockPattern((24, 32), (4, 4), _blocks(6, 8, [[], [1], [], [], [0, 7], []]))),
        ("q = 2, one and two kept blocks",
         BlockPattern((20, 32), (8, 8), _blocks(3, 4, [[2], [0, 1], [3]]))),
        ("q = 4, partial last tile",
         BlockPattern((28, 32), (16, 16), _blocks(2, 2, [[0, 1], [1]]))),
    ]
    b = _blocks(3, 4, [[0, 1, 2, 3], [1, 3], [2]])
    cases.append(("hierarchical, one-bit and full masks", BlockPattern(
        (12, 30), (4, 8), b, _columns(b, 8, {(0, 0): 0x01, (0, 1): 0x80, (0, 2): 0xff,
                                             (0, 3): 0x20, (1, 1): 0x81, (1, 3): 0x3f,
                                             (2, 2): 0x10}))))
    b = _blocks(2, 2, [[0, 1], [1]])
    cases.append(("hierarchical, four mask bytes", BlockPattern(
        (8, 64), (4, 32), b, _columns(b, 32, {(0, 0): 0x80000001, (0, 1): 0x00010000,
                                              (1, 1): 0xffffffff}))))
    b = _blocks(3, 3, [[0, 2], [], [1]])
    cases.append(("hierarchical, two mask bytes, q = 2, empty block-row", BlockPattern(
        (24, 30), (8, 12), b, _columns(b, 12, {(0, 0): 0x801, (0, 2): 0x03f, (2, 1): 0x400}))))
    return cases


def random_patterns(rng, count):
    """Random (hierarchical or plain) patterns of random shapes and blocks on tiny."""
    cases = []
    for _ in range(count):
        br = int(rng.choice([4, 8]))
        bc = int(rng.choice([1, 3, 4, 8, 12]))
        n, k = int(rng.integers(1, 33)), int(rng.integers(1, 49))
        nbr, nbc = -(-n // br), -(-k // bc)
        blocks = rng.random((nbr, nbc)) < rng.uniform(0.1, 1.0)
        columns = None
        if rng.random() < 0.5:
            valid = (np.arange(nbc)[:, None] * bc + np.arange(bc)[None, :]) < k
            columns = (rng.random((nbr, nbc, bc)) < 0.5) & blocks[:, :, None] & valid
            for r, c in zip(*np.nonzero(blocks)):
                if not columns[r, c].any():
                    columns[r, c, int(rng.integers(min(bc, k - c * bc)))] = True
        cases.append(BlockPattern((n, k), (br, bc), blocks, columns))
    return cases


def test_pipeline_images_and_exact_cycles(tiny, rng):
    cases = [p for _, p in pipeline_patterns()] + random_patterns(rng, 16)
    ws = [rng.integers(-128, 128, p.shape) for p in cases]
    results = run_decoder(tiny, [(encode(w, p), p.shape[1], p.shape[0])
                                 for w, p in zip(ws, cases)])
    for w, p, res in zip(ws, cases, results):
        check_image(tiny, res, w, p)
        assert res[1] == decode_cycles(tiny, p), p


@pytest.mark.parametrize("stall", [0.2, 0.6])
def test_pipeline_random_stalls(tiny, rng, stall):
    """Idle cycles and ragged beats on the stream starve the parser at any point of the
    pipeline (index list, column generator priming, block boundaries, tile counts)."""
    cases = [p for _, p in pipeline_patterns()] + random_patterns(rng, 6)
    ws = [rng.integers(-128, 128, p.shape) for p in cases]
    results = run_decoder(tiny, [(encode(w, p), p.shape[1], p.shape[0])
                                 for w, p in zip(ws, cases)], rng=rng, stall=stall)
    for w, p, res in zip(ws, cases, results):
        check_image(tiny, res, w, p)


def test_back_to_back_blocks_stream_one_word_per_cycle(tiny, rng):
    """Plain blocks of ``cols`` rows, at least four kept per block-row: after the count and
    the index list (one cycle per field), every payload word takes one cycle, with no
    bubble at block boundaries or between block-rows."""
    for rows in ([range(8)] * 3, [[0, 1, 2, 3], [4, 5, 6, 7], [0, 2, 5, 7]],
                 [[0, 3, 4, 7], [1, 2, 5, 6, 7], [0, 1, 2, 3, 4, 5]]):
        p = BlockPattern((12, 32), (4, 4), _blocks(3, 8, rows))
        w = rng.integers(-128, 128, p.shape)
        res = run_decoder(tiny, [(encode(w, p), 32, 12)])[0]
        check_image(tiny, res, w, p)
        words = int(p.column_mask().sum())
        # start, first beat, input register, header fields, q, block-columns
        header = 1 + 1 + 1 + 8 + 1 + 8
        # ... one cycle per count and index and per word; the last block-row's tile count
        # starts the cycle after its last word and is written in the next; END, DONE
        assert res[1] == header + sum(1 + len(r) for r in rows) + words + 2 + 2
        assert res[1] == decode_cycles(tiny, p)


def test_pipeline_corruptions_raise_error(tiny, rng):
    """Malformed streams caught while the column generator runs: the error and the drain
    work from any state of the pipeline, and the next stream decodes."""
    b = _blocks(3, 4, [[0, 2], [], [1, 3]])
    hp = BlockPattern((12, 30), (4, 8), b, _columns(b, 8, {(0, 0): 0x03, (0, 2): 0x80,
                                                          (2, 1): 0x11, (2, 3): 0x3f}))
    pp = BlockPattern((12, 30), (4, 8), b)
    w = rng.integers(-128, 128, (12, 30))
    hgood, pgood = encode(w, hp), encode(w, pp)
    # Block-row 2 starts after row 0 (count, 2 entries, payload) and row 1 (count).
    h2 = 24 + 2 + 2 * 3 + 4 * int(hp.column_mask()[0].sum()) + 2
    p2 = 24 + 2 + 2 * 2 + 4 * int(pp.column_mask()[0].sum()) + 2
    bad = [
        bytearray(hgood[:h2 + 4]),                       # truncated in row 2's mask list
        bytearray(hgood[:-3]),                           # truncated in the last payload word
        bytearray(pgood[:p2 + 3]),                       # truncated in row 2's index list
    ]
    b1 = bytearray(hgood)
    b1[h2 + 2 + 3 + 2] = 0x40                            # row 2, 2nd mask: bit past in_features
    b2 = bytearray(pgood)
    struct.pack_into("<H", b2, p2 + 2 + 2, 1)            # row 2: indices 1, 1
    b3 = bytearray(hgood)
    b3[h2 + 2 + 2] = 0                                   # row 2, 1st mask empty
    b4 = bytearray(pgood)
    struct.pack_into("<H", b4, p2 - 2, 5)                # row 1: count 5 > 4 block-columns
    bad += [b1, b2, b3, b4]
    streams = []
    for data in bad:
        with pytest.raises(ValueError, match="compressed weights"):
            decode(bytes(data))
        streams += [(bytes(data), 30, 12), (hgood, 30, 12)]
    results = run_decoder(tiny, streams)
    for i in range(len(bad)):
        assert results[2 * i][0] == 1, i
        check_image(tiny, results[2 * i + 1], w, hp)


@pytest.mark.parametrize("block", [(4, 4), (8, 4), (16, 8)])
def test_weight_buffer_bound_exact(tiny, rng, block):
    """A stream whose words exactly fill the weight buffer decodes; one word more is an error
    (the room is tracked per word, for every tile of a block-row: q = 1, 2, 4)."""
    w = rng.integers(-128, 128, (16, 24))
    p = block_prune(w, 0.5, block, balanced=False)
    words = int(p.column_mask().sum()) * (block[0] // tiny.cols)
    fits = tiny.replace(weight_buffer_depth=words)
    short = tiny.replace(weight_buffer_depth=words - 1)
    data = encode(w, p)
    check_image(fits, run_decoder(fits, [(data, 24, 16)])[0], w, p)
    assert run_decoder(short, [(data, 24, 16)])[0][0] == 1


def test_tile_count_written_after_its_words(tiny, rng):
    """The ordering rtl.gemm relies on: the count of output tile ``tj`` is written only after
    every weight word of tile ``tj`` (in a later cycle), and counts are written in increasing
    ``tj`` order, each once."""
    cases = ([p for _, p in pipeline_patterns()] + [p for _, p in patterns(rng)]
             + random_patterns(rng, 16))
    ws = [rng.integers(-128, 128, p.shape) for p in cases]
    trace = []
    results = run_decoder(tiny, [(encode(w, p), p.shape[1], p.shape[0])
                                 for w, p in zip(ws, cases)], trace=trace)
    for w, p, res, events in zip(ws, cases, results, trace):
        check_image(tiny, res, w, p)
        counts = [len(s) for s in tile_schedule(p, tiny)]
        first = np.concatenate([[0], np.cumsum(counts)])
        tile_of = {a: tj for tj in range(len(counts)) for a in range(first[tj], first[tj + 1])}
        c_events = [(cyc, a) for cyc, kind, a in events if kind == "c"]
        assert [a for _, a in c_events] == list(range(len(counts))), p
        last_word = {}
        for cyc, kind, a in events:
            if kind == "w":
                last_word[tile_of[a]] = cyc
        for cyc, tj in c_events:
            assert cyc > last_word.get(tj, -1), (p, tj)
