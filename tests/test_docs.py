"""The specifications the code cites are in the repository, and each cited section exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = re.compile(r"docs/([\w.-]+\.md)(?:'s)?(?: §(\d+(?:\.\d+)?))?")
BARE = re.compile(r"(?<![/\w-])(kpcore-spec|eval-spec|qemu-platform|debian-modules)(?:\.md)?\b"
                  r"|(?<![/\w_-])(STYLE|ARCHITECTURE)\.md")


def _sources() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "src", "tests", "guest", "benchmarks", "scripts",
                          "README.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / f for f in out.stdout.split() if f.endswith((".py", ".c", ".h", ".S", ".md",
                                                               ".sh"))]


def _headings(doc: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^#{2,3} (?:§)?(\d+(?:\.\d+)?)\.? ", doc.read_text(),
                                            re.MULTILINE)}


def test_every_cited_document_and_section_exists() -> None:
    """Each `docs/<file>.md §N` in code, guest sources, tests and README exists, file and heading."""
    missing: list[str] = []
    cited = 0
    for path in _sources():
        for m in REF.finditer(path.read_text(errors="replace")):
            cited += 1
            doc = ROOT / "docs" / m.group(1)
            if not doc.is_file():
                missing.append(f"{path.relative_to(ROOT)}: {m.group(0)} (no such file)")
            elif m.group(2) and m.group(2) not in _headings(doc) \
                    and m.group(2).split(".")[0] not in _headings(doc):
                missing.append(f"{path.relative_to(ROOT)}: {m.group(0)} (no such section)")
    assert cited > 50 and not missing, missing


def test_no_reference_points_outside_the_repository() -> None:
    """A specification is never cited by a bare name that only exists outside docs/."""
    bare = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in _sources() if p.name != "test_docs.py"
            for m in BARE.finditer(p.read_text(errors="replace"))]
    assert not bare, bare
