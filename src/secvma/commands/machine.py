"""Machine commands: boot, bench micro, setup."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
