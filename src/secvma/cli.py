"""The `secvma` command line: one entry point, subcommands registered from `secvma.commands`."""

from __future__ import annotations

import click

from secvma import __version__
from secvma.commands import all_commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="secvma")
def main() -> None:
    """SECvma kernel protection for Arm, in Python, on QEMU's virt board."""


for _cmd in all_commands():
    main.add_command(_cmd)


if __name__ == "__main__":
    main()
