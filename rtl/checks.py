"""Parameter checks shared by every component's constructor.

* :func:`check_config` -- the ``cfg`` argument is an :class:`~golden.config.AccelConfig`.
* :func:`check_width` -- an integer parameter lies in its range (the configuration's own check).
* :func:`validating` -- wraps a constructor's checks: a rejected component is marked used, so
  that Amaranth's "created but never used" warning does not bury the error.
"""

from __future__ import annotations

from contextlib import contextmanager

from golden.config import AccelConfig, check_int

__all__ = ["check_config", "check_width", "validating"]

check_width = check_int


def check_config(cfg):
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
    return cfg


@contextmanager
def validating(component):
    """Context for a constructor's parameter checks (see the module docstring)."""
    try:
        yield
    except (TypeError, ValueError):
        component._MustUse__used = True
        raise
