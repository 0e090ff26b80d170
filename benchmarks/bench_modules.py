#!/usr/bin/env python3
"""run-mod: insmod/rmmod of Debian's xfs and virtio_crypto (same as `secvma bench modules`).

Usage: python3 benchmarks/bench_modules.py [--reps N] [--json]
Hypervisor loader (hardened, per-run signing key) vs the kernel's own loader (policy none).
"""

from __future__ import annotations

import sys

from secvma.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "modules", *sys.argv[1:]]))
