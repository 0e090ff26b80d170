"""Typed errors of the module toolchain.

Why one base class: module images come from an untrusted guest, so every way a file can be
malformed must surface as a `ModuleError` the caller can catch in one place (the hypervisor
loader turns it into a refusal), never as an IndexError or struct.error from deep inside.
"""

from __future__ import annotations


class ModuleError(Exception):
    """Base of every error the module toolchain raises on bad input or a failed check."""


class ElfFormatError(ModuleError):
    """The bytes are not a well-formed ELF64 little-endian AArch64 relocatable object."""


class TruncatedError(ElfFormatError):
    """A header, table or section extends past the end of the file."""


class DecompressError(ModuleError):
    """A `.ko.xz` / `.ko.zst` stream could not be decompressed."""


class LayoutError(ModuleError):
    """Sections cannot be laid out (missing .plt, bad alignment, too large)."""


class SymbolError(ModuleError):
    """Symbol resolution failed."""


class UnresolvedSymbol(SymbolError):
    """A strong undefined symbol is exported by neither the kernel nor a loaded module."""


class LicenceError(SymbolError):
    """A non-GPL module uses an `EXPORT_SYMBOL_GPL` symbol."""


class VersionMismatch(SymbolError):
    """A `__versions` CRC differs from the exporter's CRC (modversions)."""


class RelocationError(ModuleError):
    """A relocation cannot be applied."""


class UnsupportedRelocation(RelocationError):
    """The relocation type is not one Linux's arm64 module loader handles."""


class RelocationOverflow(RelocationError):
    """The computed value does not fit the relocated field (Linux returns -ERANGE)."""


class PltExhausted(RelocationError):
    """A branch needs a PLT veneer but the `.plt` section has no room left."""


class SignatureError(ModuleError):
    """A signature is malformed or does not verify."""


class MalformedSignature(SignatureError):
    """A signature trailer, PKCS#7 blob or hex string cannot be parsed."""


class InvalidModuleSignature(SignatureError):
    """The signature is well formed but does not match the module and key."""


class KeyFormatError(ModuleError):
    """A key or certificate file cannot be read."""


class MessageError(ModuleError):
    """The SECvma signed message cannot be built (docs/eval-spec.md §3.3 preconditions)."""
