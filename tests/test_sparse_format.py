"""golden.sparse_format: byte layout, lossless round trip, validation and the array schedule."""

import struct

import numpy as np
import pytest

from golden.config import PRESETS, AccelConfig
from golden.fixedpoint import requantize
from golden.gemm import EpilogueParams, gemm
from golden.pruning import BlockPattern, block_prune, hierarchical_prune
from golden.sparse_format import (
    FLAG_BALANCED,
    FLAG_HIERARCHICAL,
    HEADER_BYTES,
    compressed_bytes,
    decode,
    dense_bytes,
    dense_cycles,
    encode,
    ideal_cycles,
    kept_macs,
    mask_bytes,
    schedule_cycles,
    schedule_imbalance,
    schedule_report,
    sparse_gemm_acc,
    tile_schedule,
    tile_weight_words,
)


def int8(rng, shape):
    return rng.integers(-128, 128, size=shape)


def prune(w, density, block, mode):
    balanced = mode.endswith("balanced") and not mode.endswith("unbalanced")
    if mode.startswith("hier"):
        return hierarchical_prune(w, density, block, balanced=balanced)
    return block_prune(w, density, block, balanced=balanced)


MODES = ["balanced", "unbalanced", "hier-balanced", "hier-unbalanced"]


# -- byte layout ------------------------------------------------------------------------------


def test_layout_by_hand():
    w = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    p = BlockPattern((3, 3), (2, 2), [[True, False], [True, True]])
    expect = (b"SVWB" + bytes([1, 0]) + struct.pack("<HHHIII", 2, 2, 0, 3, 3, 3)
              + bytes([1, 0, 0, 0]) + bytes([1, 4, 2, 5])
              + bytes([2, 0, 0, 0, 1, 0]) + bytes([7, 0, 8, 0, 9, 0]))
    assert encode(w, p) == expect
    assert len(expect) == compressed_bytes(p) == HEADER_BYTES + 4 + 4 + 6 + 6
    cols = np.zeros((2, 2, 2), bool)
    cols[0, 0, 1] = cols[1, 0, 0] = cols[1, 1, 0] = True
    h = BlockPattern((3, 3), (2, 2), p.blocks, cols)
    expect = (b"SVWB" + bytes([1, FLAG_HIERARCHICAL]) + struct.pack("<HHHIII", 2, 2, 0, 3, 3, 3)
              + bytes([1, 0, 0, 0, 0b10]) + bytes([2, 5])
              + bytes([2, 0, 0, 0, 0b01, 1, 0, 0b01]) + bytes([7, 0, 9, 0]))
    assert encode(w, h) == expect
    assert len(expect) == compressed_bytes(h)
    dec = decode(expect)
    assert np.array_equal(dec.weights, [[0, 2, 0], [0, 5, 0], [7, 0, 9]])
    assert dec.pattern == h and dec.flags == FLAG_HIERARCHICAL


def test_negative_weights_twos_complement():
    w = np.array([[-128, 127], [-1, 0]])
    data = encode(w, BlockPattern.dense((2, 2), 2))
    assert data[-4:] == bytes([0x80, 0xFF, 0x7F, 0x00])
    assert np.array_equal(decode(data).weights, w)


def test_flags_balanced(rng):
    w = int8(rng, (64, 64))
    assert decode(encode(w, block_prune(w, 0.5, 16))).flags == FLAG_BALANCED
    assert decode(encode(w, hierarchical_prune(w, 0.25, 16))).flags == (
        FLAG_BALANCED | FLAG_HIERARCHICAL)


def test_encode_rejects_non_int8(rng):
    p = BlockPattern.dense((4, 4), 2)
    with pytest.raises(ValueError, match=r"w values must be in the range \[-128, 127\]"):
        encode(np.full((4, 4), 128), p)
    with pytest.raises(ValueError, match=r"w must have shape \(4, 4\)"):
        encode(np.zeros((4, 5), np.int64), p)
    with pytest.raises(TypeError, match="pattern must be a BlockPattern"):
        encode(np.zeros((4, 4), np.int64), None)


# -- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, block", [
    ((64, 64), 16), ((96, 128), 32), ((50, 37), 16), ((37, 50), (8, 4)), ((33, 70), 32),
    ((5, 3), 16),
])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.25, 1e-6])
def test_round_trip(mode, shape, block, density, rng):
    w = int8(rng, shape)
    p = prune(w, density, block, mode)
    data = encode(w, p)
    assert len(data) == compressed_bytes(p)
    dec = decode(data)
    assert np.array_equal(dec.weights, p.apply(w))
    assert dec.pattern == p
    assert encode(dec.weights, dec.pattern) == data
    if density == 1.0 and not mode.startswith("hier"):
        assert np.array_equal(dec.weights, w)
        assert dec.pattern == BlockPattern.dense(shape, block)


