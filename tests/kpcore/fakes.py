"""The fake machine of the KPCore logic tests: `secvma.sim.machine` (shared with `secvma fuzz`)."""

from secvma.sim.machine import *  # noqa: F403
