"""Module-loader test support: `secvma.sim.modules`, with `build_modules` skipping the calling
test when (and only when) the cross toolchain is not installed."""

from pathlib import Path

import pytest

from secvma.sim import modules as _sim
from secvma.sim.modules import *  # noqa: F403


def build_modules(out: Path, names: tuple[str, ...] = ("mod_hello", "mod_counter", "mod_user"),
                  extra: dict[str, str] | None = None) -> dict[str, bytes]:
    try:
        return _sim.build_modules(out, names, extra)
    except _sim.ToolMissing as exc:
        pytest.skip(str(exc))