def test_all_zero_block_rows_round_trip(rng):
    w = int8(rng, (64, 48))
    w[16:48] = 0
    p = block_prune(w, 0.5, 16, balanced=False)
    assert list(p.kept_blocks_per_row()) == [3, 0, 0, 3]
    data = encode(w, p)
    assert np.array_equal(decode(data).weights, w)
    # A matrix with nothing kept at all is representable too.
    empty = BlockPattern((32, 32), 16, np.zeros((2, 2), bool))
    data = encode(w[:32, :32], empty)
    assert len(data) == HEADER_BYTES + 4
    assert not decode(data).weights.any()


def test_single_kept_block(rng):
    w = int8(rng, (48, 40))
    blocks = np.zeros((3, 3), bool)
    blocks[2, 2] = True  # the partial corner block: 16 x 8 real weights
    p = BlockPattern(w.shape, 16, blocks)
    data = encode(w, p)
    assert len(data) == HEADER_BYTES + 3 * 2 + 2 + 16 * 8
    expect = np.zeros_like(w)
    expect[32:, 32:] = w[32:, 32:]
    assert np.array_equal(decode(data).weights, expect)


# -- corrupted streams ------------------------------------------------------------------------


@pytest.fixture
def stream(rng):
    """(8 x 12) matrix, 4x4 blocks, kept [[1,0,1],[0,1,0]]: row 0 at 24, row 1 at 62."""
    w = int8(rng, (8, 12))
    p = BlockPattern((8, 12), 4, [[1, 0, 1], [0, 1, 0]])
    data = encode(w, p)
    assert len(data) == 82
    return bytearray(data)


def patch(data, offset, fmt, value):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("offset, fmt, value, msg", [
    (0, "<4s", b"SVWX", r"bad magic b'SVWX', expected b'SVWB'"),
    (4, "<B", 2, r"unsupported version 2, expected 1"),
    (5, "<B", 0x84, r"unknown flag bits 0x84"),
    (5, "<B", FLAG_BALANCED, r"balanced flag is 1 but block-rows keep between 1 and 2 blocks"),
    (10, "<H", 7, r"reserved header field must be 0, not 7"),
    (6, "<H", 0, r"block_rows must be in the range \[1, 1024\], not 0"),
    (8, "<H", 2000, r"block_cols must be in the range \[1, 1024\], not 2000"),
    (12, "<I", 0, r"out_features must be at least 1, not 0"),
    (12, "<I", 1 << 30, r"out_features x in_features = 1073741824 x 12 exceeds 67108864"),
    (12, "<I", 400, (r"truncated stream: 100 block-rows need at least 224 bytes, the stream "
                    r"has 82")),
    (24, "<H", 4, r"block-row 0: count 4 larger than the number of block-columns 3"),
    (28, "<H", 3, r"block-row 0: block-column index 3 out of range \[0, 3\)"),
    (28, "<H", 0, r"block-row 0: block-column indices not strictly increasing \(0 after 0\)"),
    (20, "<I", 4, r"count mismatch: block-rows hold 3 kept blocks, the header says 4"),
    (20, "<I", 2, r"count mismatch: block-rows 0..1 hold 3 kept blocks, the header says 2"),
    (62, "<H", 2, r"count mismatch: block-rows 0..1 hold 4"),
])
def test_corrupted_header_and_index(stream, offset, fmt, value, msg):
    with pytest.raises(ValueError, match=r"^compressed weights: " + msg):
        decode(patch(stream, offset, fmt, value))


def test_truncated_and_trailing(stream):
    with pytest.raises(ValueError, match=r"truncated header: needs 24 bytes at offset 0, "
                                         r"only 10 left"):
        decode(stream[:10])
    with pytest.raises(ValueError, match=r"truncated payload of block \(1, 1\): needs 16 bytes "
                                         r"at offset 66, only 15 left"):
        decode(stream[:-1])
    with pytest.raises(ValueError, match=r"truncated payload of block \(0, 0\)"):
        decode(stream[:40])
    with pytest.raises(ValueError, match=r"truncated index list of block-row 0"):
        decode(stream[:29])
    with pytest.raises(ValueError, match=r"truncated stream: 2 block-rows need at least 28 "
                                         r"bytes, the stream has 27"):
        decode(stream[:27])
    with pytest.raises(ValueError, match=r"truncated count of block-row 1"):
        decode(stream[:62])
    with pytest.raises(ValueError, match=r"compressed weights: 3 trailing bytes after the last "
                                         r"block-row"):
        decode(bytes(stream) + b"\0\0\0")
    with pytest.raises(TypeError, match="data must be bytes"):
        decode("SVWB")


