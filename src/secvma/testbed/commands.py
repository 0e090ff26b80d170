"""The host side of the testbed's command interface, and the attack-primitive API.

The kernel polls `secvma_cmd` (`struct secvma_cmd`, layout in `secvma.hvabi.CmdLayout`) from
its idle loop. The host writes a command there through guest RAM and bumps `seq`; the kernel
runs it and sets `done = seq`. Everything happens in the mailbox server's poll hook
(`CommandDriver.poll`), i.e. in the thread that serves traps, so the host-side wall time of a
command is measured to the poll period (~0.2 ms) and never races trap handling.

Two ways to drive it:

* `run_commands(hypervisor, [Command, ...])`: boot, run a fixed list, power off (one thread).
* `TestbedSession(hypervisor)`: a context manager with blocking calls (`s.write(...)`,
  `s.read(...)`, `s.workload("hackbench")` ...), the machine served by a background thread.
  This is what an attack scenario uses: decide the next step from the previous result.

Every primitive answers a `CommandResult`: `ok`, or `faulted` with the ESR/FAR of the exception
the kernel caught on its own access (an exception-table fixup, not a crash), or another status.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from secvma.hvabi import (
    CMD,
    CMD_MAGIC,
    CMD_MSG_LEN,
    CMD_NAME_LEN,
    DMA_DIR_FROM_DEVICE,
    DMA_DIR_TO_DEVICE,
    DMA_F_FILL,
    DMA_F_MAP,
    DMA_F_NO_UNMAP,
    FORM_WIDTHS,
    MODLOAD_F_NO_INIT,
    BootInfo,
    Form,
    Op,
    Status,
)
from secvma.machine.mailbox import MailboxServer, RunResult
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.platform import Hypervisor, PhysAddr, Platform, SysReg
from secvma.testbed.build import TestbedImage, build_testbed
from secvma.testbed.image import KernelImage

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Command:
    """One request to the kernel: `op` with up to six integer arguments and a name."""

    op: Op
    args: tuple[int, ...] = ()
    name: str = ""
    upload: bytes = b""
    """Bytes copied into the kernel's upload buffer first (MODLOAD)."""
    upload_offset: int = 0
    """Where in the upload buffer `upload` goes (several modules can stay uploaded)."""

    def __post_init__(self) -> None:
        if len(self.args) > 6:
            raise ValueError(f"{self.op.name}: at most 6 arguments")
        if len(self.name.encode()) >= CMD_NAME_LEN:
            raise ValueError(f"{self.op.name}: name longer than {CMD_NAME_LEN - 1} bytes")


@dataclass(frozen=True)
class CommandResult:
    """What the kernel answered. `wall_s` is measured by the host, `guest_s` by CNTVCT."""

    command: Command
    status: Status
    ret: tuple[int, int, int, int] = (0, 0, 0, 0)
    esr: int = 0
    far: int = 0
    msg: str = ""
    wall_s: float = 0.0
    guest_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def faulted(self) -> bool:
        """The access raised a synchronous exception the kernel caught (see esr/far)."""
        return self.status == Status.FAULT

    @property
    def value(self) -> int:
        return self.ret[0]

    @property
    def signed(self) -> int:
        """`ret[0]` as a signed 64-bit number (exit statuses, negative error codes)."""
        v = self.ret[0]
        return v - (1 << 64) if v >> 63 else v

    @property
    def ec(self) -> int:
        """Exception class of the caught fault (ESR bits 31:26)."""
        return self.esr >> 26


class MachineStopped(RuntimeError):
    """The machine ended (power-off, hypervisor halt, crash) before a command completed."""


