"""run-all.sh's results file, read and written byte-compatibly (docs/eval-spec.md §1.2), and norm.sh (§1.4).

A results file is a list of sections, each

    <heading containing "<Label> Result (<unit>):">
    <one raw value per line>
    Average: <mean, truncated to 4 decimals>

and norm.sh appends `Normalized Result (against NAME):` followed by `Label : value` lines.
Fixed here, against the artifact (docs/eval-spec.md §1.5): values and averages are paired *by section*
(norm.sh pairs the i-th label with the i-th `Average` line, so one section without an average
shifts every later pairing), a section without an `Average` line is an error, an `Average`
that disagrees with its section's samples is an error, an already-appended normalized block is
recognised instead of becoming a spurious `Normalized` label, and the rounding is stated:
averages and normalized values are *truncated* to 4 decimals, as `bc` with `scale=4` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, localcontext
from pathlib import Path

ROUNDING_NOTE = "averages and normalized values truncated (not rounded) to 4 decimals, as bc scale=4"

_SAMPLE_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")  # run-all.sh's avg(): the only lines averaged
_NUMBER_RE = re.compile(r"^-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")  # bc also prints ".5000"
_NORM_HEAD_RE = re.compile(r"^Normalized Result \(against (.*)\):\s*$")
_NORM_LINE_RE = re.compile(r"^(\S+) : (\S+)\s*$")
_UNIT_RE = re.compile(r"\(([^)]*)\)")
_FOUR = Decimal("0.0001")


class ResultFileError(ValueError):
    """A results file that cannot be trusted (missing average, duplicate label, bad number)."""


@dataclass(frozen=True)
class Kind:
    """One results-file section type: its key, norm.sh label, exact heading and direction."""

    key: str
    label: str
    heading: str
    unit: str
    higher_is_better: bool
    log: str  # run-all.sh's log file stem: log/<log>_log.<NAME>


KINDS: tuple[Kind, ...] = (
    Kind("kernbench", "Kernbench", "Kernbench Result (sec):", "sec", False, "kernbench"),
    Kind("hackbench", "Hackbench", "Hackbench Result (sec):", "sec", False, "hackbench"),
    Kind("netperf-TCP_STREAM", "TCP_STREAM", "Netperf TCP_STREAM Result (Mbps):", "Mbps", True, "netperf"),
    Kind("netperf-TCP_MAERTS", "TCP_MAERTS", "Netperf TCP_MAERTS Result (Mbps):", "Mbps", True, "netperf"),
    Kind("netperf-TCP_RR", "TCP_RR", "Netperf TCP_RR Result (Req/Res per sec):", "Req/Res per sec", True,
         "netperf"),
    Kind("apache", "Apache", "Apache Result (Requests per second):", "Requests per second", True, "apache"),
    Kind("memcached", "Memcached", "Memcached Result (Ops per sec):", "Ops per sec", True, "memcached"),
)
BY_KEY = {k.key: k for k in KINDS}
BY_LABEL = {k.label: k for k in KINDS}


def truncate4(x: Decimal) -> Decimal:
    """bc's `scale=4` division result: truncated toward zero to 4 decimals."""
    return x.quantize(_FOUR, rounding=ROUND_DOWN)


def bc_average(values: list[Decimal]) -> Decimal:
    """run-all.sh's avg(): exact sum, then the quotient truncated to 4 decimals."""
    if not values:
        raise ResultFileError("no samples to average")
    with localcontext() as ctx:
        ctx.prec = 60
        return truncate4(sum(values, Decimal(0)) / len(values))


def fmt(x: Decimal) -> str:
    """A number as written to a results file (bc would drop the leading 0 of ".5"; we keep it)."""
    return f"{x:f}"


def label_of(line: str) -> str | None:
    """norm.sh's label: the token just before a field that is exactly `Result` (not the last)."""
    toks = line.split()
    for i in range(1, len(toks) - 1):
        if toks[i] == "Result":
            return toks[i - 1]
    return None


@dataclass
class Section:
    """One parsed section; `samples` keeps the numbers, `raw` the sample lines as written."""

    label: str
    heading: str
    line: int
    samples: list[Decimal] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    average: Decimal | None = None
    ignored: list[str] = field(default_factory=list)

    @property
    def kind(self) -> Kind | None:
        return BY_LABEL.get(self.label)

    @property
    def unit(self) -> str:
        m = _UNIT_RE.search(self.heading)
        return m.group(1) if m else ""


@dataclass
class ResultFile:
    """A parsed results file: sections in file order and any appended normalized blocks."""

    path: str
    sections: list[Section]
    normalized: list[tuple[str, dict[str, Decimal]]]

    def first(self, label: str) -> Section | None:
        """The first section with `label` (norm.sh uses the first match in the result file)."""
        return next((s for s in self.sections if s.label == label), None)

    def duplicates(self) -> list[str]:
        """Labels that occur more than once (a rerun with the same -o appends another set)."""
        seen: dict[str, int] = {}
        for s in self.sections:
            seen[s.label] = seen.get(s.label, 0) + 1
        return [k for k, n in seen.items() if n > 1]


