"""Module toolchain commands: sign, verify, modinfo, relocate.

Exit codes: 0 success / valid; 1 the module or signature is bad (the reason is printed);
2 usage errors and unreadable key, certificate or symbol files.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import click

from secvma.module import secvma_sig
from secvma.module.api import ModuleImage, link_module, open_module
from secvma.module.config import LINUX_6_1, SECVMA_4_18, LoaderConfig
from secvma.module.elf import SHN_UNDEF, ShType
from secvma.module.errors import KeyFormatError, ModuleError
from secvma.module.linux_sig import load_certificate, verify_appended_signature
from secvma.module.relocations import reloc_name
from secvma.module.symbols import (
    Export,
    ExportKind,
    ExportTable,
    modinfo,
    module_exports,
    parse_symvers,
    versions,
)
from secvma.ui import console, emit_json, fail

CONFIGS: dict[str, LoaderConfig] = {"secvma-4.18": SECVMA_4_18, "linux-6.1": LINUX_6_1}
_config_opt = click.option(
    "--kernel", "kernel", type=click.Choice(sorted(CONFIGS)), default="secvma-4.18",
    show_default=True, help="Kernel whose load-time view is signed (PLT sizing differs).")


def _open(path: Path) -> ModuleImage:
    try:
        return open_module(path.read_bytes(), path.name)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except ModuleError as exc:
        fail(f"{path.name}: {exc}", code=1)


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not an integer (use 0x... for hex)") from exc


@click.command("sign")
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ed25519 private key: PEM (PKCS#8), a raw 32-byte seed, or 64 hex digits.")
@_config_opt
def sign_cmd(module: Path, key: Path, kernel: str) -> None:
    """Print MODULE's 128-hex-digit SECvma signature (docs/eval-spec.md §3.3) on stdout."""
    img = _open(module)
    try:
        sk = secvma_sig.load_private_key(key)
        sig = secvma_sig.sign_module(img.elf, sk, CONFIGS[kernel])
    except KeyFormatError as exc:
        fail(str(exc))
    except ModuleError as exc:
        fail(f"{module.name}: {exc}", code=1)
    click.echo(sig.hex())


@click.command("verify")
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="X.509 certificate (PEM/DER): check the appended Linux PKCS#7 signature.")
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ed25519 public key (PEM, 32 raw bytes or 64 hex): check a SECvma signature.")
@click.option("--signature", "sig_hex", help="The SECvma signature, 128 hex digits.")
@_config_opt
def verify_cmd(module: Path, cert: Path | None, pubkey: Path | None, sig_hex: str | None,
               kernel: str) -> None:
    """Exit 0 if MODULE's signature is valid, 1 (with the reason) if not."""
    if (cert is None) == (pubkey is None):
        fail("give either --cert CERT or --pubkey KEY --signature HEX")
    if pubkey is not None and sig_hex is None:
        fail("--pubkey needs --signature HEX")
    try:
        raw = module.read_bytes()
    except OSError as exc:
        fail(f"cannot read {module}: {exc.strerror}")
    try:
        if cert is not None:
            c = load_certificate(cert)
            from secvma.module.elf import decompress

            sig = verify_appended_signature(decompress(raw, module.name), c)
            click.echo(f"valid: Linux module signature ({sig.digest_algorithm}, "
                       f"{sig.signature_algorithm}) by {sig.signer.describe()}")
            return
        assert pubkey is not None and sig_hex is not None
        pk = secvma_sig.load_public_key(pubkey)
        signature = secvma_sig.parse_signature_hex(sig_hex)
        img = open_module(raw, module.name)
        msg = secvma_sig.verify_module(img.elf, signature, pk, CONFIGS[kernel])
        click.echo(f"valid: SECvma Ed25519 signature over {len(msg.message)} bytes "
                   f"({len(msg.checklist)} sections)")
    except KeyFormatError as exc:
        fail(str(exc))
    except ModuleError as exc:
        click.echo(f"invalid: {exc}")
        raise SystemExit(1) from exc


