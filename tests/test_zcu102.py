# amaranth: UnusedElaboratable=no
"""The ZCU102 platform (platforms.zcu102): a Vivado build plan, without Vivado."""

import re

import pytest

from platforms import zcu102
from platforms.standin import MacArray
from platforms.zcu102 import BoardTop, ZCU102Platform, build_plan


@pytest.fixture(scope="module")
def plan():
    return build_plan(MacArray(1, 2), pins=2)


def test_platform_part():
    platform = ZCU102Platform()
    assert platform.toolchain == "Vivado"
    assert platform.family == "ultrascaleplus"
    assert platform._part == "xczu9eg-ffvb1156-2-e"
    assert platform.default_clk_frequency == 125e6


def test_plan_files(plan):
    assert {"top.v", "top.xdc", "top.tcl", "build_top.sh"} <= set(plan.files)


def test_plan_tcl_names_the_part(plan):
    tcl = plan.files["top.tcl"]
    assert "create_project -force -name top -part xczu9eg-ffvb1156-2-e" in tcl
    assert "read_xdc top.xdc" in tcl
    assert "synth_design -top top" in tcl
    assert "write_bitstream" in tcl
    assert "vivado" in plan.files["build_top.sh"].lower()


def test_plan_xdc_constraints(plan):
    xdc = plan.files["top.xdc"]
    # 125 MHz differential clock on G21/F21, 8 ns period.
    assert re.search(r"set_property LOC G21 \[get_ports \"clk125_0__p\"\]", xdc)
    assert re.search(r"set_property LOC F21 \[get_ports \"clk125_0__n\"\]", xdc)
    assert 'set_property IOSTANDARD "LVDS_25" [get_ports "clk125_0__p"]' in xdc
    assert re.search(r"create_clock -name \S+ -period 8\.0 ", xdc)
    # Harness pins: switches 0-1 in, LEDs 0-1 out; CPU_RESET.
    for pin in ("AN14", "AP14", "AG14", "AF13", "AM13"):
        assert f"set_property LOC {pin} " in xdc


def test_plan_verilog_contains_the_design(plan):
    verilog = plan.files["top.v"]
    assert "module top(" in verilog
    assert re.search(r"module \S*dut", verilog)
    assert "IBUFDS" in verilog                       # differential clock input buffer


def test_board_top_rejects_bad_pins():
    with pytest.raises(ValueError, match=r"pins must be in the range \[1, 8\], not 9"):
        BoardTop(MacArray(1, 1), pins=9)


def test_cli_writes_plan(tmp_path, capsys):
    out = tmp_path / "plan"
    assert zcu102.main(["--design", "mac", "--out", str(out)]) == 0
    assert (out / "top.xdc").is_file() and (out / "top.tcl").is_file()
    assert zcu102.main(["--config", "huge", "--design", "mac", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset 'huge'" in err[0]
