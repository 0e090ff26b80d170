"""Module-loader support for the simulated machine: build the testbed's test modules, and a Python copy of the
testbed kernel's module path (guest/testbed/kernel/module.c) driving HVC 30/31/32 on the fake
machine: temporary image in ro-pool pages, SECvma 4.18 header rewrites, text / ro / data runs
mapped through trapped PTE stores, the checklist, `struct secvma_mod_arch`.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secvma.hvabi import HVC_INVALID, ModArch
from secvma.kpcore import KPCore, ModuleKeys, make_policy
from secvma.kpcore.modkeys import keys_for
from secvma.module import secvma_sig
from secvma.module.config import SECVMA_4_18
from secvma.module.elf import SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_RELA, ElfModule
from secvma.platform import PhysAddr
from secvma.sim.machine import (
    DATA,
    KIMAGE_VADDR,
    MOD_RO_POOL,
    MOD_TEXT_POOL,
    RODATA,
    TEXT,
    FakeMachine,
    kva,
    lva,
    map_vmalloc,
    slot_of,
)
from secvma.testbed.build import source_dir

MOD_SRC = source_dir() / "modules"
CFLAGS = ["-ffreestanding", "-nostdlib", "-fno-pic", "-mgeneral-regs-only",
          "-mno-outline-atomics", "-O2", "-mstrict-align", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fno-common",
          "-mbranch-protection=none", "-std=gnu11", "-mcmodel=small"]
MODULES_VA = 0xFFFF_8000_0400_0000
PAGE = 4096
KSYMTAB = RODATA + 0x1000
KSTRINGS = RODATA + 0x1800
KERNEL_EXPORTS = {  # name -> (value, gpl)
    "printk": (kva(TEXT + 0x100), False), "vmalloc": (kva(TEXT + 0x200), False),
    "vfree": (kva(TEXT + 0x300), False), "module_report": (kva(TEXT + 0x400), True),
    "secvma_test_value": (kva(DATA + 0x10), True),
}


class ToolMissing(RuntimeError):
    """The cross toolchain the test modules need is not installed."""


def build_modules(out: Path, names: tuple[str, ...] = ("mod_hello", "mod_counter", "mod_user"),
                  extra: dict[str, str] | None = None) -> dict[str, bytes]:
    """Compile + `ld -r -T module.lds` the testbed modules (and `extra` sources) into `out`.

    Raises `ToolMissing` only when the cross compiler or linker is not installed (a test skips
    on it); any other failure (a missing source, a compile error) is raised as it is: it is
    breakage, not an absent tool.
    """
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    ld = shutil.which("aarch64-linux-gnu-ld")
    if gcc is None or ld is None:
        raise ToolMissing("aarch64-linux-gnu-gcc / -ld not installed (apt-get install "
                          "gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu)")
    out.mkdir(parents=True, exist_ok=True)
    sources = {n: (MOD_SRC / f"{n}.c").read_text() for n in names}
    sources.update(extra or {})
    lds = MOD_SRC / "module.lds"
    result = {}
    for name, text in sources.items():
        tag = hashlib.sha256((text + (MOD_SRC / "module.h").read_text()
                              + lds.read_text()).encode()).hexdigest()[:12]
        ko = out / f"{name}-{tag}.ko"
        if not ko.is_file():
            src = out / f"{name}.c"
            src.write_text(text)
            obj = out / f"{name}.o"
            subprocess.run([gcc, *CFLAGS, "-I", str(MOD_SRC), "-c", "-o", str(obj), str(src)],
                           check=True, capture_output=True)
            subprocess.run([ld, "-r", "-T", str(lds), "-o", str(ko), str(obj)], check=True,
                           capture_output=True)
        result[name] = ko.read_bytes()
    return result


def fake_keys(modules: dict[str, bytes], key: Ed25519PrivateKey | None = None) -> ModuleKeys:
    return keys_for(key or Ed25519PrivateKey.generate(), modules.values())


def boot_with_exports(policy: str, keys: ModuleKeys | None, *, s2: str = "huge",
                      check_invariants: bool = True, smmu: bool = False,
                      ncpus: int = 2, ram: bytearray | None = None) -> tuple[FakeMachine, KPCore]:
    """A booted fake machine whose boot info lists KERNEL_EXPORTS in its rodata ksymtab."""
    hv = make_policy(policy, s2=s2, check_invariants=check_invariants, module_keys=keys)
    m = FakeMachine(hv, boot=False, smmu=smmu, ncpus=ncpus, ram=ram)
    plain = sorted(n for n, (_v, g) in KERNEL_EXPORTS.items() if not g)
    gpl = sorted(n for n, (_v, g) in KERNEL_EXPORTS.items() if g)
    names = b""
    entries = b""
    for n in plain + gpl:
        entries += struct.pack("<QQ", KERNEL_EXPORTS[n][0], kva(KSTRINGS + len(names)))
        names += n.encode() + b"\0"
    m.plat.write(PhysAddr(KSYMTAB), entries)
    m.plat.write(PhysAddr(KSTRINGS), names)
    info = m.kernel.boot_info()
    mid = KSYMTAB + 16 * len(plain)
    info = replace(info, ksymtab=KSYMTAB, ksymtab_end=mid, ksymtab_gpl=mid,
                   ksymtab_gpl_end=KSYMTAB + len(entries), modules_va=MODULES_VA,
                   modules_va_end=KIMAGE_VADDR)
    m.kernel.boot_info = lambda: info  # type: ignore[method-assign]
    m.boot()
    return m, hv


def _align(x: int, a: int) -> int:
    a = max(a, 1)
    return (x + a - 1) // a * a


@dataclass
class Run:
    va: int
    pa: int
    pages: int


@dataclass
class KernelModule:
    """What the fake kernel keeps per module (struct loaded_module)."""

    name: str
    modid: int
    tmp: Run
    text: Run
    ro: Run
    data: Run
    arch: ModArch
    addrs: dict[int, int]
    check: list[int]
    image: bytes
    hdr_va: int = 0
    aux_va: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class FakeModuleKernel:
    """The testbed kernel's module.c, on the fake machine (allocators are bump pointers)."""

    def __init__(self, m: FakeMachine) -> None:
        self.m = m
        self.text_next = MOD_TEXT_POOL
        self.ro_next = MOD_RO_POOL
        self.va_next = MODULES_VA
        self.free_runs: dict[tuple[int, int], list[int]] = {}

    # allocators: a freed run of the same size is reused (like the kernel's pool allocator)
    def _alloc(self, pool: int, pages: int) -> int:
        reuse = self.free_runs.get((pool, pages))
        if reuse:
            return reuse.pop()
        if pool == 0:
            pa, self.text_next = self.text_next, self.text_next + pages * PAGE
        elif pool == 1:
            pa, self.ro_next = self.ro_next, self.ro_next + pages * PAGE
        else:
            pa = self.m.kernel.page_next
            self.m.kernel.page_next += pages * PAGE
        return pa

    def map_run(self, pool: int, pages: int) -> Run:
        pa = self._alloc(pool, pages)
        va = self.va_next
        self.va_next += (pages + 1) * PAGE
        for i in range(pages):
            map_vmalloc(self.m, va + i * PAGE, pa + i * PAGE, pxn=False)
            self.m.kernel_write(pa + i * PAGE, bytes(PAGE))
        return Run(va, pa, pages)

    def unmap_run(self, pool: int, run: Run) -> None:
        for i in range(run.pages):
            r = self.m.store(lva(slot_of(self.m, run.va + i * PAGE, 3)), 0)
            assert r.done, r
        self.free_runs.setdefault((pool, run.pages), []).append(run.pa)

    def write_va(self, va: int, data: bytes, run: Run) -> None:
        self.m.kernel_write(run.pa + va - run.va, data)

    # the load path
    def prepare(self, ko: bytes) -> tuple[bytearray, list[int], ElfModule]:
        """4.18 header rewrites and the checklist (the signer's view, docs/eval-spec.md §3.3)."""
        elf = ElfModule(ko)
        msg = secvma_sig.build_message(elf, SECVMA_4_18)
        image = bytearray(ko)
        shoff = elf.e_shoff

        def put(idx: int, fmt: str, off: int, value: int) -> None:
            struct.pack_into(fmt, image, shoff + 64 * idx + off, value)

        for name in ("__versions", ".modinfo"):
            s = next((s for s in elf.sections if s.name == name and s.flags & SHF_ALLOC), None)
            if s is not None:
                put(s.index, "<Q", 8, s.flags & ~SHF_ALLOC)
        for e in msg.entries:
            put(e.index, "<I", 4, e.type)
            put(e.index, "<Q", 8, e.flags)
            put(e.index, "<Q", 32, e.size)
            put(e.index, "<I", 40, e.link)
            put(e.index, "<I", 44, e.info)
            put(e.index, "<Q", 48, e.addralign)
            if e.type == SHT_RELA:
                s = elf.sections[e.index]
                image[s.offset:s.offset + s.size] = msg.content_of(e.index)
        return image, list(msg.checklist), ElfModule(bytes(image))

    def load(self, ko: bytes, *, tamper: object = None) -> KernelModule:
        """Lay the module out, copy it, and issue HVC 30 (`tamper(km)` runs just before)."""
        image, check, view = self.prepare(ko)
        secs = view.sections
        sym_i, str_i = view.symtab_index, view.strtab_index
        listed = [i for i in check if secs[i].type != SHT_RELA]
        off: dict[int, tuple[int, int]] = {}
        tsz = rsz = dsz = 0
        groups = {"ct": [], "cr": [], "it": [], "ir": []}  # type: dict[str, list[int]]
        for i in listed:
            if i in (sym_i, str_i):
                continue
            s = secs[i]
            init = s.name.startswith(".init")
            groups[("i" if init else "c") + ("t" if s.flags & SHF_EXECINSTR else "r")].append(i)
        for i in groups["ct"]:
            tsz = _align(tsz, secs[i].addralign)
            off[i], tsz = (0, tsz), tsz + secs[i].size
        core_text = tsz
        tsz = _align(tsz, PAGE)
        for i in groups["cr"]:
            rsz = _align(rsz, secs[i].addralign)
            off[i], rsz = (1, rsz), rsz + secs[i].size
        rsz = _align(rsz, PAGE)
        init_text = tsz
        for i in groups["it"]:
            tsz = _align(tsz, secs[i].addralign)
            off[i], tsz = (0, tsz), tsz + secs[i].size
        for i in [*groups["ir"], sym_i, str_i]:
            rsz = _align(rsz, secs[i].addralign)
            off[i], rsz = (1, rsz), rsz + secs[i].size
        for init in (False, True):
            for s in secs[1:]:
                if s.index in off or s.index in (sym_i, str_i) or not s.flags & SHF_ALLOC \
                        or not s.flags & SHF_WRITE or s.name.startswith(".init") != init:
                    continue
                dsz = _align(dsz, s.addralign)
                off[s.index], dsz = (2, dsz), dsz + s.size
        tmp = self.map_run(1, _align(len(image), PAGE) // PAGE)
        text = self.map_run(0, max(_align(tsz, PAGE) // PAGE, 1))
        ro = self.map_run(1, max(_align(rsz, PAGE) // PAGE, 1))
        data = self.map_run(2, max(_align(dsz, PAGE) // PAGE, 1) + 1)  # + aux page
        runs = (text, ro, data)
        addrs = {i: runs[r].va + o for i, (r, o) in off.items()}
        for i, a in addrs.items():
            struct.pack_into("<Q", image, view.e_shoff + 64 * i + 16, a)
            s = secs[i]
            if s.type != 8:
                self.write_va(a, bytes(image[s.offset:s.offset + s.size]), runs[off[i][0]])
        aux_va = data.va + (data.pages - 1) * PAGE
        arch = ModArch(text.va, core_text, ro.va, rsz, text.va + init_text, tsz - init_text,
                       data.va, dsz, HVC_INVALID)
        name = next(v for k, v in _modinfo(view) if k == "name")
        km = KernelModule(name, HVC_INVALID, tmp, text, ro, data, arch, addrs, check,
                          bytes(image), tmp.va, aux_va)
        self.write_va(tmp.va, bytes(image), tmp)
        if tamper is not None:
            tamper(km)  # type: ignore[operator]
        self.write_va(aux_va, struct.pack(f"<{len(km.check)}I", *km.check), data)
        self.write_va(aux_va + 0x800, _arch_bytes(km.arch), data)
        km.modid = self.m.hvc(30, km.hdr_va, 0, aux_va + 0x800, aux_va, len(km.check))
        return km

    def free_tmp(self, km: KernelModule) -> None:
        self.unmap_run(1, km.tmp)

    def unload(self, km: KernelModule, *, init_free: bool = True) -> tuple[int, int]:
        """HVC 32 + HVC 31, then the kernel unmaps its runs (module_free)."""
        r32 = self.m.hvc(32, km.modid) if init_free else 0
        r31 = self.m.hvc(31, km.modid)
        if r31 != 0:
            return r32, r31  # still loaded (e.g. in use): the kernel keeps its runs
        self.unmap_run(0, km.text)
        self.unmap_run(1, km.ro)
        self.unmap_run(2, km.data)
        return r32, r31


def _arch_bytes(a: ModArch) -> bytes:
    return struct.pack("<9Q", a.text_va, a.text_size, a.ro_va, a.ro_size, a.init_text_va,
                       a.init_text_size, a.data_va, a.data_size, a.modid)


def _modinfo(elf: ElfModule) -> list[tuple[str, str]]:
    from secvma.module.symbols import modinfo

    return modinfo(elf)
