"""The relocation sort of arm64 `module_frob_arch_sections`, reproduced exactly.

Why exactly: SECvma signs the RELA sections *after* the kernel sorted them in place
(docs/eval-spec.md §3.3 step 3), and Linux 4.18's `lib/sort.c` is an unstable heapsort. Entries with
equal keys (same type, symbol and addend; different offsets) end in a heapsort-specific
order, so any other algorithm — including a stable sort — produces different bytes and a
different signature.

Key (`cmp_rela`): ELF64_R_TYPE (low 32 bits of r_info), then ELF64_R_SYM (high 32 bits),
then r_addend as signed 64-bit.
"""

from __future__ import annotations

from collections.abc import Sequence

Rela = tuple[int, int, int]  # (r_offset, r_info, r_addend)


def rela_key(r: Rela) -> int:
    """One integer that orders like `cmp_rela`: type, then symbol, then signed addend."""
    return ((r[1] & 0xFFFFFFFF) << 96) | ((r[1] >> 32) << 64) | (r[2] + (1 << 63))


def heapsort_order(keys: Sequence[int]) -> list[int]:
    """Permutation produced by Linux 4.18 `sort()` (lib/sort.c) on elements with `keys`.

    Returns `perm` such that the sorted array is `[elements[i] for i in perm]`.
    Algorithm (docs/eval-spec.md §3.3): build the heap by sifting down from n/2-1 to 0; then for
    i = n-1 .. 1 swap [0] and [i] and sift down in [0, i). The child is 2r+1; take the right
    child if it exists and left < right strictly; stop when parent >= child.
    """
    n = len(keys)
    if n < 2:
        return list(range(n))
    k = list(keys)
    p = list(range(n))
    # Sift-down is inlined in both phases: a function call per sift costs ~30% here.
    for r0 in range(n // 2 - 1, -1, -1):
        r = r0
        kr, pr = k[r], p[r]
        c = 2 * r + 1
        while c < n:
            kc = k[c]
            if c + 1 < n and kc < k[c + 1]:
                c += 1
                kc = k[c]
            if kr >= kc:
                break
            k[r] = kc
            p[r] = p[c]
            r = c
            c = 2 * r + 1
        k[r], p[r] = kr, pr
    for end in range(n - 1, 0, -1):
        # swap [0] and [end], then sift the new root down within [0, end)
        kr, pr = k[end], p[end]
        k[end], p[end] = k[0], p[0]
        r, c = 0, 1
        while c < end:
            kc = k[c]
            if c + 1 < end and kc < k[c + 1]:
                c += 1
                kc = k[c]
            if kr >= kc:
                break
            k[r] = kc
            p[r] = p[c]
            r = c
            c = 2 * r + 1
        k[r], p[r] = kr, pr
    return p


def rela_keys(relas: Sequence[Rela]) -> list[int]:
    """`rela_key` of every entry (inlined: this runs over ~20,000 entries for xfs.ko)."""
    m32, bias = 0xFFFFFFFF, 1 << 63
    return [((i & m32) << 96) | ((i >> 32) << 64) | (a + bias) for _o, i, a in relas]


def sort_relas(relas: Sequence[Rela]) -> list[Rela]:
    """`relas` in the order the arm64 loader's heapsort leaves them."""
    if len(relas) < 2:
        return list(relas)
    keys = rela_keys(relas)
    uniq = sorted(set(keys))
    if len(uniq) == len(keys):
        # All keys distinct: every correct sort gives the same order, so use the C one.
        return sorted(relas, key=rela_key)
    # Dense ranks compare like the keys but as one-digit ints, which the sift loop likes.
    rank = {k: r for r, k in enumerate(uniq)}
    return [relas[i] for i in heapsort_order([rank[k] for k in keys])]
