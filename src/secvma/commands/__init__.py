"""CLI subcommands, one module per area; each exposes `COMMANDS`, a list of click commands."""

from __future__ import annotations

import importlib

import click

# Each name is a module of this package owned by one area of the code base.
_MODULES = ("demo", "attack", "machine", "bench", "harness", "fixtures", "module", "run", "inspect", "fuzz")


def all_commands() -> list[click.Command]:
    """Every command of every area, in registration order."""
    out: list[click.Command] = []
    for name in _MODULES:
        mod = importlib.import_module(f"secvma.commands.{name}")
        out.extend(mod.COMMANDS)
    return out
