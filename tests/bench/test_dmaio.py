"""Disk and network DMA of the unmodified Debian guest through the hypervisor's SMMU."""

from __future__ import annotations

import shutil

import pytest

from secvma import fixtures as fx
from secvma.bench.dmaio import CONFIGS, measure

pytestmark = [pytest.mark.qemu, pytest.mark.debian, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("iperf3") is None,
                                 reason="needs iperf3 (scripts/setup.sh installs it)")]


def test_virtio_blk_and_net_run_through_the_identity_map(debian: fx.FixtureSet) -> None:
    """The guest's own virtio-blk (root disk) and virtio-net drivers, both PCI with
    iommu_platform=on, move data both ways while every DMA is translated by the hypervisor's
    SMMU identity map: dd and iperf3 complete, the SMMU recorded no fault, nothing refused."""
    r = measure("transparent-regs+smmu", mb=4, seconds=1, reps=1)
    assert not r["error"], r
    for k in ("disk_write_mib_s", "disk_read_mib_s", "net_rx_mbit_s", "net_tx_mbit_s"):
        assert r[k] is not None and r[k] > 0, (k, r)
    assert r["refusals"] == []
    assert r["dma"]["faults"] == 0 and r["dma"]["pages_mapped"] > 100_000, r["dma"]


def test_unknown_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown configuration"):
        measure("transparent+iommu")
    assert "transparent-regs+smmu" in CONFIGS
