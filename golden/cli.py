"""Command-line helpers shared by every layer's CLI (``rtl.top``, ``sim.bench``, ...)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["ArgumentParser", "fail"]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(prog: str, message) -> int:
    """Print ``PROG: error: MESSAGE`` on one line to stderr and return exit status 2."""
    text = " ".join(str(message).split())
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2
