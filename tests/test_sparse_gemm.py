"""Sparse GEMM on the engine: bit-exact vs the golden dense GEMM on the pruned weights, exact
cycle model, stalls on every stream, resident weights, corrupted streams, the benchmark."""

import argparse
import struct

import numpy as np
import pytest

from golden.config import AccelConfig
from golden.gemm import EpilogueParams, gemm
from golden.pruning import BlockPattern, block_prune, hierarchical_prune
from golden.sparse_format import encode
from rtl.gemm import GemmEngine
from sim import bench_sparse
from sim.gemm import GemmJob, run_gemm, run_gemm_jobs, run_sparse_gemm
from sim.perf import gemm_cycles, sparse_gemm_cycles


def case(cfg, rng, m, w, pattern):
    n, k = pattern.shape
    a = rng.integers(-128, 128, (m, k))
    ep = EpilogueParams.random(cfg, n, rng, k)
    return a, ep, gemm(cfg, a, pattern.apply(w).T, ep)


def check(cfg, rng, m, w, pattern, stall=0.0):
    a, ep, expected = case(cfg, rng, m, w, pattern)
    out, run = run_sparse_gemm(cfg, a, encode(w, pattern), ep, rng=rng, stall=stall)
    assert run.errors == [0]
    assert np.array_equal(out, expected)
    if stall == 0:
        assert run.cycles[0] == sparse_gemm_cycles(cfg, m, pattern).total
    return run


def test_balanced_q2(tiny, rng):
    w = rng.integers(-128, 128, (16, 32))
    check(tiny, rng, 9, w, block_prune(w, 0.5, (8, 8)))


def test_balanced_block_equals_cols(tiny, rng):
    w = rng.integers(-128, 128, (12, 24))
    check(tiny, rng, 6, w, block_prune(w, 0.25, (4, 4)))


def test_unbalanced_with_empty_block_row(tiny, rng):
    w = rng.integers(-128, 128, (24, 32))
    blocks = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], bool)
    run = check(tiny, rng, 7, w, BlockPattern((24, 32), (8, 8), blocks))
    assert run.cycles[0] > 0


def test_unbalanced_pruning(tiny, rng):
    w = rng.integers(-128, 128, (20, 30))
    check(tiny, rng, 9, w, block_prune(w, 0.5, (8, 8), balanced=False))


def test_hierarchical(tiny, rng):
    w = rng.integers(-128, 128, (16, 32))
    check(tiny, rng, 5, w, hierarchical_prune(w, 0.5, (8, 8)))
    check(tiny, rng, 5, w, hierarchical_prune(w, 0.25, (16, 16), balanced=False))


def test_density_one_matches_dense_engine(tiny, rng):
    w = rng.integers(-128, 128, (8, 16))
    p = BlockPattern.dense((8, 16), (4, 4))
    run = check(tiny, rng, 8, w, p)
    # With resident weights the compute cycles equal the dense engine's; only the load path
    # (which overlaps the first tile row) differs.
    assert (sparse_gemm_cycles(tiny, 8, p, load_weights=False).compute
            == gemm_cycles(tiny, 8, 16, 8, load_weights=False).compute)
    assert run.cycles[0] == sparse_gemm_cycles(tiny, 8, p).total


def test_single_kept_block(tiny, rng):
    w = rng.integers(-128, 128, (16, 32))
    blocks = np.zeros((2, 4), bool)
    blocks[1, 2] = True
    check(tiny, rng, 5, w, BlockPattern((16, 32), (8, 8), blocks))


def test_k_and_n_not_multiples_of_block(tiny, rng):
    w = rng.integers(-128, 128, (13, 21))
    check(tiny, rng, 11, w, block_prune(w, 0.5, (8, 8)))
    check(tiny, rng, 3, w, hierarchical_prune(w, 0.5, (4, 4), balanced=False))


def test_random_stalls_on_every_stream(tiny, rng):
    w = rng.integers(-128, 128, (20, 30))
    check(tiny, rng, 9, w, block_prune(w, 0.5, (8, 8), balanced=False), stall=0.3)
    check(tiny, rng, 6, w, hierarchical_prune(w, 0.5, (4, 4)), stall=0.3)


