"""Real DMA on QEMU: the testbed's virtio-blk disk behind the hypervisor's SMMUv3."""

from __future__ import annotations

import pytest

from secvma.kpcore import KPCore
from secvma.machine import layout
from secvma.testbed.build import TestbedImage
from secvma.testbed.commands import TestbedSession
from secvma.testbed.policies import make_hypervisor
from secvma.testbed.run import run_workloads

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("policy", ["none", "secvma2024", "hardened"])
def test_dma_workload_moves_and_checks_real_data(testbed: TestbedImage, policy: str) -> None:
    """1 MiB through the disk and back, identical; under a protecting policy through an SMMU
    context, with zero refusals and INV-DMA (and every other invariant) holding after each trap."""
    kw = {} if policy == "none" else {"check_invariants": True}
    hv = make_hypervisor(policy, "huge", **kw)
    rep = run_workloads(hv, ["dma"], policy=policy, s2="huge", image=testbed)
    w = rep.workloads["dma"]
    assert w.ok, (w.message, rep.reason, rep.refusals)
    assert "identical" in w.message
    assert ("direct" if policy == "none" else "SMMU context") in w.message
    assert not rep.refusals and not rep.invariant_violations
    if isinstance(hv, KPCore):
        assert rep.hvc.get(25, 0) >= 2 * 256 and rep.hvc.get(25) == rep.hvc.get(27, 0) + 2
        st = hv.state
        assert st.dma is not None and st.dma.smmu.enabled
        assert sum(st.pages.count) == 2  # every buffer unmapped again; the ring pages stay


def test_unmapped_dma_is_refused_and_reported(testbed: TestbedImage) -> None:
    """Under hardened a transfer to an IOVA the kernel never had mapped is stopped by the
    SMMU; the fault (stream, address, reason) reaches `refusals`; the kernel goes on."""
    hv = make_hypervisor("hardened", "huge")
    assert isinstance(hv, KPCore)
    with TestbedSession(hv, image=testbed, command_timeout_s=30) as s:
        page = s.alloc_page()
        before = s.platform.read(page.ret[1], 512)
        r = s.dma(0, 512, to_device=True, sector=8, fill=0x77, map_first=True)
        assert r.ok, r.msg
        s.dma(page.ret[1], 512, sector=8)  # no mapping asked for
        assert s.platform.read(page.ret[1], 512) == before
        assert s.nop().ok
        sid = r.ret[2]
        hv.poll(s.platform)
        faults = [f for f in hv.refusals if f.rule == "dma-fault"]
        assert faults and all(f.values["stream"] == sid for f in faults)
        assert any(f.values["iova"] & ~0xFFF == page.ret[1] for f in faults)
        assert not hv.check_invariants(s.platform)


def test_kernel_never_sees_the_smmu(testbed: TestbedImage) -> None:
    """The DTB given to the kernel has no SMMU node and no iommu-map; the SMMU's registers are
    not mapped at stage 2 for the kernel (a load from them is refused)."""
    hv = make_hypervisor("hardened", "huge")
    with TestbedSession(hv, image=testbed, command_timeout_s=30) as s:
        assert s.platform.smmu is not None and s.platform.smmu.base == layout.SMMU_BASE
        va = s.vmap(layout.SMMU_BASE, 0x1000, 0)
        assert va.ok
        r = s.read(va.value)
        assert r.faulted
    from secvma.machine.build import build_dir
    from secvma.machine.dtb import dump_base_dts

    dts = dump_base_dts(build_dir() / "dtb", 1, 1024 << 20, "cortex-a57")
    assert "smmu" not in dts and "iommu-map" not in dts
