"""golden.pruning: block, hierarchical and neuron pruning against brute-force / torch references."""

import itertools

import numpy as np
import pytest
import torch

from golden.config import PRESETS, AccelConfig
from golden.pruning import (
    BlockPattern,
    block_prune,
    block_scores,
    check_block,
    default_block,
    hierarchical_prune,
    neuron_prune,
)


def torch_block_norms(w, br, bc):
    """L2 norm of every zero-padded block, via torch (independent of the code under test)."""
    t = torch.as_tensor(np.asarray(w, np.float64))
    n, k = t.shape
    nbr, nbc = -(-n // br), -(-k // bc)
    out = torch.zeros(nbr, nbc, dtype=torch.float64)
    for r in range(nbr):
        for c in range(nbc):
            out[r, c] = torch.linalg.norm(t[r * br:(r + 1) * br, c * bc:(c + 1) * bc])
    return out.numpy()


def brute_force(norms, count, rows=None):
    """The set of ``count`` blocks maximising the kept energy (all subsets)."""
    cells = list(itertools.product(range(norms.shape[0]), range(norms.shape[1])))
    if rows is not None:
        cells = [(r, c) for r, c in cells if r == rows]
    best = max(itertools.combinations(cells, count),
               key=lambda s: sum(norms[rc] ** 2 for rc in s))
    return set(best)


# -- defaults and parameters ------------------------------------------------------------------


def test_default_block_tied_to_array():
    assert default_block(PRESETS["tiny"]) == (4, 4)
    assert default_block(AccelConfig(rows=8, cols=4)) == (4, 8)
    assert default_block(PRESETS["deit-tiny"]) == (16, 16)
    assert default_block(PRESETS["default"].replace(sparse_block=32)) == (32, 32)
    assert default_block(PRESETS["tiny"].replace(sparse_block=2)) == (2, 2)


def test_config_sparse_block_validated():
    with pytest.raises(ValueError, match=r"sparse_block must be 0, a multiple or a divisor of "
                                         r"cols \(8\), not 12"):
        PRESETS["default"].replace(sparse_block=12)
    with pytest.raises(ValueError, match=r"sparse_block must be in the range \[0, 1024\]"):
        PRESETS["default"].replace(sparse_block=2048)


@pytest.mark.parametrize("density", [0, 0.0, -0.5, 1.01, 2])
def test_bad_density(density, rng):
    w = rng.normal(size=(32, 32))
    with pytest.raises(ValueError, match=r"density must be in the range \(0, 1\]"):
        block_prune(w, density, 16)
    with pytest.raises(ValueError, match=r"density must be in the range \(0, 1\]"):
        hierarchical_prune(w, density, 16)
    with pytest.raises(ValueError, match=r"density must be in the range \(0, 1\]"):
        neuron_prune(w, w.T, density)


def test_bad_density_type(rng):
    with pytest.raises(TypeError, match="density must be a number"):
        block_prune(rng.normal(size=(8, 8)), "0.5", 4)


@pytest.mark.parametrize("block, exc, msg", [
    (0, ValueError, r"block_rows must be in the range \[1, 1024\], not 0"),
    ((16, 0), ValueError, r"block_cols must be in the range \[1, 1024\], not 0"),
    ((16, 2048), ValueError, r"block_cols must be in the range \[1, 1024\], not 2048"),
    (16.0, TypeError, r"block_rows must be an integer"),
    ((16, 16, 16), ValueError, r"block must be an int or a pair"),
])
def test_bad_block(block, exc, msg, rng):
    with pytest.raises(exc, match=msg):
        block_prune(rng.normal(size=(32, 32)), 0.5, block)
    with pytest.raises(exc, match=msg):
        check_block(block)


def test_bad_block_density(rng):
    w = rng.normal(size=(32, 32))
    with pytest.raises(ValueError, match=r"block_density must be in the range \[0.25, 1\]"):
        hierarchical_prune(w, 0.25, 8, block_density=0.2)
    with pytest.raises(ValueError, match=r"block_density must be in the range \(0, 1\]"):
        hierarchical_prune(w, 0.25, 8, block_density=1.5)


def test_bad_matrix():
    with pytest.raises(ValueError, match="w must be a 2-D matrix"):
        block_prune(np.zeros(16), 0.5, 4)
    with pytest.raises(ValueError, match="w must be finite"):
        block_prune(np.full((4, 4), np.nan), 0.5, 4)
    with pytest.raises(TypeError, match="w must hold integers or floats"):
        block_prune(np.full((4, 4), "a"), 0.5, 4)


def test_pattern_validation():
    blocks = np.ones((2, 2), bool)
    with pytest.raises(ValueError, match=r"blocks must have shape \(2, 2\), not \(2, 3\)"):
        BlockPattern((8, 8), 4, np.ones((2, 3), bool))
    cols = np.zeros((2, 2, 4), bool)
    with pytest.raises(ValueError, match="columns keeps no column of a kept block"):
        BlockPattern((8, 8), 4, blocks, cols)
    cols = np.ones((2, 2, 4), bool)
    with pytest.raises(ValueError, match="columns keeps columns past in_features = 6"):
        BlockPattern((8, 6), 4, blocks, cols)
    with pytest.raises(ValueError, match="columns keeps columns of a pruned block"):
        BlockPattern((8, 8), 4, np.eye(2, dtype=bool), cols)
    p = BlockPattern((8, 8), 4, blocks)
    with pytest.raises(ValueError, match=r"w must have shape \(8, 8\)"):
        p.apply(np.zeros((8, 7)))


# -- block pruning ----------------------------------------------------------------------------


def test_block_scores_match_torch(rng):
    w = rng.normal(size=(37, 50))
    got = np.sqrt(block_scores(w, (16, 8)))
    np.testing.assert_allclose(got, torch_block_norms(w, 16, 8), rtol=1e-12)
    wi = rng.integers(-128, 128, size=(37, 50))
    got = block_scores(wi, 16)
    assert got.dtype == np.int64
    np.testing.assert_allclose(np.sqrt(got), torch_block_norms(wi, 16, 16), rtol=1e-12)


@pytest.mark.parametrize("block", [16, 32])
@pytest.mark.parametrize("density", [1.0, 0.75, 0.5, 0.25, 0.125])
def test_balanced_exact_density(block, density, rng):
    w = rng.normal(size=(96, 256))  # 256 / 16 and 256 / 32 block-columns: density * nbc exact
    p = block_prune(w, density, block, balanced=True)
    nbc = 256 // block
    assert np.all(p.kept_blocks_per_row() == density * nbc)
    assert p.block_density == density
    assert p.density == density
    assert p.imbalance() == 1.0
    pruned = p.apply(w)
    assert np.count_nonzero(pruned) == density * w.size


@pytest.mark.parametrize("block", [16, 32])
@pytest.mark.parametrize("density", [0.9, 0.5, 0.3, 0.1, 0.01])
def test_unbalanced_within_one_block(block, density, rng):
    w = rng.normal(size=(160, 200)) * rng.lognormal(size=(160, 1))
    p = block_prune(w, density, block, balanced=False)
    total = p.blocks.size
    assert abs(p.kept_blocks - density * total) <= 1
    assert p.kept_blocks >= 1


def test_unbalanced_matches_brute_force(rng):
    for _trial in range(4):
        w = rng.normal(size=(12, 14)) * rng.lognormal(size=(12, 1))  # 3 x 4 blocks of 4x4
        norms = torch_block_norms(w, 4, 4)
        for count in (1, 3, 5):
            p = block_prune(w, count / 12, 4, balanced=False)
            assert set(zip(*np.nonzero(p.blocks))) == brute_force(norms, count)


def test_balanced_matches_brute_force(rng):
    for _trial in range(4):
        w = rng.normal(size=(12, 17)) * rng.lognormal(size=(1, 17))  # 3 x 5 blocks
        norms = torch_block_norms(w, 4, 4)
        p = block_prune(w, 0.4, 4, balanced=True)  # 2 of 5 per block-row
        kept = set(zip(*np.nonzero(p.blocks)))
        for r in range(3):
            assert {rc for rc in kept if rc[0] == r} == brute_force(norms, 2, rows=r)


def test_ties_deterministic():
    w = np.ones((16, 24), np.int64)  # 4 x 6 blocks of 4x4, all with the same norm
    p = block_prune(w, 0.5, 4, balanced=True)
    assert np.array_equal(p.blocks, np.tile([1, 1, 1, 0, 0, 0], (4, 1)).astype(bool))
    p = block_prune(w, 5 / 24, 4, balanced=False)
    assert np.array_equal(np.flatnonzero(p.blocks), [0, 1, 2, 3, 4])
    w[8:12, 20:24] = 2  # one larger block wins, the rest by position
    p = block_prune(w, 2 / 24, 4, balanced=False)
    assert np.array_equal(np.flatnonzero(p.blocks), [0, 2 * 6 + 5])
    assert block_prune(w, 0.3, 4, False) == block_prune(w.copy(), 0.3, 4, False)


def test_all_zero_block_rows(rng):
    w = rng.integers(-128, 128, size=(48, 64))
    w[16:32] = 0
    p = block_prune(w, 0.5, 16, balanced=False)
    assert p.kept_blocks_per_row()[1] == 0
    assert p.kept_blocks == 6
    # Balanced mode keeps the same count everywhere, zero blocks included (lowest indices).
    p = block_prune(w, 0.5, 16, balanced=True)
    assert list(p.kept_blocks_per_row()) == [2, 2, 2]
    assert list(np.flatnonzero(p.blocks[1])) == [0, 1]
    assert not p.apply(w)[16:32].any()


def test_density_one_is_dense(rng):
    w = rng.integers(-128, 128, size=(37, 45))
    for balanced in (True, False):
        p = block_prune(w, 1.0, 16, balanced)
        assert p.blocks.all() and p.density == 1.0
        assert np.array_equal(p.apply(w), w)
        assert p == BlockPattern.dense(w.shape, 16)


def test_single_kept_block(rng):
    w = rng.normal(size=(40, 40))
    w[20:30, 30:40] *= 100
    p = block_prune(w, 1e-6, 10, balanced=False)
    assert p.kept_blocks == 1 and p.blocks[2, 3]
    p = block_prune(w[:10], 1e-6, 10, balanced=True)
    assert p.kept_blocks == 1


def test_partial_blocks(rng):
    w = rng.integers(-128, 128, size=(50, 37))  # 4 x 3 blocks of 16x16, last ones partial
    p = block_prune(w, 0.5, 16, balanced=False)
    assert p.blocks.shape == (4, 3)
    mask = p.element_mask()
    assert mask.shape == (50, 37)
    for r, c in itertools.product(range(4), range(3)):
        assert np.all(mask[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] == p.blocks[r, c])
    assert p.kept_weights == sum(
        min(16, 50 - r * 16) * min(16, 37 - c * 16) for r, c in zip(*np.nonzero(p.blocks)))


def test_torch_input(rng):
    w = rng.normal(size=(32, 32))
    p = block_prune(torch.tensor(w, dtype=torch.float32), 0.5, 16)
    assert p == block_prune(w.astype(np.float32), 0.5, 16)


# -- hierarchical pruning ---------------------------------------------------------------------


def column_norms_torch(w, r, c, br, bc):
    t = torch.as_tensor(np.asarray(w, np.float64))[r * br:(r + 1) * br, c * bc:(c + 1) * bc]
    return torch.linalg.norm(t, dim=0).numpy()


@pytest.mark.parametrize("block", [16, 32])
def test_hierarchical_balanced(block, rng):
    w = rng.normal(size=(128, 256)) * rng.lognormal(size=(1, 256))
    p = hierarchical_prune(w, 0.25, block, balanced=True)
    assert p.hierarchical
    nbc = 256 // block
    assert np.all(p.kept_blocks_per_row() == nbc // 2)  # block density sqrt(0.25)
    cols = p.column_mask()
    assert np.all(cols[p.blocks].sum(axis=1) == block // 2)
    assert p.density == 0.25
    assert np.all(p.kept_columns_per_row() == p.kept_columns_per_row()[0])
    # Kept blocks are those of plain block pruning at the block density.
    assert np.array_equal(p.blocks, block_prune(w, 0.5, block).blocks)
    # Kept columns of a block are its largest column norms.
    for r, c in list(zip(*np.nonzero(p.blocks)))[:6]:
        norms = column_norms_torch(w, r, c, block, block)
        kept = cols[r, c]
        assert norms[kept].min() >= norms[~kept].max()


def test_hierarchical_block_density(rng):
    w = rng.normal(size=(64, 64))
    p = hierarchical_prune(w, 0.25, 16, block_density=1.0)
    assert p.blocks.all() and p.density == 0.25
    p = hierarchical_prune(w, 0.25, 16, block_density=0.25)
    assert p.kept_blocks == 4 and p.density == 0.25
    assert p.column_mask()[p.blocks].all()


@pytest.mark.parametrize("balanced", [True, False])
def test_hierarchical_density(balanced, rng):
    w = rng.normal(size=(192, 192))
    for density in (0.5, 0.25, 0.125):  # achievable exactly with 16x16 blocks on 192
        assert hierarchical_prune(w, density, 16, balanced).density == density
    for density in rng.uniform(0.05, 1.0, size=10):
        p = hierarchical_prune(w, density, 16, balanced)
        # Columns are rounded per block (balanced) or globally (unbalanced).
        assert abs(p.density - density) <= p.block_density / 32 + 1e-12
        assert p.block_density >= density - 1e-12


def test_hierarchical_unbalanced(rng):
    w = rng.normal(size=(64, 96)) * rng.lognormal(size=(64, 1))
    p = hierarchical_prune(w, 0.2, 16, balanced=False, block_density=0.5)
    base = block_prune(w, 0.5, 16, balanced=False)
    assert not np.any(p.blocks & ~base.blocks)
    total_candidates = base.kept_weights // 16
    assert abs(p.column_mask().sum() - 0.4 * total_candidates) <= 1
    # Every kept column segment outweighs every dropped one of the candidate blocks.
    seg = (w.reshape(4, 16, 96) ** 2).sum(axis=1).reshape(4, 6, 16)
    kept = p.column_mask()
    dropped = base.column_mask() & ~kept
    assert seg[kept].min() >= seg[dropped].max()


def test_hierarchical_partial_blocks(rng):
    w = rng.integers(-128, 128, size=(50, 37))
    for balanced in (True, False):
        p = hierarchical_prune(w, 0.3, 16, balanced=balanced)
        cols = p.column_mask()
        assert not cols[:, 2, 5:].any()  # in_features 37 = 2 * 16 + 5
        mask = p.element_mask()
        pruned = p.apply(w)
        assert np.array_equal(pruned != 0, mask & (w != 0))


# -- neuron pruning ---------------------------------------------------------------------------


def test_neuron_prune_matches_torch_mlp(rng):
    dim, hidden = 16, 48
    fc1 = torch.nn.Linear(dim, hidden, dtype=torch.float64)
    fc2 = torch.nn.Linear(hidden, dim, dtype=torch.float64)
    res = neuron_prune(fc1.weight, fc2.weight, 0.5, fc1_bias=fc1.bias)
    ref = (torch.linalg.norm(fc1.weight, dim=1) * torch.linalg.norm(fc2.weight, dim=0)).detach()
    expect = np.sort(torch.argsort(ref, descending=True, stable=True)[:24].numpy())
    assert np.array_equal(res.kept, expect)
    assert res.fc1_weight.shape == (24, dim) and res.fc2_weight.shape == (dim, 24)
    # The smaller MLP equals the original with the pruned neurons masked out.
    x = torch.as_tensor(rng.normal(size=(5, dim)))
    with torch.no_grad():
        mask = torch.zeros(hidden, dtype=torch.float64)
        mask[expect] = 1
        full = fc2(torch.nn.functional.gelu(fc1(x)) * mask)
        small = (torch.nn.functional.gelu(x @ torch.as_tensor(res.fc1_weight).T
                                          + torch.as_tensor(res.fc1_bias))
                 @ torch.as_tensor(res.fc2_weight).T + fc2.bias)
    torch.testing.assert_close(small, full)


def test_neuron_prune_counts_and_ties():
    w1 = np.ones((10, 4), np.int64)
    w2 = np.ones((4, 10), np.int64)
    res = neuron_prune(w1, w2, 0.3)
    assert list(res.kept) == [0, 1, 2]
    res = neuron_prune(w1, w2, 0.3, multiple_of=4)
    assert list(res.kept) == [0, 1, 2, 3]
    assert len(neuron_prune(w1, w2, 0.95, multiple_of=4).kept) == 10
    w1[7] = 3
    assert list(neuron_prune(w1, w2, 0.01).kept) == [7]
    assert neuron_prune(w1, w2, 0.5).fc1_bias is None


def test_neuron_prune_bad_args():
    with pytest.raises(ValueError, match="fc2_weight must have 10 columns"):
        neuron_prune(np.ones((10, 4)), np.ones((4, 9)), 0.5)
    with pytest.raises(ValueError, match=r"fc1_bias must have shape \(10,\)"):
        neuron_prune(np.ones((10, 4)), np.ones((4, 10)), 0.5, fc1_bias=np.ones(9))
    with pytest.raises(ValueError, match=r"multiple_of must be in the range \[1, inf\), not 0"):
        neuron_prune(np.ones((10, 4)), np.ones((4, 10)), 0.5, multiple_of=0)