def _modinfo_dict(img: ModuleImage) -> dict[str, Any]:
    elf = img.elf
    counts: Counter[str] = Counter()
    for rs in elf.rela_sections():
        for _off, info, _add in elf.relocations(rs.index):
            counts[reloc_name(info & 0xFFFFFFFF)] += 1
    imports = sorted({s.name for s in elf.symbols() if s.shndx == SHN_UNDEF and s.name})
    exports = module_exports(elf, {}, img.name)
    out: dict[str, Any] = {
        "name": img.name,
        "size": len(elf.data),
        "modinfo": [f"{k}={v}" for k, v in modinfo(elf)],
        "sections": [
            {"index": s.index, "name": s.name, "type": ShType(s.type).name
             if s.type in ShType._value2member_map_ else hex(s.type),
             "flags": hex(s.flags), "size": s.size, "align": s.addralign}
            for s in elf.sections[1:]
        ],
        "relocations": dict(counts.most_common()),
        "relocation_total": sum(counts.values()),
        "symbols": elf.symbol_count,
        "imports": imports,
        "exports": [{"name": e.name, "kind": e.kind.value, "crc": e.crc} for e in exports],
        "versions": len(versions(elf)),
    }
    sig = img.linux_signature
    out["linux_signature"] = None if sig is None else {
        "digest": sig.digest_algorithm, "algorithm": sig.signature_algorithm,
        "signer": sig.signer.describe(), "pkcs7_bytes": sig.sig_len,
        "signature_bytes": len(sig.signature), "signed_attributes": sig.signed_attrs is not None,
    }
    try:
        msg = secvma_sig.build_message(elf)
        out["secvma_message"] = {"bytes": len(msg.message),
                                 "checklist": [e.name for e in msg.entries]}
    except ModuleError as exc:
        out["secvma_message"] = {"error": str(exc)}
    return out


@click.command("modinfo")
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def modinfo_cmd(module: Path, as_json: bool) -> None:
    """Show MODULE's sections, relocations by type, imports, exports and signatures."""
    img = _open(module)
    try:
        info = _modinfo_dict(img)
    except ModuleError as exc:
        fail(f"{module.name}: {exc}", code=1)
    if as_json:
        emit_json(info)
        return
    from rich.table import Table

    console.print(f"[bold]{info['name'] or module.name}[/]  {info['size']} bytes ELF, "
                  f"{info['symbols']} symbols, {info['versions']} __versions entries")
    for tag in info["modinfo"]:
        console.print(f"  {tag}")
    t = Table("#", "section", "type", "flags", "size", "align", title="sections")
    for s in info["sections"]:
        t.add_row(str(s["index"]), s["name"], s["type"], s["flags"], str(s["size"]),
                  str(s["align"]))
    console.print(t)
    r = Table("type", "count", title=f"relocations ({info['relocation_total']})")
    for k, v in info["relocations"].items():
        r.add_row(k, str(v))
    console.print(r)
    imports = info["imports"]
    console.print(f"imports ({len(imports)}): "
                  + ", ".join(imports[:20]) + (" …" if len(imports) > 20 else ""))
    exps = info["exports"]
    console.print(f"exports ({len(exps)}): "
                  + ", ".join(f"{e['name']} ({e['kind']})" for e in exps))
    console.print(f"Linux signature: {info['linux_signature'] or 'none'}")
    console.print(f"SECvma message: {info['secvma_message']}")


def _parse_assign(items: tuple[str, ...], what: str) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, val = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{what} {item!r}: expected NAME=ADDRESS")
        out[name] = _int(val)
    return out


@click.command("relocate")
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for <section>.bin files and layout.json.")
@click.option("--core-base", default="0xffff800008000000", show_default=True,
              help="Address of the core region.")
@click.option("--init-base", default="0xffff800008800000", show_default=True,
              help="Address of the init region.")
