"""Fixture commands: fetch the pinned Debian arm64 kernel, modules and Module.symvers."""

from __future__ import annotations

import click

from secvma import fixtures as fx
from secvma.ui import console, emit_json, fail


@click.group("fixtures")
def fixtures_group() -> None:
    """Debian arm64 fixtures (kernel Image, config, Module.symvers, four signed modules)."""


@fixtures_group.command("fetch")
@click.option("--force", is_flag=True,
              help="Extract again even if the cache looks complete (verified .debs are reused).")
@click.option("--json", "as_json", is_flag=True, help="Print the fixture set as JSON.")
def fetch_cmd(force: bool, as_json: bool) -> None:
    """Fetch (or reuse) the fixtures via a private apt state; exit 1 if unreachable."""
    try:
        fs = fx.fetch(force=force)
    except fx.FixturesUnavailable as exc:
        if as_json:
            emit_json({"available": False, "reason": str(exc)})
            raise SystemExit(1) from exc
        fail(f"Debian fixtures unavailable: {exc}",
             hint="check network access to the configured Debian archive", code=1)
    if as_json:
        emit_json({"available": True, **fs.to_json()})
        return
    note = "" if fs.pinned else " [yellow](fallback: pinned version no longer served)[/]"
    console.print(f"kernel {fs.kernel_version} ({fs.package_version}){note}")
    console.print(f"  root     {fs.root}")
    console.print(f"  Image    {fs.kernel_image}")
    console.print(f"  config   {fs.config}")
    console.print(f"  symvers  {fs.symvers}")
    for name, path in fs.modules.items():
        console.print(f"  module   {name}: {path}")
    for cert in fs.signing_certs:
        console.print(f"  cert     {cert}")


@fixtures_group.command("path")
@click.option("--json", "as_json", is_flag=True, help="Print the cached fixture set as JSON.")
def path_cmd(as_json: bool) -> None:
    """Print the fixture cache directory (no network); exit 1 if not fetched yet."""
    fs = fx.available()
    if as_json:
        emit_json({"available": fs is not None, "root": str(fx.cache_root()),
                   **(fs.to_json() if fs else {})})
    else:
        click.echo(str(fx.cache_root()))
    if fs is None:
        raise SystemExit(1)


COMMANDS: list[click.Command] = [fixtures_group]
