"""The unmodified Debian kernel under transparent mode on a board with the SMMUv3."""

from __future__ import annotations

import pytest

from secvma.kpcore import invariants
from secvma.kpcore.transparent import TransparentKPCore
from secvma.machine.initramfs import INIT_BANNER, build_initramfs, debian_virtio_blk_modules
from secvma.machine.mailbox import MailboxServer
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot

pytestmark = [pytest.mark.qemu, pytest.mark.debian]


def test_debian_boots_with_the_identity_dma_map(debian: object) -> None:
    """The kernel (never shown the SMMU) reaches userspace; every ordinary page and nothing
    else is reachable by devices (INV-DMA, full walk, checked while the machine runs)."""
    hv = TransparentKPCore(protect_tables=False)  # SMMU + armed tables: see the closing note
    checked: list[list[invariants.Violation]] = []

    def hook(server: MailboxServer) -> None:
        if not checked and hv.st is not None and INIT_BANNER in server.qemu.log_path.read_bytes():
            checked.append(invariants.check(hv.st, server, full=True))

    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(),  # type: ignore[attr-defined]
                             timeout_s=300, smmu=True, dma_disk_mb=4), hv, watch=(INIT_BANNER,),
               poll_hook=hook)
    assert res.exit == "poweroff", res.reason
    assert INIT_BANNER.decode() in res.console
    assert "smmu" not in res.console.lower()  # the kernel never probed an SMMU
    assert not hv.refusals and not hv.internal_errors
    st = hv.state
    assert st.dma is not None and st.dma.identity is not None
    ident = st.dma.identity
    hyp_pages = (st.hyp_range[1] - st.hyp_range[0]) >> 12
    assert sum(ident.mapped) == st.pages.npages - hyp_pages
    assert checked == [[]]


def test_debian_virtio_blk_dma_through_the_identity_map(debian: object) -> None:
    """The unmodified kernel's own virtio-blk driver (Debian modules) writes 64 KiB to the
    disk and reads them back with O_DIRECT: real DMA, IOVA = PA, through the hypervisor's SMMU
    (MSI-X interrupts included); no DMA fault, no refusal."""
    hv = TransparentKPCore(protect_tables=False)  # SMMU + armed tables: see the closing note
    res = boot(MachineConfig(kernel=debian.kernel_image,  # type: ignore[attr-defined]
                             initrd=build_initramfs(debian_virtio_blk_modules()),
                             append="console=ttyAMA0 panic=-1 SECVMA_DMA=1", timeout_s=300,
                             smmu=True, dma_disk_mb=4), hv, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.reason
    assert "SECVMA-INIT: dma ok" in res.console, res.console[-2000:]
    assert not hv.refusals and not hv.internal_errors
    st = hv.state
    assert st.dma is not None and st.dma.fault_count == 0
