"""Shared fixtures of the testbed tests: the built kernel and one long-lived session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from secvma.machine.errors import ToolchainError
from secvma.testbed.build import TestbedImage, build_testbed
from secvma.testbed.commands import TestbedSession
from secvma.testbed.nullabi import TestbedNullHypervisor


@pytest.fixture(scope="session")
def testbed() -> TestbedImage:
    """The built testbed; skips when the cross toolchain or QEMU is missing."""
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed (bash scripts/setup.sh)")
    try:
        return build_testbed()
    except ToolchainError as exc:
        if "not found" in exc.message:
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="module")
def session(testbed: TestbedImage) -> Iterator[TestbedSession]:
    """One testbed booted under policy none for a whole test module."""
    with TestbedSession(TestbedNullHypervisor(), image=testbed, command_timeout_s=30) as s:
        yield s