def test_nonzero_padding(rng):
    w = int8(rng, (7, 4))  # block-row 1 covers rows 4..7, row 7 is padding
    data = bytearray(encode(w, BlockPattern.dense((7, 4), 4)))
    data[-1] = 1  # last byte: padding row of the last column
    with pytest.raises(ValueError, match=r"block \(1, 0\): nonzero padding in rows past "
                                         r"out_features = 7"):
        decode(bytes(data))


def test_corrupted_masks(rng):
    w = int8(rng, (4, 10))  # 4x4 blocks: block-column 2 has 2 real columns
    cols = np.zeros((1, 3, 4), bool)
    cols[0, 0, 0] = cols[0, 2, 1] = True
    data = encode(w, BlockPattern((4, 10), 4, [[1, 0, 1]], cols))
    mask0, mask2 = HEADER_BYTES + 2 + 2, HEADER_BYTES + 2 + 3 + 2
    assert data[mask0] == 0b0001 and data[mask2] == 0b0010
    with pytest.raises(ValueError, match=r"block \(0, 0\): column mask is empty"):
        decode(patch(data, mask0, "<B", 0))
    with pytest.raises(ValueError, match=r"block \(0, 2\): column mask selects columns past "
                                         r"in_features = 10"):
        decode(patch(data, mask2, "<B", 0b0100))
    with pytest.raises(ValueError, match=r"block \(0, 0\): column mask sets unused bits past "
                                         r"block_cols = 4"):
        decode(patch(data, mask0, "<B", 0b10001))


def test_random_corruption_never_garbage(rng):
    """Any mutation either raises ValueError or decodes to a stream that re-encodes to itself."""
    w = int8(rng, (40, 36))
    for p in (block_prune(w, 0.5, 8, balanced=False), hierarchical_prune(w, 0.3, 8)):
        data = encode(w, p)
        for trial in range(300):
            bad = bytearray(data)
            kind = trial % 3
            if kind == 0:
                pos = int(rng.integers(len(bad)))
                bad[pos] ^= 1 << int(rng.integers(8))
            elif kind == 1:
                bad = bad[:int(rng.integers(len(bad)))]
            else:
                pos = int(rng.integers(len(bad)))
                bad[pos:pos] = bytes([int(rng.integers(256))])
            try:
                dec = decode(bytes(bad))
            except ValueError:
                continue
            assert encode(dec.weights, dec.pattern) == bytes(bad)


# -- sizes ------------------------------------------------------------------------------------


# The table of docs/sparse_format.md (block 16x16, DeiT-Tiny shapes).
DOC_TABLE = {
    ((192, 192), "block", 1.0): 37_200, ((192, 192), "block", 0.5): 18_624,
    ((192, 192), "block", 0.25): 9_336, ((192, 192), "hier", 0.5): 19_056,
    ((192, 192), "hier", 0.25): 9_552,
    ((768, 192), "block", 1.0): 148_728, ((768, 192), "block", 0.5): 74_424,
    ((768, 192), "block", 0.25): 37_272, ((768, 192), "hier", 0.5): 76_152,
    ((768, 192), "hier", 0.25): 38_136,
}


@pytest.mark.parametrize("key", list(DOC_TABLE))
def test_documented_sizes(key, rng):
    shape, kind, density = key
    w = int8(rng, shape)
    if kind == "block":
        p = block_prune(w, density, 16)
    else:
        p = hierarchical_prune(w, density, 16, block_density=min(1.0, 2 * density))
    assert compressed_bytes(p) == len(encode(w, p)) == DOC_TABLE[key]
    assert dense_bytes(shape) == shape[0] * shape[1]


# -- schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [PRESETS["tiny"], AccelConfig(rows=2, cols=8, max_dim=64),
                                 AccelConfig(rows=4, cols=3, max_dim=64)])