@dataclass
class _Pending:
    command: Command
    event: threading.Event = field(default_factory=threading.Event)
    result: CommandResult | None = None
    error: BaseException | None = None
    t_post: float = 0.0

    def wait(self, timeout: float | None) -> CommandResult:
        if not self.event.wait(timeout):
            raise TimeoutError(f"{self.command.op.name} did not complete in {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class CommandDriver:
    """Feeds queued commands to the kernel from the serve loop (`poll` is the poll hook)."""

    def __init__(self, cmd_pa: int, on_result: Callable[[CommandResult], None] | None = None):
        self.cmd_pa = cmd_pa
        self.on_result = on_result
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._inflight: _Pending | None = None
        self._seq = 0
        self.ready_at: float | None = None
        """perf_counter() when the kernel's command loop was first seen ready."""
        self.upload_pa = 0
        self.upload_size = 0
        self.boot_info_pa = 0
        self.cntfrq = 62_500_000
        self.server: MailboxServer | None = None

    def submit(self, command: Command) -> _Pending:
        p = _Pending(command)
        self._queue.put(p)
        return p

    def poll(self, server: MailboxServer) -> None:
        """Complete the command in flight, or post the next one (called every ~0.2 ms)."""
        self.server = server
        if self.ready_at is None and not self._check_ready(server):
            return
        if self._inflight is not None:
            if server.read_u64(PhysAddr(self.cmd_pa + CMD.done)) == self._seq:
                self._complete(server, self._inflight, time.perf_counter())
                self._inflight = None
            else:
                return
        try:
            p = self._queue.get_nowait()
        except queue.Empty:
            return
        self._post(server, p)

    def abort(self, error: BaseException) -> None:
        """Fail the command in flight and everything queued (the machine is gone)."""
        pending = [self._inflight] if self._inflight else []
        self._inflight = None
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for p in pending:
            p.error = error
            p.event.set()

    # ---- mailbox access ----------------------------------------------------------------
    def _check_ready(self, server: Platform) -> bool:
        head = server.read(PhysAddr(self.cmd_pa), 16)
        if int.from_bytes(head[0:8], "little") != CMD_MAGIC or head[12] != 1:
            return False
        u64 = self._u64
        self.ready_at = time.perf_counter()
        self.upload_pa = u64(server, CMD.upload_pa)
        self.upload_size = u64(server, CMD.upload_size)
        self.boot_info_pa = u64(server, CMD.boot_info)
        self.cntfrq = u64(server, CMD.cntfrq) or self.cntfrq
        self._seq = u64(server, CMD.done)
        return True

    def _u64(self, server: Platform, off: int) -> int:
        return server.read_u64(PhysAddr(self.cmd_pa + off))

    def _post(self, server: Platform, p: _Pending) -> None:
        c = p.command
        if c.upload:
            if c.upload_offset < 0 or len(c.upload) + c.upload_offset > self.upload_size:
                p.result = CommandResult(c, Status.BADARG, msg=f"upload of {len(c.upload)} bytes "
                                         f"exceeds the kernel's {self.upload_size}-byte buffer")
                p.event.set()
                return
            server.write(PhysAddr(self.upload_pa + c.upload_offset), c.upload)
        base = self.cmd_pa
        args = [a & MASK64 for a in c.args] + [0] * (6 - len(c.args))
        server.write(PhysAddr(base + CMD.op), int(c.op).to_bytes(4, "little") + bytes(4))
        server.write(PhysAddr(base + CMD.arg), b"".join(a.to_bytes(8, "little") for a in args))
        server.write(PhysAddr(base + CMD.name), c.name.encode().ljust(CMD_NAME_LEN, b"\0"))
        self._seq += 1
        p.t_post = time.perf_counter()
        server.write_u64(PhysAddr(base + CMD.seq), self._seq)
        self._inflight = p

    def _complete(self, server: Platform, p: _Pending, t_done: float) -> None:
        raw = server.read(PhysAddr(self.cmd_pa), CMD.msg + CMD_MSG_LEN)

        def q(off: int) -> int:
            return int.from_bytes(raw[off:off + 8], "little")

        status_raw = int.from_bytes(raw[CMD.status:CMD.status + 4], "little")
        try:
            status = Status(status_raw)
        except ValueError:
            status = Status.FAILED
        msg = raw[CMD.msg:CMD.msg + CMD_MSG_LEN].split(b"\0", 1)[0].decode(errors="replace")
        ret = (q(CMD.ret), q(CMD.ret + 8), q(CMD.ret + 16), q(CMD.ret + 24))
        guest_s = ((q(CMD.t_end) - q(CMD.t_start)) & MASK64) / self.cntfrq
        p.result = CommandResult(p.command, status, ret, q(CMD.esr), q(CMD.far), msg,
                                 t_done - p.t_post, guest_s)
        if self.on_result is not None:
            self.on_result(p.result)
        p.event.set()


# ---- building commands -------------------------------------------------------------------

def _form(form: Form | str) -> Form:
    if isinstance(form, Form):
        return form
    try:
        return Form[form.upper()]
    except KeyError:
        raise ValueError(f"unknown store form {form!r}; one of "
                         f"{', '.join(f.name.lower() for f in Form)}") from None


def _sysreg(reg: SysReg | str | int) -> int:
    if isinstance(reg, str):
        try:
            return int(SysReg[reg.upper()])
        except KeyError:
            raise ValueError(f"unknown system register {reg!r}; one of "
                             f"{', '.join(r.name for r in SysReg)}") from None
    return int(reg)


def write_cmd(addr: int, value: int, width: int = 8, form: Form | str = Form.STR,
              value2: int = 0) -> Command:
    """Store `value` (and `value2` for pair forms) at kernel VA `addr` with one instruction."""
    f = _form(form)
    if width not in FORM_WIDTHS[f]:
        raise ValueError(f"form {f.name.lower()} has widths {FORM_WIDTHS[f]}, not {width}")
    return Command(Op.WRITE, (addr, value, width, int(f), value2))


class Primitives:
    """The attack building blocks; subclasses supply `call` (one command, one result)."""

    def call(self, command: Command) -> CommandResult:
        raise NotImplementedError

    def nop(self) -> CommandResult:
        return self.call(Command(Op.NOP))

    def write(self, addr: int, value: int, width: int = 8, form: Form | str = Form.STR,
              value2: int = 0) -> CommandResult:
        """Kernel store at VA `addr`; for `stxr`, `ret[1]` is the exclusive status (0 = stored)."""
        return self.call(write_cmd(addr, value, width, form, value2))

    def read(self, addr: int, width: int = 8) -> CommandResult:
        """Kernel load (LDR) of `width` bytes at VA `addr`; the value is `.value`."""
        return self.call(Command(Op.READ, (addr, width)))

    def exec(self, addr: int, arg: int = 0) -> CommandResult:
        """Branch-with-link to VA `addr` with x0 = arg; `.value` is x0 when it returns."""
        return self.call(Command(Op.EXEC, (addr, arg)))

    def msr(self, reg: SysReg | str | int, value: int) -> CommandResult:
        """MSR to an EL1 system register (index of `secvma.platform.SysReg`)."""
        return self.call(Command(Op.MSR, (_sysreg(reg), value)))

    def mrs(self, reg: SysReg | str | int) -> CommandResult:
        return self.call(Command(Op.MRS, (_sysreg(reg),)))

    def hvc(self, nr: int, *args: int) -> CommandResult:
        """A raw `hvc #0` with x0 = nr, x1.. = args; `.value` is x0 afterwards."""
        if len(args) > 5:
            raise ValueError("HVC takes at most 5 arguments after the number")
        return self.call(Command(Op.HVC, (nr, *args)))

    def dma(self, iova: int, length: int, *, to_device: bool = False, sector: int = 0,
            map_first: bool = False, fill: int | None = None, keep_mapping: bool = False
            ) -> CommandResult:
        """One virtio-blk transfer through the SMMU: a disk read (the device writes memory at
        `iova`) or, with `to_device`, a disk write (the device reads it). `map_first` asks the
        hypervisor for IOVA = PA mappings (HVC 25) whatever it answers; `fill` sets the bytes
        of the kernel RAM at `iova` first. ret0 = virtio status, ret1 = HVC 25 answer."""
        flags = (DMA_F_MAP if map_first else 0) | (DMA_F_FILL if fill is not None else 0) \
            | (DMA_F_NO_UNMAP if keep_mapping else 0)
        direction = DMA_DIR_TO_DEVICE if to_device else DMA_DIR_FROM_DEVICE
        return self.call(Command(Op.DMA, (iova, length, direction, sector, flags,
                                          0 if fill is None else fill & 0xFF)))

    def at(self, va: int, write: bool = False) -> CommandResult:
        """AT S1E1R/W: `.value` is PAR_EL1 (bit 0 set = translation failed)."""
        return self.call(Command(Op.AT, (va, int(write))))

    def alloc_page(self, pgtable_pool: bool = False) -> CommandResult:
        """A zeroed page: `ret[0]` linear VA, `ret[1]` PA (from the page-table pool if asked)."""
        return self.call(Command(Op.ALLOC_PAGE, (int(pgtable_pool),)))

    def free_page(self, pa: int, pgtable_pool: bool = False) -> CommandResult:
        return self.call(Command(Op.FREE_PAGE, (pa, int(pgtable_pool))))

    def load_module(self, image: bytes, *, no_init: bool = False) -> CommandResult:
        """Load a .ko through the kernel's module path: ret = (handle, modid, init rc).

        `modid` is HVC_INVALID when the kernel linked the module itself (HVC 30 answered
        HVC_ENOSYS). `no_init`: stop before running init (real modules).
        """
        flags = MODLOAD_F_NO_INIT if no_init else 0
        return self.call(Command(Op.MODLOAD, (len(image), flags, 0), upload=image))

    def upload(self, data: bytes, offset: int = 0) -> CommandResult:
        """Copy bytes into the kernel's upload buffer at `offset` (a NOP command carries them)."""
        return self.call(Command(Op.NOP, upload=data, upload_offset=offset))

    def load_uploaded(self, length: int, offset: int = 0, *,
                      no_init: bool = False) -> CommandResult:
        """MODLOAD of a .ko already in the upload buffer at `offset` (no host copy)."""
        flags = MODLOAD_F_NO_INIT if no_init else 0
        return self.call(Command(Op.MODLOAD, (length, flags, offset)))

    def unload_module(self, handle: int) -> CommandResult:
        return self.call(Command(Op.MODUNLOAD, (handle,)))

    def spawn(self, program: str, arg: int = 0) -> CommandResult:
        """Run a user program to completion: `ret[0]` exit status (-11: killed by SIGSEGV)."""
        return self.call(Command(Op.SPAWN, (arg,), name=program))

    def workload(self, name: str) -> CommandResult:
        return self.call(Command(Op.WORKLOAD, name=name))

    def symbol(self, name: str) -> CommandResult:
        """Value of an exported kernel symbol (ksymtab), as a module would link against it."""
        return self.call(Command(Op.SYMBOL, name=name))

    def vmap(self, pa: int, size: int, prot: int = 0) -> CommandResult:
        """Map PA into the vmalloc area (prot 0 RW, 1 RO, 2 RX): `.value` is the VA."""
        return self.call(Command(Op.VMAP, (pa, size, prot)))

    def vunmap(self, va: int, size: int) -> CommandResult:
        return self.call(Command(Op.VUNMAP, (va, size)))


DMA_DISK_MB = 4
"""The testbed board: SMMUv3 owned by the hypervisor and a virtio-blk-pci disk behind it."""


def _machine(image: TestbedImage, timeout_s: float, echo: bool, ram_mb: int,
             cpu: str = "cortex-a57", ncpus: int = 1) -> MachineConfig:
    return MachineConfig(kernel=image.kernel_bin, timeout_s=timeout_s, echo_console=echo,
                         ram_mb=ram_mb, smmu=True, dma_disk_mb=DMA_DISK_MB, cpu=cpu,
                         ncpus=ncpus)


@dataclass
class CommandRun:
    """Outcome of `run_commands`."""

    results: list[CommandResult]
    run: RunResult
    boot_s: float | None
    """Seconds from QEMU start until the kernel's command loop was ready."""
    boot_info: BootInfo | None


def run_commands(hypervisor: Hypervisor, commands: Iterable[Command], *,
                 image: TestbedImage | None = None, timeout_s: float = 60.0,
                 echo_console: bool = False, ram_mb: int = 1024,
                 on_result: Callable[[CommandResult], None] | None = None,
                 ncpus: int = 1, cpu: str = "cortex-a57") -> CommandRun:
    """Boot the testbed, run `commands` one after the other, power off; one thread."""
    image = image or build_testbed()
    kimg = KernelImage(image.kernel_elf)
    driver = CommandDriver(kimg.pa("secvma_cmd"), on_result)
    pendings = [driver.submit(c) for c in commands]
    driver.submit(Command(Op.POWEROFF))
    info: list[BootInfo] = []

    def hook(server: MailboxServer) -> None:
        driver.poll(server)
        if not info and driver.ready_at is not None:
            info.append(BootInfo.from_bytes(server.read(PhysAddr(driver.boot_info_pa),
                                                        BootInfo.SIZE)))

    t0 = time.perf_counter()
    run = boot(_machine(image, timeout_s, echo_console, ram_mb, cpu, ncpus=ncpus), hypervisor,
               poll_hook=hook)
    why = stop_reason(run)
    driver.abort(MachineStopped(why))
    results = []
    for p in pendings:
        if p.result is not None:
            results.append(p.result)
        else:
            results.append(CommandResult(p.command, Status.BUSY, msg=f"not run: {why}"))
    boot_s = driver.ready_at - t0 if driver.ready_at is not None else None
    return CommandRun(results, run, boot_s, info[0] if info else None)


def stop_reason(run: RunResult) -> str:
    """Why the machine stopped, with the kernel's last console line (e.g. its panic)."""
    lines = [ln.strip() for ln in run.console.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if "panic" in ln.lower()), lines[-1] if lines else "")
    s = f"machine stopped ({run.exit}"
    s += f": {run.reason})" if run.reason else ")"
    return s + (f"; kernel: {last}" if last else "")


