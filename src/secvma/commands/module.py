"""Module toolchain commands: sign, verify, modinfo, relocate (filled in by the module work)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