def test_resident_weights_and_mode_switch(tiny, rng):
    w = rng.integers(-128, 128, (16, 32))
    p = block_prune(w, 0.5, (8, 8))
    a1, ep, exp1 = case(tiny, rng, 6, w, p)
    a2 = rng.integers(-128, 128, (9, 32))
    exp2 = gemm(tiny, a2, p.apply(w).T, ep)
    b = rng.integers(-128, 128, (32, 8))
    dep = EpilogueParams.random(tiny, 8, rng, 32)
    jobs = [GemmJob(a1, ep=ep, sparse=True, compressed=encode(w, p)),
            GemmJob(a2, sparse=True, k=32, n=16),                 # reuse the sparse weights
            GemmJob(a2, k=32, n=16, expect_error=True),           # dense reuse: rejected
            GemmJob(a2, b, dep),                                  # dense after sparse
            GemmJob(a2, sparse=True, k=32, n=8, expect_error=True)]  # sparse reuse: rejected
    run = run_gemm_jobs(tiny, jobs)
    assert run.errors == [0, 0, 1, 0, 1]
    assert np.array_equal(run.outputs[0], exp1)
    assert np.array_equal(run.outputs[1], exp2)
    assert np.array_equal(run.outputs[3], gemm(tiny, a2, b, dep))
    assert run.cycles[1] == sparse_gemm_cycles(tiny, 9, p, load_weights=False).total


def test_corrupted_stream_flags_error_then_recovers(tiny, rng):
    w = rng.integers(-128, 128, (16, 32))
    p = block_prune(w, 0.5, (8, 8))
    good = encode(w, p)
    bad_index = bytearray(good)
    struct.pack_into("<H", bad_index, 26, 9)
    a, ep, expected = case(tiny, rng, 6, w, p)
    jobs = [GemmJob(a, ep=ep, sparse=True, compressed=bytes(bad_index), expect_error=True),
            GemmJob(a, ep=ep, sparse=True, compressed=good[:-3], expect_error=True),
            GemmJob(a, ep=ep, sparse=True, compressed=good + b"\0\0", expect_error=True),
            GemmJob(a, sparse=True, k=32, n=16, expect_error=True),   # nothing resident
            GemmJob(a, ep=ep, sparse=True, compressed=good)]
    run = run_gemm_jobs(tiny, jobs, rng=rng, stall=0.2)
    assert run.errors == [1, 1, 1, 1, 0]
    assert np.array_equal(run.outputs[4], expected)


def finer(cfg, ep, by):
    """The same epilogue ``2**by`` times finer (outputs over a wider range)."""
    return EpilogueParams(cfg, ep.bias.shape[0], ep.bias, ep.mult, np.maximum(ep.shift - by, 0))


@pytest.mark.parametrize("a_unsigned, out16, stall", [
    (True, False, 0.0), (False, True, 0.0), (True, True, 0.0), (True, True, 0.3)])
def test_options_unsigned_a_and_out16(tiny, rng, a_unsigned, out16, stall):
    w = rng.integers(-128, 128, (20, 30))
    p = block_prune(w, 0.5, (8, 8), balanced=False)
    a = rng.integers(0, 256, (9, 30)) if a_unsigned else rng.integers(-128, 128, (9, 30))
    if a_unsigned:
        a[:, :3] = 255
    ep = EpilogueParams.random(tiny, 20, rng, 30)
    ep = finer(tiny, ep, 7) if out16 else ep
    out_bits = 16 if out16 else None
    expected = gemm(tiny, a, p.apply(w).T, ep, a_unsigned=a_unsigned, out_bits=out_bits)
    out, run = run_sparse_gemm(tiny, a, encode(w, p), ep, a_unsigned=a_unsigned, out16=out16,
                               rng=rng, stall=stall)
    assert run.errors == [0]
    assert np.array_equal(out, expected)
    if out16:
        assert np.abs(expected).max() > 127
    if stall == 0:
        assert run.cycles[0] == sparse_gemm_cycles(tiny, 9, p).total
    else:
        assert run.cycles[0] > sparse_gemm_cycles(tiny, 9, p).total


