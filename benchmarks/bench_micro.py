#!/usr/bin/env python3
"""Trap round trips and Debian boot time, measured side by side (same as `secvma bench micro`).

Usage: python3 benchmarks/bench_micro.py [--iterations N] [--boot-runs N] [--json]
Targets: HVC <= 5 us median, stage-2 fault <= 8 us, MSR trap <= 5 us, boot null <= 1.3 x plain.
"""

from __future__ import annotations

import sys

from secvma.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "micro", *sys.argv[1:]]))
