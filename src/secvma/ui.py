"""Shared output helpers for the CLI: rich console, JSON output, clear errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def emit_json(obj: Any) -> None:
    """Print `obj` as indented JSON on stdout (for `--json`)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def fail(message: str, hint: str | None = None, code: int = 2) -> NoReturn:
    """Print an error (and the next step to take) on stderr and exit with `code`."""
    err_console.print(f"[bold red]error:[/] {message}")
    if hint:
        err_console.print(f"[yellow]next step:[/] {hint}")
    raise SystemExit(code)
