"""Fixture commands: fetch the pinned Debian arm64 kernel, modules and Module.symvers."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
