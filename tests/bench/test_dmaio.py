"""Disk and network DMA of the unmodified Debian guest through the hypervisor's SMMU."""

from __future__ import annotations

import shutil

import pytest

from secvma import fixtures as fx
from secvma.bench.dmaio import CONFIGS, _dd, measure
from secvma.bench.harness import Done


@pytest.mark.qemu
@pytest.mark.debian
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3 (scripts/setup.sh installs it)")
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


class _Guest:
    """Answers one command with a fixed result (what the console agent returns)."""

    def __init__(self, code: int, out: str) -> None:
        self.done = Done(code, out, "")
        self.ran: list[str] = []

    def run(self, script: str, timeout: float) -> Done:
        self.ran.append(script)
        return self.done


def test_dd_figure_is_dds_own_bytes_over_seconds() -> None:
    g = _Guest(0, "64+0 records in\n64+0 records out\n67108864 bytes (67 MB, 64 MiB) copied, "
                  "0.5 s, 134 MB/s\n")
    assert _dd(g, "dd if=/dev/zero of=/x bs=1M count=64") == pytest.approx(128.0)  # type: ignore[arg-type]
    assert g.ran == ["dd if=/dev/zero of=/x bs=1M count=64 2>&1"]


def test_failed_or_unparsable_dd_is_an_error_not_a_figure() -> None:
    with pytest.raises(RuntimeError, match="failed"):
        _dd(_Guest(1, "dd: error writing '/x': No space left on device\n"), "dd ...")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="failed"):
        _dd(_Guest(0, "nothing useful\n"), "dd ...")  # type: ignore[arg-type]
