"""run-all.sh's results file and norm.sh on artifact-shaped samples (docs/eval-spec.md §1.2, §1.4)."""

from __future__ import annotations

import shutil
import subprocess
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from secvma.bench.resultfile import (
    KINDS,
    ResultFileError,
    bc_average,
    label_of,
    load,
    norm_text,
    normalize,
    parse,
    section_text,
)
from secvma.cli import main

DATA = Path(__file__).parent / "data"
HEADINGS = [
    "Kernbench Result (sec):",
    "Hackbench Result (sec):",
    "Netperf TCP_STREAM Result (Mbps):",
    "Netperf TCP_MAERTS Result (Mbps):",
    "Netperf TCP_RR Result (Req/Res per sec):",
    "Apache Result (Requests per second):",
    "Memcached Result (Ops per sec):",
]


def test_headings_are_run_all_byte_for_byte() -> None:
    assert [k.heading for k in KINDS] == HEADINGS
    assert [label_of(h) for h in HEADINGS] == [
        "Kernbench", "Hackbench", "TCP_STREAM", "TCP_MAERTS", "TCP_RR", "Apache", "Memcached"]


def test_readme_hackbench_sample_average_is_truncated() -> None:
    # The artifact README's four hackbench values and its "Average: 11.2317" (true mean 11.23175).
    vals = [Decimal(v) for v in ("11.121", "11.391", "11.249", "11.166")]
    assert bc_average(vals) == Decimal("11.2317")
    rf = load(DATA / "bm_linux.txt")
    hack = rf.first("Hackbench")
    assert hack is not None and hack.average == Decimal("11.2317") and len(hack.samples) == 4
    kern = rf.first("Kernbench")
    assert kern is not None and kern.ignored == ["kernbench in sec"] and kern.samples == [Decimal("452.81")]


@pytest.mark.skipif(shutil.which("bc") is None, reason="bc is not installed")
def test_average_matches_bc() -> None:
    vals = ["9387.52", "9391.07", "9388.64", "9390.11", "9385.93", "0.3"]
    total = subprocess.run(["bc"], input=f"scale=4; ({' + '.join(vals)}) / {len(vals)}\n",
                           capture_output=True, text=True, check=True).stdout.strip()
    assert bc_average([Decimal(v) for v in vals]) == Decimal(total)


def test_norm_on_artifact_samples() -> None:
    base, res = load(DATA / "bm_linux.txt"), load(DATA / "bm_secvma.txt")
    rows = {r.label: r for r in normalize(base, res)}
    assert list(rows) == ["Kernbench", "Hackbench", "TCP_STREAM", "TCP_MAERTS", "TCP_RR", "Apache",
                          "Memcached"]

    def trunc(f: Fraction) -> Decimal:
        return Decimal(int(f * 10000)) / 10000

    b_h, r_h = base.first("Hackbench"), res.first("Hackbench")
    assert b_h and r_h and b_h.average and r_h.average
    # Times: result / baseline; throughputs: baseline / result; both truncated to 4 decimals.
    assert rows["Hackbench"].norm == trunc(Fraction(r_h.average) / Fraction(b_h.average))
    b_a, r_a = base.first("Apache"), res.first("Apache")
    assert b_a and r_a and b_a.average and r_a.average
    assert rows["Apache"].norm == trunc(Fraction(b_a.average) / Fraction(r_a.average))
    assert all(r.norm > 1 for r in rows.values())  # the protected sample is slower everywhere
    text = norm_text("bm_linux.txt", list(rows.values()))
    assert text.startswith("\nNormalized Result (against bm_linux.txt):\nKernbench : 1.0409\n")


def test_missing_average_is_refused_not_shifted() -> None:
    with pytest.raises(ResultFileError, match=r"TCP_MAERTS.*no Average"):
        load(DATA / "bm_secvma_maerts_failed.txt")


def test_average_disagreeing_with_samples_is_refused() -> None:
    text = section_text(KINDS[1], ["1.0", "2.0"]).replace("Average: 1.5000", "Average: 1.6000")
    with pytest.raises(ResultFileError, match="disagrees"):
        parse(text)


def test_normalized_file_as_baseline_has_no_spurious_label(tmp_path: Path) -> None:
    res = tmp_path / "bm_secvma.txt"
    shutil.copy(DATA / "bm_secvma.txt", res)
    r = CliRunner().invoke(main, ["harness", "norm", str(DATA / "bm_linux.txt"), str(res)])
    assert r.exit_code == 0, r.output
    assert "Normalized Result (against bm_linux.txt):" in res.read_text()
    again = load(res)
    assert [s.label for s in again.sections] == [k.label for k in KINDS]
    assert len(again.normalized) == 1 and again.normalized[0][1]["Hackbench"] == Decimal("1.1493")
    # The normalized file now serves as a baseline: norm.sh would see a 'Normalized' label.
    rows = normalize(again, load(DATA / "bm_linux.txt"))
    assert [r.label for r in rows] == [k.label for k in KINDS]


def test_norm_cli_refuses_missing_average(tmp_path: Path) -> None:
    res = tmp_path / "r.txt"
    shutil.copy(DATA / "bm_secvma_maerts_failed.txt", res)
    before = res.read_text()
    r = CliRunner().invoke(main, ["harness", "norm", str(DATA / "bm_linux.txt"), str(res)])
    assert r.exit_code != 0
    assert "no Average" in r.output
    assert res.read_text() == before  # nothing appended


def test_bc_style_averages_without_leading_zero_parse() -> None:
    rf = parse("Hackbench Result (sec):\n0.4\n0.6\nAverage: .5000\n")
    assert rf.sections[0].average == Decimal("0.5")


def test_lenient_load_then_normalize_refuses_or_skips_a_missing_average() -> None:
    # Regression: normalize() asserted on a file loaded with strict=False (an internal error).
    base = load(DATA / "bm_linux.txt")
    res = load(DATA / "bm_secvma_maerts_failed.txt", strict=False)
    with pytest.raises(ResultFileError, match="TCP_MAERTS"):
        normalize(base, res)
    rows = normalize(base, res, skip_missing=True)
    assert "TCP_MAERTS" not in [r.label for r in rows] and len(rows) == 6
