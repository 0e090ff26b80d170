"""Machine commands: `secvma build` (guest code) and `secvma boot` (a kernel under EL2)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from secvma.machine.errors import MachineError
from secvma.machine.qemu import CPUS, DEFAULT_CPU
from secvma.ui import console, emit_json, fail

if TYPE_CHECKING:
    from secvma.kpcore.modauth import ModuleAuthority


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the built paths as JSON.")
def build(as_json: bool) -> None:
    """Build the guest code: EL2 trampoline, initramfs, testbed kernel, Debian guest (cached)."""
    from secvma.machine.build import build_trampoline
    from secvma.machine.initramfs import build_initramfs
    from secvma.testbed.build import build_testbed

    out: dict[str, str] = {}
    try:
        out["trampoline"] = str(build_trampoline().path)
        out["initramfs"] = str(build_initramfs())
        out["testbed"] = str(build_testbed().kernel_bin)
    except MachineError as e:
        fail(str(e), e.hint)
    from secvma import fixtures

    if fixtures.available() is not None:  # the Debian guest needs the fixtures and their kbuild
        from secvma.linux.guestbuild import build_linux_guest

        try:
            guest = build_linux_guest()
        except MachineError as e:
            fail(str(e), e.hint)
        except fixtures.FixturesUnavailable as e:
            console.print(f"[yellow]warning[/] Debian guest not built: {e}")
        else:
            out["linux_initramfs"] = str(guest.initramfs)
            out["secvma_lkdtm"] = str(guest.modules.lkdtm)
    else:
        console.print("[yellow]warning[/] Debian guest not built: run `secvma fixtures fetch`")
    try:  # optional: the module toolchain falls back to pure Python without it
        from secvma.module.native import build_native

        lib = build_native()
    except Exception as e:  # a failed accelerator build must not fail `build`
        console.print(f"[yellow]warning[/] native module accelerator not built: {e}")
    else:
        if lib is not None:
            out["module_accel"] = str(lib)
    if as_json:
        emit_json(out)
    else:
        for k, v in out.items():
            console.print(f"[green]built[/] {k}: {v}")


@click.command(name="boot")
@click.option("--kernel", type=click.Path(path_type=Path), default=None,
              help="Linux arm64 Image or flat EL1 payload (default: the Debian fixture kernel).")
@click.option("--initrd", type=click.Path(path_type=Path), default=None,
              help="Initramfs (default: secvma's /init when booting the Debian kernel).")
@click.option("--smp", type=click.IntRange(1, 8), default=1, show_default=True)
@click.option("--mem", "ram_mb", type=int, default=1024, show_default=True, help="RAM in MiB.")
@click.option("--append", default="console=ttyAMA0 panic=-1", show_default=True)
@click.option("--plain", is_flag=True, help="No hypervisor at all (QEMU boots the kernel at EL1).")
@click.option("--quiet", is_flag=True, help="Do not echo the guest console.")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.option("--policy", type=click.Choice(["none", "transparent"]), default="none",
              show_default=True,
              help="none: NullHypervisor; transparent: KPCore's rules for an unmodified kernel.")
@click.option("--protect-tables/--no-protect-tables", default=True, show_default=True,
              help="transparent: protect kernel tables, text, rodata and user roots (off: "
                   "only the TTBR1 and pinned-register rules).")
@click.option("--s2", "s2_mode", type=click.Choice(["huge", "4k"]), default="huge",
              show_default=True, help="transparent: stage-2 blocks where a block is one class, "
                                      "or 4 KB pages only.")
@click.option("--check-invariants", is_flag=True,
              help="transparent: check the protection invariants after every trap once armed.")
@click.option("--smmu", is_flag=True,
              help="Board with the SMMUv3 (owned by the hypervisor, hidden from the kernel) "
                   "and a virtio-blk-pci disk behind it; transparent: IOVA = PA of ordinary "
                   "pages only.")
@click.option("--trust-cert", "trust_certs", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="linux, transparent: also trust modules signed for this certificate (PEM or "
                   "DER; repeatable). Debian's module-signing certificate is always trusted.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--cpu", type=click.Choice(CPUS), default=DEFAULT_CPU, show_default=True,
              help="QEMU CPU model (max: FEAT_XNX, PAuth, BTI, LSE...; read from the ID "
                   "registers, never from this name).")
def boot_cmd(kernel: Path | None, initrd: Path | None, smp: int, ram_mb: int, append: str,
             plain: bool, quiet: bool, timeout: float, policy: str, protect_tables: bool,
             s2_mode: str, check_invariants: bool, smmu: bool, trust_certs: tuple[Path, ...],
             as_json: bool, cpu: str = DEFAULT_CPU) -> None:
    """Boot a kernel at EL1 under the NullHypervisor or the transparent KPCore policy.

    Exit status 0 when the guest powers off, 1 when the machine is halted instead or the
    transparent policy hit an internal error or a broken invariant."""
    from secvma.kpcore.transparent import TransparentKPCore
    from secvma.machine.initramfs import INIT_BANNER, build_initramfs
    from secvma.machine.null import NullHypervisor
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot
    from secvma.platform import Hypervisor

    if kernel is None:
        from secvma import fixtures

        fx = fixtures.available()
        if fx is None:
            fail("no kernel given and the Debian fixtures are not fetched",
                 "run `secvma fixtures fetch`, or pass --kernel PATH")
        kernel = fx.kernel_image
        initrd = initrd or build_initramfs()
    if plain and policy != "none":
        fail("--plain runs no hypervisor; it cannot be combined with --policy")
    if trust_certs and policy != "transparent":
        fail("--trust-cert is for the transparent policy's module authentication",
             "add --policy transparent")
    image = kernel.read_bytes() if policy == "transparent" and kernel.is_file() else None
    transparent = TransparentKPCore(protect_tables=protect_tables, s2=s2_mode, image=image,
                                    check_invariants=check_invariants,
                                    modules=_authority(image, trust_certs)) \
        if policy == "transparent" else None
    hv: Hypervisor | None = None if plain else transparent or NullHypervisor()
    try:
        res = boot(MachineConfig(kernel=kernel, initrd=initrd, ncpus=smp, ram_mb=ram_mb,
                                 append=append, plain=plain, timeout_s=timeout,
                                 smmu=smmu and not plain, dma_disk_mb=4 if smmu else 0,
                                 echo_console=not quiet and not as_json, cpu=cpu),
                   hv, watch=(INIT_BANNER,))
    except MachineError as e:
        fail(str(e), e.hint)
    except ValueError as e:
        fail(str(e))
    summary = {"exit": res.exit, "reason": res.reason, "wall_s": round(res.wall_s, 3),
               "userspace_s": res.first_seen.get(INIT_BANNER.decode()), "traps": res.traps,
               "fast_traps": res.fast_traps, "roundtrip_us": res.roundtrip_stats(),
               "policy": policy, "cpu": cpu,
               "feat_xnx": bool(transparent is not None and transparent.st is not None
                                and transparent.st.feat_xnx)}
    if transparent is not None:
        summary["transparent"] = transparent.summary()
    broken = transparent is not None and bool(transparent.internal_errors
                                               or transparent.invariant_violations)
    if as_json:
        emit_json(summary)
        if broken:
            raise SystemExit(1)
        _exit_unless_powered_off(res.exit, res.reason)
        return
    if transparent is not None:
        tsum = summary.pop("transparent")
        assert isinstance(tsum, dict)
        stats = tsum.get("stats", {})
        assert isinstance(stats, dict)
        summary["roots"] = (f"reserved {tsum['reserved_pg_dir']} swapper {tsum['swapper_pg_dir']}"
                            f" tramp {tsum['tramp_pg_dir']}")
        summary["protection"] = tsum.get("protection")
        summary["boot_patches"] = tsum.get("boot_patches")
        summary["emulated_table_stores"] = stats.get("table_stores", 0)
        refusals = tsum.get("refusals", [])
        assert isinstance(refusals, list)
        summary["refusals"] = len(refusals)
        for r in refusals[:20]:
            console.print(f"[red]refused[/] {r}")
    t = Table(title="boot summary")
    t.add_column("what")
    t.add_column("value")
    for k, v in summary.items():
        t.add_row(k, str(v))
    console.print(t)
    if broken:
        assert transparent is not None
        fail("transparent KPCore hit internal errors or broken invariants: "
             f"{transparent.internal_errors[:3]} {transparent.invariant_violations[:3]}")
    _exit_unless_powered_off(res.exit, res.reason)


def _exit_unless_powered_off(how: str, reason: str) -> None:
    """A boot succeeds when the guest powers itself off; a halt (the hypervisor stopped the
    machine: a panic, a stuck guest, an internal error) is a failure, exit status 1."""
    if how != "poweroff":
        fail(f"the guest did not power off: {how} ({reason})",
             "rerun without --quiet to see the guest console", code=1)


COMMANDS: list[click.Command] = [build, boot_cmd]


def _authority(image: bytes | None, trust_certs: tuple[Path, ...]) -> ModuleAuthority | None:
    """Module authentication for the Debian fixture kernel (`linux.trust`); None when the
    fixtures are not fetched (then every module's text stays PXN) or the Image is unknown."""
    from secvma import fixtures
    from secvma.linux.trust import TrustError, module_authority

    fx = fixtures.available()
    if image is None or fx is None:
        if trust_certs:
            fail("--trust-cert needs the Debian fixtures (the kernel's exports)",
                 "run `secvma fixtures fetch`")
        return None
    try:
        return module_authority(image, trust_certs=trust_certs, fx=fx)
    except TrustError as exc:
        fail(str(exc))