def parse(text: str, path: str = "<text>", strict: bool = True) -> ResultFile:
    """Parse a results file. With `strict`, every section needs an Average that matches its samples.

    Raises `ResultFileError` naming the file and line.
    """
    sections: list[Section] = []
    normalized: list[tuple[str, dict[str, Decimal]]] = []
    cur: Section | None = None
    norm_block: dict[str, Decimal] | None = None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{path}:{no}"
        m = _NORM_HEAD_RE.match(line)
        if m:
            cur, norm_block = None, {}
            normalized.append((m.group(1), norm_block))
            continue
        if norm_block is not None:
            nm = _NORM_LINE_RE.match(line)
            if nm and _NUMBER_RE.match(nm.group(2)):
                norm_block[nm.group(1)] = Decimal(nm.group(2))
                continue
            if not line:
                continue
            norm_block = None  # anything else ends the block (a new run appended after it)
        label = label_of(line)
        if label is not None:
            cur = Section(label=label, heading=line, line=no)
            sections.append(cur)
            continue
        if line.startswith("Average"):
            parts = line.split()
            if cur is None:
                raise ResultFileError(f"{where}: Average line outside any section")
            if len(parts) < 2 or not _NUMBER_RE.match(parts[1]):
                raise ResultFileError(f"{where}: malformed Average line {line!r}")
            if cur.average is not None:
                raise ResultFileError(f"{where}: second Average line in section {cur.label!r}")
            cur.average = Decimal(parts[1])
            continue
        if not line:
            continue
        if cur is None:
            continue  # free text before the first section (run-all.sh never writes any)
        if cur.average is not None:
            raise ResultFileError(f"{where}: line {line!r} after the Average of section {cur.label!r}")
        if _SAMPLE_RE.match(line):
            cur.samples.append(Decimal(line))
            cur.raw.append(line)
        else:
            cur.ignored.append(line)  # e.g. a "kernbench in sec" header, skipped by avg() too
    rf = ResultFile(path=path, sections=sections, normalized=normalized)
    if strict:
        check(rf)
    return rf


def check(rf: ResultFile) -> None:
    """Every section has an Average, and it is run-all.sh's average of the section's samples."""
    for s in rf.sections:
        where = f"{rf.path}:{s.line}"
        if s.average is None:
            raise ResultFileError(
                f"{where}: section {s.heading!r} has no Average line "
                f"({len(s.samples)} samples; run-all.sh writes none when every run failed)")
        if not s.samples:
            raise ResultFileError(f"{where}: section {s.heading!r} has an Average but no samples")
        want = bc_average(s.samples)
        if abs(want - s.average) > _FOUR:
            raise ResultFileError(
                f"{where}: section {s.heading!r}: Average {fmt(s.average)} disagrees with its "
                f"{len(s.samples)} samples (mean {fmt(want)})")


def load(path: Path, strict: bool = True) -> ResultFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResultFileError(f"cannot read {path}: {exc.strerror}") from exc
    return parse(text, str(path), strict)


def section_text(kind: Kind, raw_values: list[str]) -> str:
    """A section exactly as run-all.sh appends it (no Average when there is no value)."""
    lines = [kind.heading, *raw_values]
    nums = [Decimal(v) for v in raw_values if _SAMPLE_RE.match(v)]
    if nums:
        lines.append(f"Average: {fmt(bc_average(nums))}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class NormRow:
    label: str
    baseline: Decimal
    result: Decimal
    norm: Decimal  # normalized cost, truncated: > 1 is a slowdown
    higher_is_better: bool


def normalize(base: ResultFile, res: ResultFile, skip_missing: bool = False) -> list[NormRow]:
    """norm.sh: for each baseline section, the first result section with the same label.

    Times: result/baseline; throughputs: baseline/result. A label norm.sh does not know the
    direction of is an error rather than a guess, and so is a section without an Average
    (files loaded with `strict=False`), unless `skip_missing` leaves that label out.
    """
    rows: list[NormRow] = []
    done: set[str] = set()
    for b in base.sections:
        if b.label in done:
            continue
        done.add(b.label)
        r = res.first(b.label)
        if r is None:
            continue
        kind = b.kind
        if kind is None:
            raise ResultFileError(f"{base.path}:{b.line}: unknown label {b.label!r}: "
                                  f"known labels are {', '.join(BY_LABEL)}")
        if b.average is None or r.average is None:
            if skip_missing:
                continue
            where = f"{base.path}:{b.line}" if b.average is None else f"{res.path}:{r.line}"
            raise ResultFileError(f"{where}: section {b.label!r} has no Average line")
        y1, y2 = b.average, r.average
        if (y1 if not kind.higher_is_better else y2) == 0:
            raise ResultFileError(f"{b.label}: zero {'baseline' if not kind.higher_is_better else 'result'} "
                                  "average, cannot normalize")
        with localcontext() as ctx:
            ctx.prec = 60
            q = y1 / y2 if kind.higher_is_better else y2 / y1
        rows.append(NormRow(b.label, y1, y2, truncate4(q), kind.higher_is_better))
    return rows


def norm_text(baseline_name: str, rows: list[NormRow]) -> str:
    """What norm.sh appends: a blank line, the heading, one `Label : value` line per match."""
    out = ["", f"Normalized Result (against {baseline_name}):"]
    out += [f"{r.label} : {fmt(r.norm)}" for r in rows]
    return "\n".join(out) + "\n"
