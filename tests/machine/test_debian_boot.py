"""The unmodified Debian arm64 kernel boots to userspace at EL1 under the NullHypervisor."""

from __future__ import annotations

import pytest

from secvma import fixtures as fx
from secvma.machine.initramfs import INIT_BANNER, build_initramfs
from secvma.machine.null import NullHypervisor
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot

pytestmark = [pytest.mark.qemu, pytest.mark.debian, pytest.mark.slow]


@pytest.mark.parametrize("smp", [1, 2])
def test_debian_kernel_reaches_userspace_at_el1(debian: fx.FixtureSet, smp: int) -> None:
    """With -smp 1 and 2 every CPU runs the kernel at EL1 and /init prints, then powers off."""
    hyp = NullHypervisor()
    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(), ncpus=smp,
                             timeout_s=90), hyp, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.console[-2000:]
    assert "CPU: All CPU(s) started at EL1" in res.console
    assert f"Brought up 1 node, {smp} CPU" in res.console
    assert INIT_BANNER.decode() in res.first_seen
    assert "reboot: Power down" in res.console
    assert hyp.events["CpuStart"] == smp
