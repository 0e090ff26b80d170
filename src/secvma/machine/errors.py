"""Errors of the machine layer. Each names the cause and, where there is one, the next step."""

from __future__ import annotations


class MachineError(RuntimeError):
    """Base class: the emulated machine could not be started or did not run to the end."""

    def __init__(self, message: str, *, hint: str | None = None, last_pc: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.last_pc = last_pc

    def __str__(self) -> str:
        s = self.message
        if self.last_pc is not None:
            s += f" (last PC {self.last_pc:#x})"
        if self.hint:
            s += f"; {self.hint}"
        return s


class ToolchainError(MachineError):
    """The cross toolchain, QEMU or dtc is missing or failed."""


class ImageError(MachineError):
    """A kernel, payload or initrd image is missing or not what it claims to be."""


class GuestTimeout(MachineError):
    """The guest did not finish within the time allowed."""


class QemuDied(MachineError):
    """QEMU exited while the hypervisor was still expecting the guest to run."""


class ProtocolError(MachineError):
    """The mailbox held something the trampoline never writes (garbage or corruption)."""


class HypervisorHalt(MachineError):
    """The hypervisor stopped the machine on purpose (e.g. a fatal policy decision)."""


class UnexpectedException(MachineError):
    """An exception reached an EL2 vector the trampoline does not expect (or an unhandled trap)."""
