"""ZCU102 (Zynq UltraScale+ XCZU9EG-2FFVB1156E) platform and its Vivado build plan.

:class:`ZCU102Platform` is an amaranth-boards style platform for the programmable logic of the
ZCU102 evaluation board: the 125 MHz and 300 MHz PL clocks, the CPU_RESET button, the eight PL
LEDs, the five push buttons, the eight DIP switches and the PL UART. It follows the conventions
of amaranth-boards' UltraScale+ boards (``KCU105Platform``, ``RFSoC4x2Platform``): device,
package and speed grade as class attributes, resources declared once, the default clock a
differential input.

Vivado is not part of the open toolchain, so this module produces the **build plan**
(``platform.build(top, do_build=False)``): the Verilog, the XDC constraints and the Tcl script
that Vivado would run (``build_top.sh``), without running anything. :func:`build_plan` puts a
design behind the out-of-context harness (:class:`platforms.harness.OOCHarness`) whose serial
pins go to a DIP switch (input chain) and an LED (signature output), so a design of any port
width fits the board. ``python -m platforms.zcu102 --config tiny --out DIR`` writes the plan of
the accelerator top to ``DIR``.

Trade-offs: the harness is a timing and resource vehicle, not a way to talk to the accelerator;
a real deployment connects the engine's streams to the processing system over AXI, which is
outside this platform. The PL DDR4, FMC, SFP and GT pins are not declared (nothing uses them).
"""

from __future__ import annotations

import argparse
import sys
from typing import ClassVar

from amaranth.build import Attrs, Clock, DiffPairs, Pins, Resource
from amaranth.hdl import Module
from amaranth.lib import io, wiring
from amaranth.vendor import XilinxPlatform
from amaranth_boards.resources import ButtonResources, LEDResources, SwitchResources, UARTResource

__all__ = ["BoardTop", "ZCU102Platform", "build_plan", "main"]


class ZCU102Platform(XilinxPlatform):
    """The ZCU102's programmable logic (pins from the board's master constraints, UG1182).

    ``default_clk`` is the 125 MHz oscillator (bank 47, LVDS_25); ``clk300`` is the user Si570
    (300 MHz at power-up, bank 64, DIFF_SSTL12). ``rst`` is the active-high CPU_RESET button.
    """

    device = "xczu9eg"
    package = "ffvb1156"
    speed = "2-e"
    default_clk = "clk125"
    default_rst = "rst"

    resources: ClassVar[list] = [
        Resource("clk125", 0, DiffPairs("G21", "F21", dir="i"), Clock(125e6),
                 Attrs(IOSTANDARD="LVDS_25")),
        Resource("clk300", 0, DiffPairs("AL8", "AL7", dir="i"), Clock(300e6),
                 Attrs(IOSTANDARD="DIFF_SSTL12")),
        Resource("rst", 0, Pins("AM13", dir="i"), Attrs(IOSTANDARD="LVCMOS33")),

        *LEDResources(pins="AG14 AF13 AE13 AJ14 AJ15 AH13 AH14 AL12",
                      attrs=Attrs(IOSTANDARD="LVCMOS33")),
        # North, west, south, east, centre.
        *ButtonResources(pins="AG15 AF15 AE15 AE14 AG13", attrs=Attrs(IOSTANDARD="LVCMOS33")),
        *SwitchResources(pins="AN14 AP14 AM14 AN13 AN12 AP12 AL13 AK13",
                         attrs=Attrs(IOSTANDARD="LVCMOS33")),
        UARTResource(0, rx="E13", tx="F13", attrs=Attrs(IOSTANDARD="LVCMOS33")),
    ]
    connectors: ClassVar[list] = []

    def __init__(self, *, toolchain="Vivado"):
        super().__init__(toolchain=toolchain)


class BoardTop(wiring.Component):
    """A design in the out-of-context harness, with the harness pins on board I/O.

    Input chain ``j`` is fed from DIP switch ``j``; MISR chain ``j`` drives LED ``j``. The
    clock and reset are the platform's default ones (``clk125``, CPU_RESET).

    Parameters
    ----------
    dut : wiring.Component
        The design (single ``sync`` domain).
    pins : int
        Serial pins in each direction, in the range [1, 8] (the board has 8 switches and LEDs).

    Members
    -------
    None: a board top-level has no ports; its I/O are platform resources.
    """

    def __init__(self, dut, *, pins=1):
        if isinstance(pins, bool) or not isinstance(pins, int):
            raise TypeError(f"pins must be an integer, not {pins!r}")
        if not 1 <= pins <= 8:
            raise ValueError(f"pins must be in the range [1, 8], not {pins}")
        from .harness import OOCHarness
        self.harness = OOCHarness(dut, in_pins=pins, out_pins=pins)
        self.pins = pins
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.harness = harness = self.harness
        for j in range(self.pins):
            switch = io.Buffer("i", platform.request("switch", j, dir="-"))
            led = io.Buffer("o", platform.request("led", j, dir="-"))
            m.submodules[f"switch_{j}"] = switch
            m.submodules[f"led_{j}"] = led
            m.d.comb += [harness.si[j].eq(switch.i), led.o.eq(harness.so[j])]
        return m


def build_plan(dut, *, name="top", pins=1, platform=None):
    """The Vivado build plan of ``dut`` (in the harness) for the ZCU102, without running Vivado.

    Parameters
    ----------
    dut : wiring.Component
        The design.
    name : str
        Top-level name: the plan holds ``{name}.v``, ``{name}.xdc``, ``{name}.tcl`` and
        ``build_{name}.sh``.
    pins : int
        Harness pins per direction (see :class:`BoardTop`).
    platform : ZCU102Platform, optional
        Defaults to a new ``ZCU102Platform()``.

    Returns
    -------
    amaranth.build.run.BuildPlan
        Its ``files`` dict maps file names to contents; ``extract(dir)`` writes them.
    """
    platform = ZCU102Platform() if platform is None else platform
    return platform.build(BoardTop(dut, pins=pins), name=name, do_build=False)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m platforms.zcu102",
        description="Write the ZCU102 Vivado build plan of the accelerator top (Vivado is not "
                    "run).")
    parser.add_argument("--config", default="tiny", help="preset name or JSON file")
    parser.add_argument("--design", choices=("accel", "engine", "mac"), default="accel",
                        help="accel: the whole accelerator (rtl.top.build_top(cfg)); engine: the "
                             "GEMM engine; mac: the config's MAC array")
    parser.add_argument("--out", default="build/zcu102", help="output directory")
    parser.add_argument("--pins", type=int, default=1, help="harness pins (1..8)")
    args = parser.parse_args(argv)

    from golden.config import get_config

    from .report import FlowError, _build_design
    try:
        cfg = get_config(args.config)
        design = _build_design(args.design, cfg)
        plan = build_plan(design, pins=args.pins)
    except (ValueError, TypeError, FlowError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan.extract(args.out)
    print(f"wrote {', '.join(sorted(plan.files))} to {args.out}; run build_top.sh with Vivado "
          f"on PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