@pytest.mark.parametrize("block", [16, (4, 8), (2, 4), (12, 5)])
@pytest.mark.parametrize("mode", MODES)
def test_schedule_computes_pruned_product(cfg, block, mode, rng):
    """Iterating only the scheduled k of each output tile gives the dense product of the pruned
    matrix, whether b_r is a multiple of cols, equal, a divisor or unrelated."""
    w = int8(rng, (45, 37))
    p = prune(w, 0.4, block, mode)
    pruned = p.apply(w)
    a = int8(rng, (6, 37))
    sched = tile_schedule(p, cfg)
    assert len(sched) == -(-45 // cfg.cols)
    assert all(np.all(np.diff(ks) > 0) and (len(ks) == 0 or ks[-1] < 37) for ks in sched)
    assert np.array_equal(sparse_gemm_acc(a, pruned, sched, cfg), a @ pruned.T)
    # Every kept weight lies on a scheduled k of its tile.
    for tj, ks in enumerate(sched):
        rows = pruned[tj * cfg.cols:(tj + 1) * cfg.cols]
        assert not np.delete(rows, ks, axis=1).any()


def test_schedule_against_golden_gemm(tiny, rng):
    w = int8(rng, (24, 20))
    p = hierarchical_prune(w, 0.3, 8, balanced=False)
    pruned = p.apply(w)
    a = int8(rng, (7, 20))
    ep = EpilogueParams.random(tiny, 24, rng, k=20)
    acc = sparse_gemm_acc(a, pruned, tile_schedule(p, tiny), tiny)
    got = requantize(acc + ep.bias, ep.mult, ep.shift, tiny.act_width)
    assert np.array_equal(got, gemm(tiny, a, pruned.T, ep))


def test_schedule_is_block_row_when_br_multiple_of_cols(rng):
    cfg = PRESETS["default"]  # 8 x 8
    w = int8(rng, (64, 96))
    p = hierarchical_prune(w, 0.25, 16, balanced=False)
    sched = tile_schedule(p, cfg)
    for tj, ks in enumerate(sched):
        assert np.array_equal(ks, p.row_k_indices(tj // 2))


@pytest.mark.parametrize("block", [8, 16])
def test_payload_is_weight_stream(block, rng):
    """The payload of block-row r, cut into words of cols bytes, is the weight-buffer stream of
    its output tiles: b_r / cols words per kept k, one per tile."""
    cfg = PRESETS["default"]
    w = int8(rng, (32, 40))
    p = hierarchical_prune(w, 0.5, block)
    data = encode(w, p)
    words = tile_weight_words(p.apply(w), tile_schedule(p, cfg), cfg)
    pos = HEADER_BYTES
    per_tile = block // cfg.cols
    for r in range(p.n_block_rows):
        count = struct.unpack_from("<H", data, pos)[0]
        pos += 2 + count * (2 + mask_bytes(block))
        ks = p.row_k_indices(r)
        payload = np.frombuffer(data, np.int8, len(ks) * block, pos).astype(np.int64)
        pos += len(ks) * block
        payload = payload.reshape(len(ks), per_tile, cfg.cols)
        for s in range(per_tile):
            assert np.array_equal(payload[:, s], words[r * per_tile + s])
    assert pos == len(data)


def test_cycles_and_ideal():
    cfg = PRESETS["default"]
    rng = np.random.default_rng(5)
    w = int8(rng, (192, 192))
    m = 197
    dense = BlockPattern.dense(w.shape, 16)
    sched = tile_schedule(dense, cfg)
    assert schedule_cycles(sched, cfg, m) == dense_cycles(cfg, m, 192, 192) == 25 * 24 * 192
    for density in (0.5, 0.25):
        p = block_prune(w, density, 16)
        sched = tile_schedule(p, cfg)
        assert schedule_cycles(sched, cfg, m) == density * dense_cycles(cfg, m, 192, 192)
        assert schedule_imbalance(sched) == 1.0
        assert kept_macs(p, m) == m * density * 192 * 192
        assert ideal_cycles(p, cfg, m) == kept_macs(p, m) / 64
    rep = schedule_report(block_prune(w, 0.25, 16), cfg, m)
    assert rep["cycles"] == 28_800 and rep["dense_cycles"] == 115_200
    assert rep["speedup"] == 4.0 and rep["utilization"] == pytest.approx(197 / 200)
    assert rep["ideal_cycles"] == 197 * 192 * 48 / 64 and rep["tile_imbalance"] == 1.0
    p = block_prune(w * np.arange(1, 193)[:, None] // 192, 0.25, 16, balanced=False)
    assert p.imbalance() > 1.0
    assert schedule_imbalance(tile_schedule(p, cfg)) == pytest.approx(p.imbalance())
