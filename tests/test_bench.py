import json
import subprocess
import sys


def bench(*args):
    return subprocess.run([sys.executable, "-m", "sim.bench", *args], capture_output=True,
                          text=True, timeout=600)


def test_gemm_json_reports_cycles_against_ideal():
    res = bench("gemm", "--config", "tiny", "--m", "6", "--k", "8", "--n", "5", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["bit_exact"] is True
    assert out["ideal_cycles"] == 6 * 8 * 5 / 16
    assert out["cycles"] == out["model_cycles"]
    assert out["utilization"] == round(out["ideal_cycles"] / out["cycles"], 4)


def test_gemm_with_the_command_options():
    res = bench("gemm", "--config", "tiny", "--m", "5", "--k", "6", "--n", "7", "--a-unsigned",
                "--out16", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["a_unsigned"] is True and out["out16"] is True
    assert out["bit_exact"] is True
    assert out["cycles"] == out["model_cycles"]


def test_gemm_text_output():
    res = bench("gemm", "--config", "tiny", "--m", "2", "--k", "2", "--n", "2")
    assert res.returncode == 0
    assert "bit_exact" in res.stdout and "utilization" in res.stdout


def test_errors_are_one_line_exit_2():
    for args in (["gemm", "--config", "nope"], ["gemm", "--config", "tiny", "--m", "999"],
                 ["gemm", "--config", "tiny", "--stall", "1.5"], ["no-such-kernel"]):
        res = bench(*args)
        assert res.returncode == 2, args
        assert res.stderr.count("\n") == 1, res.stderr
