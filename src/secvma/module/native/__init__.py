"""Optional native accelerator (`modaccel.c`) for the module toolchain's hot loops.

Why: verifying and linking xfs.ko means sorting ~20,000 relocations with Linux 4.18's exact
heapsort and applying ~40,000 of them; in pure Python that is ~10× what GNU ld takes for
the same object. The pure-Python code stays the reference and the fallback: this package
only ever reproduces it bit for bit (tests/module/test_native.py compares both paths on the
Debian modules, the synthetic objects and fuzzed input, error cases included).

* The C source is compiled with the system C compiler (`cc -O2 -shared -fPIC`) into the build
  directory (`$SECVMA_BUILD/native`, default `<repo>/build/native`, else
  `~/.cache/secvma/native`), named by the hash of the source, on first use or by
  `secvma build` (`build_native`). A failed compile warns once and leaves the pure-Python
  path in place.
* A shared object runs inside secvma, so it is only ever loaded from a directory the user
  owns with mode 0700 (created so, checked by owner and mode before every use, never a shared
  temporary directory) and only when the file itself is the user's and writable by nobody
  else. A directory anyone else could write to is refused, not repaired: a file in it may
  already be planted.
* `SECVMA_NO_NATIVE=1` disables it; `use_native(False)` does so for a block (tests, bench).
* The relocation engine is driven by `relocations.RECIPES`: `recipe_table()` turns each row
  into a C struct, so there is one definition of every relocation type. Relocations the
  engine does not do itself (PLT entries, erratum-843419 fix-ups, overflow errors) come
  back to the Python reference one at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).with_name("modaccel.c")
ABI_VERSION = 1
_ENV_OFF = "SECVMA_NO_NATIVE"

_lock = threading.Lock()
_loaded: ctypes.CDLL | None = None
_tried = False
_override: bool | None = None


class NativeBuildError(RuntimeError):
    """The accelerator could not be compiled or loaded (the caller falls back to Python)."""


class _UntrustedDir(NativeBuildError):
    """A directory or file that someone other than the user could have written."""


def _source_key() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get("SECVMA_BUILD")
    if env:
        dirs.append(Path(env) / "native")
    else:
        from secvma.machine.build import repo_root

        root = repo_root()
        if (root / "pyproject.toml").exists():
            dirs.append(root / "build" / "native")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    dirs.append(Path(cache) / "secvma" / "native")
    return dirs


def _check_private_dir(d: Path) -> None:
    """Raise NativeBuildError unless `d` is a real directory of this user, mode 0700.

    A directory of ours that nobody else can write to (e.g. 0755 from an older build) is
    narrowed to 0700; one that others could write to is refused.
    """
    try:
        info = d.lstat()
    except FileNotFoundError:
        raise _UntrustedDir(f"{d} does not exist") from None
    if not stat.S_ISDIR(info.st_mode):
        raise _UntrustedDir(f"{d} is not a directory (or is a symbolic link)")
    if info.st_uid != os.getuid():
        raise _UntrustedDir(f"{d} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o022:
        raise _UntrustedDir(f"{d} is writable by others (mode {info.st_mode & 0o777:o}): "
                               "refusing any shared object in it")
    if info.st_mode & 0o077:
        os.chmod(d, 0o700)


def _check_library(path: Path) -> None:
    """Raise NativeBuildError unless `path` is a regular file of this user nobody else can write."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise _UntrustedDir(f"{path} is not a regular file")
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise _UntrustedDir(f"{path} is not owned by this user or is writable by others")


def _make_private_dir(d: Path) -> None:
    d.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700)
    _check_private_dir(d)


def library_path() -> Path | None:
    """Where a trusted, built accelerator for the current source is, if one exists."""
    name = f"modaccel-{_source_key()}.so"
    for d in _candidate_dirs():
        try:
            if not (d / name).is_file():
                continue
            _check_private_dir(d)
            _check_library(d / name)
        except (OSError, NativeBuildError) as exc:
            warnings.warn(f"secvma native accelerator: ignoring {d / name}: {exc}",
                          RuntimeWarning, stacklevel=2)
            continue
        return d / name
    return None