CMD_SLOT_SIZE = CMD.msg + CMD_MSG_LEN
"""sizeof(struct secvma_cmd): the stride of the secondaries' slots `secvma_cpu_cmd[]`."""


class _OnCpu(Primitives):
    def __init__(self, session: TestbedSession, cpu: int) -> None:
        self.session, self.cpu = session, cpu

    def call(self, command: Command) -> CommandResult:
        return self.session.submit_on(self.cpu, command).wait(self.session.command_timeout_s)


class TestbedSession(Primitives):
    """A running testbed with blocking primitives; the machine is served by a background thread.

    ::

        with TestbedSession(make_hypervisor("none", "huge")) as s:
            va = s.image.va("secvma_test_value")
            assert s.write(va, 7).ok and s.read(va).value == 7
            assert s.read(0xdead_0000).faulted
    """

    __test__ = False  # not a pytest class

    def __init__(self, hypervisor: Hypervisor, *, image: TestbedImage | None = None,
                 timeout_s: float = 600.0, command_timeout_s: float = 60.0,
                 echo_console: bool = False, ram_mb: int = 1024, cpu: str = "cortex-a57",
                 ncpus: int = 1):
        """`cpu`: QEMU's CPU model (cortex-a76 for FEAT_LSE atomics; a57 is ARMv8.0).
        `ncpus`: vCPUs; the kernel starts the secondaries with PSCI CPU_ON and each polls its
        own command slot (`on_cpu`, `submit_on`; `secvma.testbed.smp`)."""
        self.hypervisor = hypervisor
        self.testbed = image or build_testbed()
        self.image = KernelImage(self.testbed.kernel_elf)
        self.command_timeout_s = command_timeout_s
        self.cpu = cpu
        self.ncpus = ncpus
        self._config = _machine(self.testbed, timeout_s, echo_console, ram_mb, cpu, ncpus)
        self._driver = CommandDriver(self.image.pa("secvma_cmd"))
        slot0 = self.image.pa("secvma_cpu_cmd")
        self._cpu_drivers = {i: CommandDriver(slot0 + i * CMD_SLOT_SIZE) for i in range(1, ncpus)}
        self._thread: threading.Thread | None = None
        self._server: MailboxServer | None = None
        self._started = threading.Event()
        self.run_result: RunResult | None = None
        self.error: BaseException | None = None
        self.boot_info: BootInfo | None = None

    @property
    def platform(self) -> Platform:
        """Guest RAM and TLB operations (only while the machine runs)."""
        if self._server is None:
            raise MachineStopped("the machine is not running")
        return self._server

    def __enter__(self) -> TestbedSession:
        self._thread = threading.Thread(target=self._serve, name="testbed-serve", daemon=True)
        self._thread.start()
        r = self.call(Command(Op.NOP))
        if not r.ok:
            raise MachineStopped(f"testbed did not come up: {r.msg}")
        assert self._server is not None
        self.boot_info = BootInfo.from_bytes(self._server.read(
            PhysAddr(self._driver.boot_info_pa), BootInfo.SIZE))
        return self

    def _serve(self) -> None:
        def started(server: MailboxServer) -> None:
            self._server = server

        try:
            self.run_result = boot(self._config, self.hypervisor, poll_hook=self._poll,
                                   on_started=started)
            self._abort(MachineStopped(stop_reason(self.run_result)))
        except BaseException as exc:  # the waiting caller re-raises it
            self.error = exc
            self._abort(MachineStopped(f"machine failed: {exc}"))
        finally:
            self._server = None

    def _poll(self, server: MailboxServer) -> None:
        self._driver.poll(server)
        for d in self._cpu_drivers.values():
            d.poll(server)

    def _abort(self, error: BaseException) -> None:
        self._driver.abort(error)
        for d in self._cpu_drivers.values():
            d.abort(error)

    def submit_on(self, cpu: int, command: Command) -> _Pending:
        """Post `command` to CPU `cpu` without waiting (`.wait(timeout)` for its result).

        CPU 0 runs every command; a secondary runs the primitives only (NOP, WRITE, READ,
        EXEC, MSR, MRS, HVC, AT, RACE_SPIN) and answers UNSUPPORTED otherwise."""
        if self._thread is None:
            raise MachineStopped("use TestbedSession as a context manager")
        if not self._thread.is_alive() and self.error is not None:
            raise MachineStopped(f"machine failed: {self.error}")
        if cpu == 0:
            return self._driver.submit(command)
        if cpu not in self._cpu_drivers:
            raise ValueError(f"no CPU {cpu} (the session has {self.ncpus})")
        return self._cpu_drivers[cpu].submit(command)

    def on_cpu(self, cpu: int) -> Primitives:
        """The primitives, run on CPU `cpu` (`s.on_cpu(1).write(va, v)`)."""
        return _OnCpu(self, cpu)

    def call(self, command: Command) -> CommandResult:
        return self.submit_on(0, command).wait(self.command_timeout_s)

    def answers_within(self, timeout_s: float) -> bool:
        """True if the kernel completes a NOP within `timeout_s` (False: it stopped answering)."""
        try:
            self._driver.submit(Command(Op.NOP)).wait(timeout_s)
        except (TimeoutError, MachineStopped):
            return False
        return True

    def console_text(self) -> str:
        """The guest console so far (live while the machine runs, else the finished run's)."""
        server = self._server
        if server is not None:
            try:
                return server.qemu.log_path.read_bytes().decode(errors="replace")
            except OSError:
                pass
        return self.run_result.console if self.run_result is not None else ""

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is None:
            return
        if self._thread.is_alive():
            self._driver.submit(Command(Op.POWEROFF))
            self._thread.join(timeout=self.command_timeout_s)
            if self._thread.is_alive() and self._server is not None:
                self._server.halt("session closed")
                self._thread.join(timeout=10)
        self._thread = None
