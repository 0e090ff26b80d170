"""The fake SMMUv3 of the DMA logic tests: `secvma.sim.smmu` (shared with `secvma fuzz`)."""

from secvma.sim.smmu import *  # noqa: F403