def test_options_latched_per_command_across_modes(tiny, rng):
    w = rng.integers(-128, 128, (16, 32))
    p = block_prune(w, 0.5, (8, 8))
    ep = finer(tiny, EpilogueParams.random(tiny, 16, rng, 32), 4)
    a_u = rng.integers(0, 256, (7, 32))
    a_s = rng.integers(-128, 128, (5, 32))
    b = rng.integers(-128, 128, (32, 8))
    dep = finer(tiny, EpilogueParams.random(tiny, 8, rng, 32), 4)
    wt = p.apply(w).T
    jobs = [GemmJob(a_u, ep=ep, sparse=True, compressed=encode(w, p), a_unsigned=True,
                    out16=True),
            GemmJob(a_s, sparse=True, k=32, n=16),
            GemmJob(a_u, sparse=True, k=32, n=16, a_unsigned=True),
            GemmJob(a_s, b, dep, out16=True),
            GemmJob(a_u, k=32, n=8, a_unsigned=True)]
    run = run_gemm_jobs(tiny, jobs)
    assert run.errors == [0] * 5
    assert np.array_equal(run.outputs[0], gemm(tiny, a_u, wt, ep, a_unsigned=True, out_bits=16))
    assert np.array_equal(run.outputs[1], gemm(tiny, a_s, wt, ep))
    assert np.array_equal(run.outputs[2], gemm(tiny, a_u, wt, ep, a_unsigned=True))
    assert np.array_equal(run.outputs[3], gemm(tiny, a_s, b, dep, out_bits=16))
    assert np.array_equal(run.outputs[4], gemm(tiny, a_u, b, dep, a_unsigned=True))
    assert run.cycles[0] == sparse_gemm_cycles(tiny, 7, p).total
    assert run.cycles[2] == sparse_gemm_cycles(tiny, 7, p, load_weights=False).total
    assert run.cycles[3] == gemm_cycles(tiny, 5, 32, 8).total


def test_sparse_latency_adds_the_index_read_and_its_register(tiny):
    dut = GemmEngine(tiny)
    dut._MustUse__silence = dut._array._MustUse__silence = True   # never elaborated
    assert dut.sparse_latency == dut.latency + 2


def bench_args(**kw):
    args = {"m": 9, "k": 32, "n": 16, "density": 0.5, "block": 8, "balanced": True,
            "hierarchical": False, "stall": 0.0, "seed": 0, "json": True}
    args.update(kw)
    ns = argparse.Namespace(**args)
    ns.cfg = kw.pop("cfg", None)
    return ns


def test_benchmark_reports(tiny):
    args = bench_args()
    args.cfg = tiny
    res = bench_sparse.run(args)
    assert res["bit_exact"] is True
    assert res["cycles"] == res["model_cycles"]
    assert res["speedup"] > 1.2
    assert 0 < res["utilization"] <= 1
    for key in ("dense_cycles", "ideal_cycles", "imbalance"):
        assert key in res


@pytest.mark.parametrize("kw, message", [
    ({"block": 6}, r"--block must be a positive multiple of cols \(4\), not 6"),
    ({"density": 0.0}, r"--density must be in the range \(0, 1\], not 0.0"),
    ({"stall": 1.0}, r"--stall must be in the range \[0, 1\), not 1.0"),
])
def test_benchmark_rejects_bad_parameters(tiny, kw, message):
    args = bench_args(**kw)
    args.cfg = tiny
    with pytest.raises(ValueError, match=message):
        bench_sparse.run(args)


def test_cycle_models_exact_on_a_tall_array(rng):
    # 16 rows and a short last tile row: the engine stays busy until the array has drained.
    cfg = AccelConfig(rows=16, cols=4, max_tokens=40, max_dim=32, max_hidden=64)
    w = rng.integers(-128, 128, (12, 40))
    p = block_prune(w, 0.5, (8, 8), balanced=False)
    a, ep, expected = case(cfg, rng, 37, w, p)
    out, run = run_sparse_gemm(cfg, a, encode(w, p), ep)
    assert np.array_equal(out, expected)
    assert run.cycles[0] == sparse_gemm_cycles(cfg, 37, p).total
    out, run = run_gemm(cfg, a, p.apply(w).T, ep)
    assert np.array_equal(out, expected)
    assert run.cycles[0] == gemm_cycles(cfg, 37, 40, 12).total