@click.option("--symvers", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Module.symvers: vmlinux exports (with CRCs) placed from --kernel-base.")
@click.option("--kernel-base", default="0xffff800009000000", show_default=True,
              help="Address of the first synthetic kernel export (every 0x40 bytes, by name).")
@click.option("--symbol", "symbols", multiple=True, metavar="NAME=ADDR",
              help="Define an exported symbol (repeatable; overrides --symvers).")
@click.option("--dep", "deps", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Dependency module, linked first at later bases; its exports are used.")
@click.option("--percpu-base", default="0", help="Per-CPU base for .data..percpu symbols.")
@click.option("--erratum-843419", "erratum", is_flag=True,
              help="Apply the Cortex-A53 erratum 843419 ADRP fix-up.")
@click.option("--no-licence-check", is_flag=True, help="Allow GPL-only exports to any licence.")
@click.option("--json", "as_json", is_flag=True, help="Print the layout as JSON.")
def relocate_cmd(module: Path, out_dir: Path, core_base: str, init_base: str,
                 symvers: Path | None, kernel_base: str, symbols: tuple[str, ...],
                 deps: tuple[Path, ...], percpu_base: str, erratum: bool,
                 no_licence_check: bool, as_json: bool) -> None:
    """Lay MODULE out, resolve its symbols and write each relocated section's bytes."""
    cfg = dataclasses.replace(LINUX_6_1, erratum_843419=erratum)
    exports = ExportTable()
    if symvers is not None:
        try:
            sv = parse_symvers(symvers.read_text())
        except (OSError, ModuleError) as exc:
            fail(f"cannot use {symvers}: {exc}")
        exports = ExportTable.kernel_from_symvers(sv, _int(kernel_base))
    defined = _parse_assign(symbols, "--symbol")
    cb, ib = _int(core_base), _int(init_base)
    try:
        tbl = ExportTable([e for e in _all(exports) if e.name not in defined])
        tbl.add(Export(n, a, ExportKind.PLAIN, "command line") for n, a in defined.items())
        step = 0x1000000
        for k, dep in enumerate(deps, 1):
            d = _open(dep)
            linked = link_module(d.elf, tbl, cb + k * step * 2, cb + k * step * 2 + step, cfg,
                                 check_licence=not no_licence_check)
            tbl.add(module_exports(d.elf, linked.addresses, d.name or dep.name))
        img = _open(module)
        linked = link_module(img.elf, tbl, cb, ib, cfg, percpu_base=_int(percpu_base),
                             check_licence=not no_licence_check)
    except ModuleError as exc:
        fail(f"{module.name}: {exc}", code=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for idx, buf in sorted(linked.relocated.contents.items()):
        name = img.elf.sections[idx].name
        fn = f"{idx:02d}{name}.bin".replace("/", "_")
        (out_dir / fn).write_bytes(bytes(buf))
        files[name] = {"index": idx, "address": hex(linked.addresses[idx]), "size": len(buf),
                       "file": fn}
    layout = {
        "module": img.name,
        "core": {"base": hex(cb), **linked.layout.core.__dict__},
        "init": {"base": hex(ib), **linked.layout.init.__dict__},
        "sections": files,
        "relocations": linked.relocated.total,
        "plt_entries": {k: p.num_entries for k, p in linked.relocated.plts.items()},
    }
    (out_dir / "layout.json").write_text(json.dumps(layout, indent=2) + "\n")
    if as_json:
        emit_json(layout)
    else:
        console.print(f"{img.name}: {len(files)} sections, {linked.relocated.total} relocations "
                      f"-> {out_dir}")


def _all(tbl: ExportTable) -> list[Export]:
    return [e for e in (tbl.get(n) for n in tbl.names()) if e is not None]


COMMANDS: list[click.Command] = [sign_cmd, verify_cmd, modinfo_cmd, relocate_cmd]
