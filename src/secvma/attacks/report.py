"""The attack suite's result as a Markdown report and a PNG verdict matrix (`--report FILE.md`).

The report says, per scenario and policy, the verdict, whether it was the expected one, the
first refusal rule the hypervisor logged and the evidence; the matrix is the same at a glance
(rows: scenarios, columns: policies; a cell is coloured by verdict and crossed when the verdict
was not the expected one). Both are written from `run_suite`'s JSON, so a saved `--json` run can
be rendered again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from secvma.attacks.scenarios import ATTACKS, Verdict

COLORS = {Verdict.SUCCEEDED.value: "#d62728", Verdict.BLOCKED.value: "#2ca02c",
          Verdict.HALTED.value: "#98df8a", Verdict.INTERNAL_ERROR.value: "#000000",
          Verdict.NOT_APPLICABLE.value: "#c7c7c7"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rule(o: dict[str, Any]) -> str:
    return o["refusals"][0].split(":", 1)[0] if o["refusals"] else ""


Goals = dict[str, tuple[str, str]]
"""scenario -> (goal, known gap)."""


def testbed_goals() -> Goals:
    return {a.name: (a.goal, a.gap) for a in ATTACKS}


def markdown(res: dict[str, Any], s2: str, png_name: str | None = None,
             goals: Goals | None = None, kernel: str = "testbed kernel") -> str:
    """The whole report as Markdown text."""
    goals = testbed_goals() if goals is None else goals
    policies = list(res["summary"])
    lines = [f"# secvma attack report ({kernel}, stage 2: {s2})", "",
             "Each scenario is a compromised kernel's attempt, judged by its effect (changed bytes, "
             "injected code that ran, a register that holds the forged value), under each policy. "
             "A hypervisor internal error is never counted as blocked.", "",
             f"Result: **{'every verdict as expected' if res['ok'] else 'UNEXPECTED VERDICTS'}**",
             "", "| policy | blocked | succeeded | internal errors | unexpected |",
             "|---|---|---|---|---|"]
    for p, c in res["summary"].items():
        lines.append(f"| {p} | {c['blocked']} | {c['succeeded']} | {c['internal_errors']} | "
                     f"{c['unexpected']} |")
    if png_name:
        lines += ["", f"![verdict matrix]({png_name})"]
    lines += ["", "| scenario | goal | known gap | " + " | ".join(policies) + " |",
              "|---|---|---|" + "---|" * len(policies)]
    by = {(o["attack"], o["policy"]): o for o in res["outcomes"]}
    for name in dict.fromkeys(o["attack"] for o in res["outcomes"]):
        goal, gap = goals.get(name, ("", ""))
        cells = []
        for p in policies:
            o = by.get((name, p))
            if o is None:
                cells.append("")
                continue
            mark = "" if o["matches"] else " **(unexpected)**"
            rule = f" `{_rule(o)}`" if _rule(o) else ""
            cells.append(f"{o['verdict']}{mark}{rule}")
        lines.append(f"| {name} | {_cell(goal)} | {_cell(gap)} | " + " | ".join(cells) + " |")
    lines += ["", "## Evidence", ""]
    for o in res["outcomes"]:
        exp = ", ".join(o["expected"])
        lines.append(f"- **{o['attack']}** under `{o['policy']}`: {o['verdict']} "
                     f"(expected {exp}) — {_cell(o['detail'])}"
                     + (f"; refusal: {_cell(o['refusals'][0])}" if o["refusals"] else ""))
    return "\n".join(lines) + "\n"


def draw_matrix(res: dict[str, Any], path: Path, s2: str, kernel: str = "testbed kernel") -> None:
    """Scenario × policy grid coloured by verdict; an unexpected verdict is crossed out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    policies = list(res["summary"])
    names = list(dict.fromkeys(o["attack"] for o in res["outcomes"]))
    by = {(o["attack"], o["policy"]): o for o in res["outcomes"]}
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(policies), 0.9 + 0.28 * len(names)))
    for y, name in enumerate(names):
        for x, p in enumerate(policies):
            o = by.get((name, p))
            if o is None:
                continue
            ax.add_patch(Rectangle((x, y), 1, 1, facecolor=COLORS.get(o["verdict"], "white"),
                                   edgecolor="white"))
            if not o["matches"]:
                ax.plot([x + 0.1, x + 0.9], [y + 0.1, y + 0.9], color="black", linewidth=2)
                ax.plot([x + 0.1, x + 0.9], [y + 0.9, y + 0.1], color="black", linewidth=2)
    ax.set_xlim(0, len(policies))
    ax.set_ylim(len(names), 0)
    ax.set_xticks([x + 0.5 for x in range(len(policies))], labels=policies)
    ax.xaxis.tick_top()
    ax.set_yticks([y + 0.5 for y in range(len(names))], labels=names, fontsize=7)
    ax.set_title(f"secvma attack verdicts ({kernel}, stage 2: {s2}); × = not the expected verdict",
                 fontsize=9, pad=24)
    handles = [Patch(color=c, label=v) for v, c in COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(res: dict[str, Any], path: Path, s2: str, goals: Goals | None = None,
                 kernel: str = "testbed kernel") -> Path:
    """Write FILE.md and, next to it, FILE.png (the matrix); returns the PNG's path."""
    png = path.with_suffix(".png")
    draw_matrix(res, png, s2, kernel)
    path.write_text(markdown(res, s2, png.name, goals, kernel))
    return png