def _compile(out_dir: Path) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise NativeBuildError("no C compiler (cc/gcc) on PATH")
    _make_private_dir(out_dir)
    out = out_dir / f"modaccel-{_source_key()}.so"
    if out.is_file():
        _check_library(out)
        return out
    fd, tmp = tempfile.mkstemp(prefix=".modaccel-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-std=c99", "-Wall", "-o", tmp,
                               str(SOURCE)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeBuildError(f"{cc} failed on {SOURCE.name}:\n{proc.stderr.strip()}")
        os.chmod(tmp, 0o700)
        os.replace(tmp, out)  # atomic: concurrent builders produce the same file
        for stale in out_dir.glob("modaccel-*.so"):
            if stale != out:  # builds of older sources (a loaded copy stays mapped)
                with contextlib.suppress(OSError):
                    stale.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out


def build_native() -> Path | None:
    """Compile `modaccel.c` into the build directory (cached by source hash).

    Returns the shared object's path, or None (with a warning) when no directory is
    writable or the compiler fails; the pure-Python path is used then.
    """
    existing = library_path()
    if existing is not None:
        return existing
    errors: list[str] = []
    for d in _candidate_dirs():
        try:
            return _compile(d)
        except OSError as exc:
            errors.append(f"{d}: {exc}")
        except _UntrustedDir as exc:
            errors.append(str(exc))
        except NativeBuildError as exc:
            errors.append(str(exc))
            break  # the compiler fails the same way everywhere
    warnings.warn("secvma native accelerator not built (pure Python is used): "
                  + "; ".join(errors), RuntimeWarning, stacklevel=2)
    return None


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.secvma_abi_version() != ABI_VERSION:
        raise NativeBuildError(f"{path} has ABI {lib.secvma_abi_version()}, need {ABI_VERSION}")
    u64, u32, i32, cp = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int, ctypes.c_char_p
    vp = ctypes.c_void_p
    lib.secvma_sort_relas.argtypes = [cp, u64, u64, u64, vp, u64]
    lib.secvma_sort_relas.restype = i32
    lib.secvma_count_plts.argtypes = [cp, u64, u64, u64, cp, u64, u64, u64, u64, i32, i32, u64,
                                      u64, vp]
    lib.secvma_count_plts.restype = i32
    lib.secvma_plan.argtypes = [vp, u32, cp, u64, u64, u64, u64, u64, i32, vp, u64, vp, vp]
    lib.secvma_plan.restype = i32
    lib.secvma_apply.argtypes = [vp, u32, cp, u64, u64, u64, vp, u64, u64, vp, u64, i32, vp,
                                 u64, u64]
    lib.secvma_apply.restype = ctypes.c_int64
    return lib


def lib() -> ctypes.CDLL | None:
    """The loaded accelerator, or None when disabled or unavailable (built on first use)."""
    global _loaded, _tried
    if _override is False or (_override is None and os.environ.get(_ENV_OFF, "") not in ("", "0")):
        return None
    if _tried:
        return _loaded
    with _lock:
        if not _tried:
            try:
                path = build_native()
                _loaded = _load(path) if path is not None else None
            except (OSError, NativeBuildError) as exc:
                warnings.warn(f"secvma native accelerator unusable: {exc}", RuntimeWarning,
                              stacklevel=2)
                _loaded = None
            _tried = True
    return _loaded


def available() -> bool:
    return lib() is not None


@contextlib.contextmanager
def use_native(on: bool) -> Iterator[None]:
    """Force the native path on (if it can be built) or off for the duration of a block."""
    global _override
    old = _override
    _override = on
    try:
        yield
    finally:
        _override = old


__all__ = ["SOURCE", "NativeBuildError", "available", "build_native", "lib", "library_path",
           "use_native"]
