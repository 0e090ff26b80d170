"""secvma.module: AArch64 kernel-module toolchain (parse, sign, verify, lay out, relocate).

Modules: `elf` (strict parser), `load` (kernel's load-time header view), `layout`,
`symbols` (resolution, licences, modversions), `relocations` (the AArch64 decision table),
`link` (whole-module relocation with PLTs), `secvma_sig` (docs/eval-spec.md §3.3 message + Ed25519),
`linux_sig` (appended PKCS#7 signatures, certificates from an Image), `ldcheck` (GNU ld
oracle), `api` (the pipeline the hypervisor loader calls), `errors`.
"""

from secvma.module.errors import ModuleError

__all__ = ["ModuleError"]
