"""Application results, done right: per-bench statistics, normalization, table, Figure-6 chart, JSON.

Normalization is norm.sh's (docs/eval-spec.md §1.4): a *normalized cost*, 1.0 = the baseline and
above 1 = slower, i.e. result/baseline for times and baseline/result for throughputs; here
on the means, unrounded (the results files keep the artifact's truncated 4-decimal form). The
error bar of a ratio combines both sides' relative sample standard deviations (first order:
`norm · sqrt((sd_r/mean_r)² + (sd_b/mean_b)²)`), so a ratio inside its noise shows as such.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from secvma.bench.harness import Measured
from secvma.bench.resultfile import BY_LABEL, KINDS, ResultFile

BASELINES = ("plain", "null")


@dataclass(frozen=True)
class BenchResult:
    """One bench in one configuration: its samples and what they mean."""

    samples: tuple[float, ...]
    unit: str
    higher_is_better: bool
    params: Mapping[str, object] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"samples": list(self.samples), "mean": self.mean, "median": self.median,
                "stdev": self.stdev, "unit": self.unit, "higher_is_better": self.higher_is_better,
                "params": dict(self.params)}


Results = dict[str, dict[str, BenchResult]]  # config -> bench key -> result


def from_measured(measured: Iterable[Measured]) -> dict[str, BenchResult]:
    """The benches of one harness run that produced at least one sample."""
    out: dict[str, BenchResult] = {}
    for m in measured:
        if m.values:
            params = {**m.params, "tool": m.tool} if m.tool else dict(m.params)
            out[m.kind.key] = BenchResult(tuple(float(v) for v in m.values), m.kind.unit,
                                          m.kind.higher_is_better, params)
    return out


def from_resultfile(rf: ResultFile) -> dict[str, BenchResult]:
    """A run-all.sh results file (first section per label, as norm.sh)."""
    out: dict[str, BenchResult] = {}
    for s in rf.sections:
        kind = BY_LABEL.get(s.label)
        if kind is None or kind.key in out or not s.samples:
            continue
        out[kind.key] = BenchResult(tuple(float(v) for v in s.samples), kind.unit, kind.higher_is_better)
    return out


def cost(result: BenchResult, base: BenchResult) -> tuple[float, float]:
    """(normalized cost, its error bar): 1.0 = baseline, > 1 = slower."""
    if result.mean <= 0 or base.mean <= 0:
        raise ValueError("non-positive mean: cannot normalize")
    norm = base.mean / result.mean if result.higher_is_better else result.mean / base.mean
    if result is base:  # the baseline's own bar: its spread, not counted twice
        rel = result.stdev / result.mean
    else:
        rel = math.hypot(result.stdev / result.mean, base.stdev / base.mean)
    return norm, norm * rel


def normalized(results: Results, baselines: tuple[str, ...] = BASELINES
               ) -> dict[str, dict[str, dict[str, float | None]]]:
    """normalized[config][bench] = {"plain": cost, "null": cost} (None without that baseline)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for cfg, benches in results.items():
        row: dict[str, dict[str, float | None]] = {}
        for bench, r in benches.items():
            row[bench] = {}
            for b in baselines:
                base = results.get(b, {}).get(bench)
                row[bench][b] = cost(r, base)[0] if base is not None else None
        out[cfg] = row
    return out


def to_json(results: Results, baselines: tuple[str, ...] = BASELINES) -> dict[str, Any]:
    return {"results": {c: {b: r.to_json() for b, r in benches.items()} for c, benches in results.items()},
            "normalized": normalized(results, baselines),
            "normalization": "normalized cost (norm.sh): result/baseline for times, baseline/result "
                             "for throughputs; 1.0 = baseline, above 1 = slower"}


def _bench_order(results: Results) -> list[str]:
    present = {b for benches in results.values() for b in benches}
    return [k.key for k in KINDS if k.key in present]


def _fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.0f}"


def table(results: Results, title: str = "application benchmarks",
          baselines: tuple[str, ...] = BASELINES) -> Table:
    """bench × config: mean, median, spread (sample sd, n), normalized vs each baseline."""
    t = Table(title=title)
    cols = ("bench", "config", "mean", "median", "spread (sd, n)", "unit", *(f"vs {b}" for b in baselines))
    for col in cols:
        t.add_column(col, justify="right" if col not in ("bench", "config", "unit") else "left")
    norm = normalized(results, baselines)
    for bench in _bench_order(results):
        first = True
        for cfg, benches in results.items():
            r = benches.get(bench)
            if r is None:
                continue
            cells = []
            for b in baselines:
                v = norm[cfg][bench][b]
                if v is None or cfg == b:
                    cells.append("—" if v is None else "1")
                else:
                    colour = "green" if v <= 1.05 else "yellow" if v <= 1.3 else "red"
                    cells.append(f"[{colour}]{v:.3f}[/]")
            t.add_row(bench if first else "", cfg, _fmt(r.mean), _fmt(r.median),
                      f"±{_fmt(r.stdev)} ({len(r.samples)})", r.unit + (" ↑" if r.higher_is_better else " ↓"),
                      *cells)
            first = False
    return t


def plot(results: Results, path: Path, baseline: str | None = None, title: str = "",
         baselines: tuple[str, ...] = BASELINES) -> str:
    """A Figure-6-style PNG: normalized cost per bench, one bar per config, error bars.

    Returns the baseline used (`plain` if measured, else `null`, else the first config).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("nothing to plot")
    base = baseline or next((b for b in baselines if b in results), next(iter(results)))
    if base not in results:
        raise ValueError(f"baseline {base!r} was not measured")
    benches = [b for b in _bench_order(results) if b in results[base]]
    configs = list(results)
    width = 0.8 / max(1, len(configs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(benches) + 2), 3.6))
    for i, cfg in enumerate(configs):
        xs, ys, es = [], [], []
        for j, bench in enumerate(benches):
            r = results[cfg].get(bench)
            if r is None:
                continue
            n, e = cost(r, results[base][bench])
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(n)
            es.append(e)
        bars = ax.bar(xs, ys, width, yerr=es, capsize=3, label=cfg, edgecolor="black", linewidth=0.5)
        for rect, y in zip(bars, ys, strict=True):
            ax.annotate(f"{y:.2f}", (rect.get_x() + rect.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=6, xytext=(0, 2), textcoords="offset points")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(benches)))
    ax.set_xticklabels([b.replace("netperf-", "") for b in benches], fontsize=8)
    ax.set_ylabel(f"normalized cost (vs {base}; lower is better)")
    ax.set_title(title or f"Application benchmarks normalized to {base}")
    ax.legend(fontsize=7, ncols=min(4, len(configs)))
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return base
