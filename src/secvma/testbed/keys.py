"""The testbed's own module signature table: its test modules signed with a per-process key.

Here, not in kpcore: kpcore is handed its keys by its caller and knows nothing of the testbed
(issue 10 item 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secvma.kpcore.modkeys import ModuleKeys, keys_for

_TESTBED_KEYS: dict[str, ModuleKeys] = {}


def testbed_module_keys(module_files: Mapping[str, Path] | None = None) -> ModuleKeys:
    """Keys for the testbed's own test modules, signed with a key made for this process.

    The key lives only in memory (never written, never committed); the same `ModuleKeys` is
    returned for the same set of module files, so every run in one process agrees.
    """
    if module_files is None:
        from secvma.testbed.build import build_testbed

        module_files = build_testbed().modules
    blobs = [Path(p).read_bytes() for _n, p in sorted(module_files.items())]
    tag = "|".join(str(Path(p).resolve()) for _n, p in sorted(module_files.items()))
    tag += "|" + "|".join(str(hash(b)) for b in blobs)
    got = _TESTBED_KEYS.get(tag)
    if got is None:
        got = _TESTBED_KEYS[tag] = keys_for(Ed25519PrivateKey.generate(), blobs)
    return got
