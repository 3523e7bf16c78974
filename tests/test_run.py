"""sim.run and sim.bench accel: the end-to-end runner's command line (the RTL run itself is
tests/test_accel.py)."""

import subprocess
import sys

import pytest

from sim.run import VARIANTS, main, run_model


def cli(*args, module="sim.run"):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "images must be in the range [1, 1000], not 0"),
    (["--stall", "1.5"], "stall must be in the range [0, 1), not 1.5"),
    (["--latency", "0"], "latency must be in the range [1, 64], not 0"),
])
def test_bad_arguments_one_line_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_unknown_model_is_a_usage_error():
    res = cli("--model", "huge")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "invalid choice: 'huge'" in res.stderr


def test_run_model_checks_its_arguments():
    with pytest.raises(ValueError, match="variant must be one of"):
        run_model(variant="nope")
    with pytest.raises(ValueError, match="model must be one of tiny"):
        run_model("huge")
    assert list(VARIANTS)[0] == "pruned+sparse" and "dense" in VARIANTS


def test_bench_accel_needs_the_tiny_preset():
    res = cli("accel", "--config", "default", module="sim.bench")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "config must be tiny" in res.stderr
