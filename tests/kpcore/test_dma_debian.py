"""The unmodified Debian kernel under transparent mode on a board with the SMMUv3."""

from __future__ import annotations

import pytest

from secvma.kpcore import invariants
from secvma.kpcore.pages import Owner, Usage
from secvma.kpcore.transparent import TransparentKPCore
from secvma.machine.initramfs import INIT_BANNER, build_initramfs, debian_virtio_blk_modules
from secvma.machine.mailbox import MailboxServer
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot

pytestmark = [pytest.mark.qemu, pytest.mark.debian]


def test_debian_boots_with_the_identity_dma_map_and_armed_protection(debian: object) -> None:
    """The kernel (never shown the SMMU) reaches userspace under armed transparent: exactly
    the ordinary pages are reachable by devices - the thousands of pages arming turns into
    tables, text and rodata left the map in a few batched invalidations. INV-DMA holds after
    every trap (`check_invariants`) and in a full walk of the IO tables while the machine runs."""
    hv = TransparentKPCore(image=debian.kernel_image.read_bytes(),  # type: ignore[attr-defined]
                           check_invariants=True)
    checked: list[list[invariants.Violation]] = []

    def hook(server: MailboxServer) -> None:
        if not checked and hv.st is not None and INIT_BANNER in server.qemu.log_path.read_bytes():
            checked.append(invariants.check_dma(hv.st, server, full=True))

    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(),  # type: ignore[attr-defined]
                             timeout_s=300, smmu=True, dma_disk_mb=4), hv, watch=(INIT_BANNER,),
               poll_hook=hook)
    assert res.exit == "poweroff", res.reason
    assert INIT_BANNER.decode() in res.console
    assert "smmu" not in res.console.lower()  # the kernel never probed an SMMU
    assert hv.armed
    assert not hv.refusals and not hv.internal_errors and not hv.invariant_violations
    st = hv.state
    assert st.dma is not None and st.dma.identity is not None
    ident = st.dma.identity
    ordinary = sum(1 for i in range(st.pages.npages)
                   if st.pages.owner[i] == Owner.HOST and st.pages.usage[i] == Usage.NONE)
    assert sum(ident.mapped) == ordinary
    assert ident.unmapped > 3000  # text, rodata and the kernel's tables left the device map
    assert ident.flushes < 20  # ... in batches, not one invalidation per page
    assert checked == [[]]


def test_debian_virtio_blk_dma_through_the_identity_map(debian: object) -> None:
    """The unmodified kernel's own virtio-blk driver (Debian modules) writes 64 KiB to the
    disk and reads them back with O_DIRECT: real DMA, IOVA = PA, through the hypervisor's SMMU
    (MSI-X interrupts included); no DMA fault, no refusal."""
    # registers only: after arming, module text is not executable until module authentication
    # (issue 10 item 4) lands, and the disk driver is a module
    hv = TransparentKPCore(protect_tables=False)
    res = boot(MachineConfig(kernel=debian.kernel_image,  # type: ignore[attr-defined]
                             initrd=build_initramfs(debian_virtio_blk_modules()),
                             append="console=ttyAMA0 panic=-1 SECVMA_DMA=1", timeout_s=300,
                             smmu=True, dma_disk_mb=4), hv, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.reason
    assert "SECVMA-INIT: dma ok" in res.console, res.console[-2000:]
    assert not hv.refusals and not hv.internal_errors
    st = hv.state
    assert st.dma is not None and st.dma.fault_count == 0
