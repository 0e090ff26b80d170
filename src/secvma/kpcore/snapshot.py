"""A JSON-able picture of KPCore's state: physical memory by usage class, stage-2 leaves.

Used by `secvma inspect` (printed as tables, drawn as a PNG) and saved with `--save` so that a
run can be inspected later without re-booting.
"""

from __future__ import annotations

from typing import Any

from secvma.kpcore import dma
from secvma.kpcore.pages import Owner, Usage
from secvma.kpcore.stage2 import kind_of
from secvma.kpcore.state import KState

SIZE_NAMES = {1: "1G", 2: "2M", 3: "4K"}


def _runs(values: bytes | bytearray, base_pfn: int) -> list[tuple[int, int, int]]:
    """Maximal runs of equal bytes: (start pa, end pa, value)."""
    out: list[tuple[int, int, int]] = []
    n = len(values)
    i = 0
    while i < n:
        v = values[i]
        j = i + 1
        # jump ahead quickly over long runs
        step = 4096
        while j < n and values[j] == v:
            k = min(n, j + step)
            if values[j:k].count(v) == k - j:
                j = k
                step *= 2
            else:
                step = max(1, step // 8)
                if step == 1:
                    j += 1
        out.append(((base_pfn + i) << 12, (base_pfn + j) << 12, v))
        i = j
    return out


def snapshot(st: KState) -> dict[str, Any]:
    """Everything `secvma inspect` shows, as plain JSON types."""
    pages = st.pages
    combined = bytearray(pages.usage)
    for idx in range(pages.npages):
        if pages.owner[idx] == Owner.COREVISOR:
            combined[idx] = 0xFF
    classes: dict[str, dict[str, Any]] = {}
    for start, end, v in _runs(combined, pages.base_pfn):
        name = "EL2" if v == 0xFF else Usage(v).name
        c = classes.setdefault(name, {"pages": 0, "ranges": []})
        c["pages"] += (end - start) >> 12
        c["ranges"].append([start, end])
    for c in classes.values():
        c["mib"] = round(c["pages"] * 4096 / (1 << 20), 3)
    leaves = sorted((base, level, kind_of(desc)) for base, level, desc in st.s2.iter_leaves())
    return {
        "policy": st.policy.name, "s2": st.policy.s2, "installed": st.installed,
        "ram": [pages.ram_base, pages.ram_end],
        "classes": classes,
        "stage2": {"histogram": st.s2.histogram(), "pool_free": st.s2.available,
                   "leaves": [[b, SIZE_NAMES[lv], k.name if k else "OTHER"]
                              for b, lv, k in leaves]},
        "refusals": [r.as_dict() for r in st.refusals],
        "events": dict(st.events),
        "user_roots": sorted(p << 12 for p in st.user_roots),
        "dma": dma.summary(st),
    }
