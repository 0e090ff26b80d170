"""The kernel configuration facts the arm64 module loader's behaviour depends on.

Why a record: the same object file is laid out, PLT-sized and signed differently by
different kernels (docs/eval-spec.md §3.5: "if the config changes ... the signatures change").
Two presets matter: `LINUX_6_1` (Debian bookworm, the fixtures) and `SECVMA_4_18` (the
kernel SECvma's signer simulates, with its `sign_mod.h` macros).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoaderConfig:
    """Loader-relevant kernel options. Field names follow the CONFIG_ symbols."""

    randomize_base: bool = True  # CONFIG_RANDOMIZE_BASE: PLTs counted for branches
    module_plts: bool = True  # CONFIG_ARM64_MODULE_PLTS: veneers for far branches
    erratum_843419: bool = False  # ARM64_ERRATUM_843419 *and* the CPU needs the workaround
    strict_module_rwx: bool = True  # CONFIG_STRICT_MODULE_RWX: page-align layout boundaries
    module_unload: bool = True  # CONFIG_MODULE_UNLOAD: .exit* sections are core, not init
    kallsyms: bool = True  # CONFIG_KALLSYMS: symtab/strtab become SHF_ALLOC
    plt_entry_size: int = 12  # 6.1: adrp/add/br (12 B); 4.18: movn/movk/movk/br (16 B)
    ftrace_plts: int = 0  # NR_FTRACE_PLTS when DYNAMIC_FTRACE; 0 leaves the trampoline alone
    l1_cache_bytes: int = 64
    page_size: int = 4096

    def __post_init__(self) -> None:
        assert self.plt_entry_size in (12, 16), "arm64 PLT entries are 12 (6.1) or 16 (4.18) B"
        assert self.page_size & (self.page_size - 1) == 0, "page size is a power of two"


# Debian bookworm arm64 (6.1): RANDOMIZE_BASE=y, MODULE_PLTS=y, DYNAMIC_FTRACE_WITH_REGS=y.
# The 843419 workaround is off because the virt board's CPUs do not need it.
LINUX_6_1 = LoaderConfig(ftrace_plts=2)

# SECvma's 4.18 target as its signer hard-codes it (docs/eval-spec.md §3.5): KASLR off, erratum
# macro on but the ADRP case breaks first, no DYNAMIC_FTRACE, 16-byte PLT entries.
SECVMA_4_18 = LoaderConfig(randomize_base=False, erratum_843419=False, plt_entry_size=16,
                           ftrace_plts=0)
