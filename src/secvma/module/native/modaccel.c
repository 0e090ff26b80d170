/*
 * modaccel.c: optional native accelerator for the hot loops of secvma.module.
 *
 * The pure-Python code in secvma/module is the reference; every function here reproduces
 * one of its loops bit for bit and is checked against it by tests/module/test_native.py.
 *
 *   secvma_sort_relas   Linux 4.18 lib/sort.c heapsort with arm64 cmp_rela (sort.py)
 *   secvma_count_plts   arm64 count_plts on sorted entries (load.count_plts)
 *   secvma_plan         pre-checks + processing order of apply_relocations
 *   secvma_apply        the relocation engine, driven by the recipe table that Python
 *                       generates from relocations.RECIPES; anything it does not do
 *                       (PLT entries, erratum-843419 fix-ups, overflow errors) it hands
 *                       back to Python one relocation at a time.
 *
 * Input comes from untrusted modules: every offset, count and index is checked against the
 * length it is given before it is used. Integers are read little endian byte by byte, so
 * the host's byte order does not matter.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RELA 24u
#define ABI_VERSION 1

enum { K_NONE = 0, K_DATA = 1, K_MOVW = 2, K_IMM = 3, K_ADRP = 4, K_BRANCH = 5 };
enum { OP_NONE = 0, OP_ABS = 1, OP_PREL = 2, OP_PAGE = 3 };
enum { E_BOUNDS = -1, E_NOMEM = -2, E_ARGS = -3 };
enum { PLAN_OK = 0, PLAN_REFUSE = 1 };
#define IMM_ADR (-1)
#define MAX_TYPE 1024u

/* One row of relocations.RECIPES (layout mirrored by native/__init__.py `_Recipe`). */
typedef struct {
    uint32_t rtype;
    uint32_t kind;
    uint32_t op;
    uint32_t width;
    uint32_t lsb;
    uint32_t length;
    int32_t imm_shift; /* IMM_ADR for the split ADR immediate */
    uint32_t imm_mask;
    uint32_t is_signed;
    uint32_t check;
    uint32_t plt_sorted; /* in load.PLT_TYPES: ordered by (sym, addend) in code sections */
    uint32_t place_bytes;
} recipe_t;

int secvma_abi_version(void) { return ABI_VERSION; }

static inline uint64_t rd64(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void wrn(uint8_t *p, uint64_t v, unsigned nbytes) {
    for (unsigned i = 0; i < nbytes; i++) p[i] = (uint8_t)(v >> (8 * i));
}
/* Arithmetic shift right of a two's-complement 64-bit value (Python's >> on ints). */
static inline int64_t asr(int64_t v, unsigned s) {
    if (s >= 64) return v < 0 ? -1 : 0;
    return v < 0 ? (int64_t) ~(~(uint64_t)v >> s) : (int64_t)((uint64_t)v >> s);
}

/* Is [off, off + n*RELA) inside a buffer of len bytes? */
static int span_ok(uint64_t len, uint64_t off, uint64_t n) {
    if (n > len / RELA) return 0;
    return off <= len - n * RELA;
}

/* ------------------------------------------------------------------------ heapsort */

typedef struct {
    uint64_t hi; /* type << 32 | sym */
    uint64_t lo; /* addend ^ sign bit: unsigned order == signed order */
    uint64_t idx;
} key_t;

/* cmp_rela as one comparison of (hi, lo): type, then symbol, then signed addend. */
static inline int kcmp(const key_t *a, const key_t *b) {
    if (a->hi != b->hi) return a->hi < b->hi ? -1 : 1;
    if (a->lo != b->lo) return a->lo < b->lo ? -1 : 1;
    return 0;
}
static inline void kswap(key_t *a, key_t *b) {
    key_t t = *a;
    *a = *b;
    *b = t;
}

/* lib/sort.c (Linux 4.18) `sort()`, element indices instead of pre-scaled byte offsets:
 * heapify from n/2-1 down to 0, then swap [0]/[i] and sift down in [0, i). Same
 * comparisons, same swaps, so equal keys end in the same (unstable) order. */
static void heapsort_keys(key_t *k, uint64_t n) {
    uint64_t r, c, i;
    if (n < 2) return;
    for (i = n / 2; i-- > 0;) {
        for (r = i; r * 2 + 1 < n; r = c) {
            c = r * 2 + 1;
            if (c < n - 1 && kcmp(&k[c], &k[c + 1]) < 0) c++;
            if (kcmp(&k[r], &k[c]) >= 0) break;
            kswap(&k[r], &k[c]);
        }
    }
    for (i = n - 1; i > 0; i--) {
        kswap(&k[0], &k[i]);
        for (r = 0; r * 2 + 1 < i; r = c) {
            c = r * 2 + 1;
            if (c < i - 1 && kcmp(&k[c], &k[c + 1]) < 0) c++;
            if (kcmp(&k[r], &k[c]) >= 0) break;
            kswap(&k[r], &k[c]);
        }
    }
}

/* Copy n Rela entries from data[off..] to out, sorted as the arm64 loader sorts them. */
int secvma_sort_relas(const uint8_t *data, uint64_t data_len, uint64_t off, uint64_t n,
                      uint8_t *out, uint64_t out_len) {
    if (!span_ok(data_len, off, n) || !span_ok(out_len, 0, n)) return E_BOUNDS;
    if (n == 0) return 0;
    key_t *k = malloc(n * sizeof *k);
    if (!k) return E_NOMEM;
    const uint8_t *src = data + off;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *e = src + i * RELA;
        uint64_t info = rd64(e + 8);
        k[i].hi = (info & 0xFFFFFFFFu) << 32 | info >> 32;
        k[i].lo = rd64(e + 16) ^ (1ull << 63);
        k[i].idx = i;
    }
    heapsort_keys(k, n);
    for (uint64_t i = 0; i < n; i++) memcpy(out + i * RELA, src + k[i].idx * RELA, RELA);
    free(k);
    return 0;
}

/* ------------------------------------------------------------------------ count_plts */

#define R_ADR_PREL_PG_HI21 275u
#define R_ADR_PREL_PG_HI21_NC 276u
#define R_JUMP26 282u
#define R_CALL26 283u

/* load.count_plts over n *sorted* entries at relas[off..]. Symbol st_shndx values are read
 * from the symbol table at data[symoff..] (nsyms entries of 24 bytes).
 * out[0] = PLT slots, out[1] = new alignment, out[2] = largest symbol index seen.
 * Returns 1 (and counts nothing) when a symbol index is >= nsyms. */
int secvma_count_plts(const uint8_t *relas, uint64_t relas_len, uint64_t off, uint64_t n,
                      const uint8_t *data, uint64_t data_len, uint64_t symoff, uint64_t nsyms,
                      uint64_t dst_index, int randomize_base, int erratum,
                      uint64_t plt_entry_size, uint64_t align, uint64_t *out) {
    if (!span_ok(relas_len, off, n) || !span_ok(data_len, symoff, nsyms)) return E_BOUNDS;
    if (plt_entry_size == 0 || plt_entry_size > 4096) return E_ARGS;
    const uint8_t *rel = relas + off;
    uint64_t maxsym = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t s = rd64(rel + i * RELA + 8) >> 32;
        if (s > maxsym) maxsym = s;
    }
    out[2] = maxsym;
    if (n && maxsym >= nsyms) return 1;
    uint64_t ret = 0;
    if (randomize_base) {
        int have_prev = 0;
        uint64_t pinfo = 0, padd = 0;
        for (uint64_t i = 0; i < n; i++) {
            const uint8_t *e = rel + i * RELA;
            uint64_t info = rd64(e + 8), add = rd64(e + 16);
            uint32_t t = (uint32_t)info;
            if (t != R_JUMP26 && t != R_CALL26) {
                have_prev = 0;
                continue;
            }
            int dup = have_prev && pinfo == info && padd == add;
            have_prev = 1;
            pinfo = info;
            padd = add;
            const uint8_t *sym = data + symoff + (info >> 32) * 24;
            uint64_t shndx = (uint64_t)sym[6] | (uint64_t)sym[7] << 8;
            if (shndx == dst_index) continue;
            if (add != 0 || !dup) ret++;
        }
    }
    if (erratum) {
        for (uint64_t i = 0; i < n; i++) {
            const uint8_t *e = rel + i * RELA;
            uint32_t t = (uint32_t)rd64(e + 8);
            if (t != R_ADR_PREL_PG_HI21 && t != R_ADR_PREL_PG_HI21_NC) continue;
            uint64_t x = rd64(e) | 7u;
            unsigned ffz = (~x == 0) ? 64 : (unsigned)__builtin_ctzll(~x);
            if (ffz >= 12) { /* 2 << ffz > 4096 */
                ret++;
            } else {
                uint64_t min_align = 2ull << ffz;
                if (min_align > align) align = min_align;
            }
        }
        uint64_t per = 4096 / plt_entry_size;
        ret += (ret + per - 1) / per;
    }
    out[0] = ret;
    out[1] = align;
    return 0;
}

/* ------------------------------------------------------------------------ relocation */

/* type -> recipe row, -1 when the table has no row for it */
static int slot_map(const recipe_t *rec, uint32_t nrec, int16_t *map) {
    for (uint32_t t = 0; t < MAX_TYPE; t++) map[t] = -1;
    for (uint32_t s = 0; s < nrec; s++) {
        if (rec[s].rtype >= MAX_TYPE || s > 0x7FFF) return E_ARGS;
        if (s && rec[s].rtype <= rec[s - 1].rtype) return E_ARGS; /* ascending, unique */
        uint32_t need = rec[s].kind == K_NONE ? 0 : rec[s].kind == K_DATA ? rec[s].width / 8 : 4;
        if (rec[s].place_bytes < need) return E_ARGS; /* every write stays inside the place */
        map[rec[s].rtype] = (int16_t)s;
    }
    return 0;
}

static inline int slot_of(const int16_t *map, uint64_t info) {
    uint32_t t = (uint32_t)info;
    return t < MAX_TYPE ? map[t] : -1;
}

/* Stable merge sort of idx[0..n) by (sym, signed addend) of the entries they name. */
static void msort(uint32_t *idx, uint32_t *tmp, uint64_t n, const uint8_t *rel) {
    if (n < 2) return;
    uint64_t h = n / 2;
    msort(idx, tmp, h, rel);
    msort(idx + h, tmp, n - h, rel);
    uint64_t a = 0, b = h, o = 0;
    while (a < h && b < n) {
        const uint8_t *x = rel + (uint64_t)idx[a] * RELA, *y = rel + (uint64_t)idx[b] * RELA;
        uint64_t xs = rd64(x + 8) >> 32, ys = rd64(y + 8) >> 32;
        int64_t xa = (int64_t)rd64(x + 16), ya = (int64_t)rd64(y + 16);
        int take_b = ys < xs || (ys == xs && ya < xa);
        tmp[o++] = take_b ? idx[b++] : idx[a++];
    }
    while (a < h) tmp[o++] = idx[a++];
    while (b < n) tmp[o++] = idx[b++];
    memcpy(idx, tmp, n * sizeof *idx);
}

/* Pre-checks and order of relocations.apply_relocations for n entries at data[off..]:
 * every type has a recipe, every place (offset + field bytes) lies inside `size`, every
 * symbol index is < nsyms. On success fills order[n] (types ascending; within a type file
 * order, or (sym, addend) stable order for plt_sorted types when plt_sort), and per recipe
 * row counts[] and first[] (first file position, UINT64_MAX if none). PLAN_REFUSE when a
 * check fails: nothing was written, and Python runs its reference to raise the error. */
int secvma_plan(const recipe_t *rec, uint32_t nrec, const uint8_t *data, uint64_t data_len,
                uint64_t off, uint64_t n, uint64_t size, uint64_t nsyms, int plt_sort,
                uint32_t *order, uint64_t order_len, uint64_t *counts, uint64_t *first) {
    int16_t map[MAX_TYPE];
    if (!span_ok(data_len, off, n) || order_len < n || n > 0xFFFFFFFFu) return E_BOUNDS;
    if (slot_map(rec, nrec, map)) return E_ARGS;
    const uint8_t *rel = data + off;
    for (uint32_t s = 0; s < nrec; s++) {
        counts[s] = 0;
        first[s] = UINT64_MAX;
    }
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *e = rel + i * RELA;
        uint64_t info = rd64(e + 8), place = rd64(e);
        int s = slot_of(map, info);
        if (s < 0) return PLAN_REFUSE;
        uint64_t nb = rec[s].place_bytes;
        if (place > size || nb > size - place) return PLAN_REFUSE;
        if ((info >> 32) >= nsyms) return PLAN_REFUSE;
        if (counts[s]++ == 0) first[s] = i;
    }
    /* counting sort by recipe row (rows are in ascending type order) */
    uint64_t pos = 0;
    uint64_t *start = malloc((nrec + 1) * sizeof *start);
    if (!start) return E_NOMEM;
    for (uint32_t s = 0; s < nrec; s++) {
        start[s] = pos;
        pos += counts[s];
    }
    start[nrec] = pos;
    for (uint64_t i = 0; i < n; i++) {
        int s = slot_of(map, rd64(rel + i * RELA + 8));
        order[start[s]++] = (uint32_t)i;
    }
    if (plt_sort) {
        uint32_t *tmp = NULL;
        uint64_t begin = 0;
        for (uint32_t s = 0; s < nrec; s++) {
            uint64_t cnt = counts[s];
            if (rec[s].plt_sorted && cnt > 1) {
                if (!tmp && !(tmp = malloc(n * sizeof *tmp))) {
                    free(start);
                    return E_NOMEM;
                }
                msort(order + begin, tmp, cnt, rel);
            }
            begin += cnt;
        }
        free(tmp);
    }
    free(start);
    return PLAN_OK;
}

static inline int64_t do_reloc(uint32_t op, uint64_t place, uint64_t val) {
    switch (op) {
    case OP_ABS: return (int64_t)val;
    case OP_PREL: return (int64_t)(val - place);
    case OP_PAGE: return (int64_t)((val & ~0xFFFull) - (place & ~0xFFFull));
    default: return 0;
    }
}

/* relocations.encode_imm */
static inline uint32_t encode_imm(const recipe_t *r, uint32_t insn, uint64_t value) {
    if (r->imm_shift == IMM_ADR) {
        uint32_t immlo = (uint32_t)(value & 3), immhi = (uint32_t)((value >> 2) & 0x7FFFF);
        return (insn & ~((3u << 29) | (0x7FFFFu << 5))) | (immlo << 29) | (immhi << 5);
    }
    unsigned sh = (unsigned)r->imm_shift;
    uint64_t m = r->imm_mask;
    return (uint32_t)((insn & ~(m << sh)) | ((value & m) << sh));
}

/* Apply order[start..n) to buf (size bytes at address base). Returns n when done, or the
 * position p of the first entry Python must handle (PLT, erratum 843419, overflow), with
 * nothing written for it. A negative value reports inconsistent arguments. */
int64_t secvma_apply(const recipe_t *rec, uint32_t nrec, const uint8_t *data,
                     uint64_t data_len, uint64_t off, uint64_t n, uint8_t *buf, uint64_t size,
                     uint64_t base, const uint64_t *symvals, uint64_t nsyms, int erratum,
                     const uint32_t *order, uint64_t order_len, uint64_t start) {
    int16_t map[MAX_TYPE];
    if (!span_ok(data_len, off, n) || order_len < n || start > n) return E_BOUNDS;
    if (slot_map(rec, nrec, map)) return E_ARGS;
    const uint8_t *rel = data + off;
    for (uint64_t p = start; p < n; p++) {
        uint64_t i = order[p];
        if (i >= n) return E_BOUNDS;
        const uint8_t *e = rel + i * RELA;
        uint64_t o = rd64(e), info = rd64(e + 8), add = rd64(e + 16);
        int s = slot_of(map, info);
        if (s < 0) return E_BOUNDS;
        const recipe_t *r = &rec[s];
        uint64_t sym = info >> 32;
        if (sym >= nsyms || o > size || r->place_bytes > size - o) return E_BOUNDS;
        uint8_t *at = buf + o;
        uint64_t val = symvals[sym] + add, place = base + o;
        switch (r->kind) {
        case K_NONE:
            break;
        case K_DATA: {
            unsigned w = r->width;
            if (w != 16 && w != 32 && w != 64) return (int64_t)p;
            uint64_t mask = w == 64 ? ~0ull : (1ull << w) - 1;
            if (r->op == OP_ABS) {
                int64_t sv = (int64_t)val;
                if (w != 64 && !(sv >= 0 && (uint64_t)sv <= mask)) return (int64_t)p;
                wrn(at, (uint64_t)sv & mask, w / 8);
            } else {
                int64_t sv = (int64_t)(val - place);
                if (r->check && w != 64) {
                    int64_t lo = -((int64_t)1 << (w - 1)), hi = ((int64_t)1 << (w - 1)) - 1;
                    if (sv < lo || sv > hi) return (int64_t)p;
                }
                wrn(at, (uint64_t)sv & mask, w / 8);
            }
            break;
        }
        case K_MOVW: {
            int64_t sv = do_reloc(r->op, place, val);
            uint64_t imm = (uint64_t)asr(sv, r->lsb);
            uint32_t insn = rd32(at);
            if (r->is_signed) {
                insn &= ~(3u << 29);
                if (sv >= 0)
                    insn |= 2u << 29;
                else
                    imm = ~imm;
            }
            if (r->check && imm > 0xFFFF) return (int64_t)p;
            wrn(at, encode_imm(r, insn, imm), 4);
            break;
        }
        case K_IMM: {
            if (r->length == 0 || r->length > 63) return (int64_t)p;
            uint64_t mask = (1ull << r->length) - 1;
            if (r->op == OP_ABS && r->imm_shift == 10 && r->imm_mask == 0xFFF) {
                /* ADD/LDSTn_ABS_LO12_NC: never checked (relocations._apply_imm) */
                wrn(at, encode_imm(r, rd32(at), (val >> r->lsb) & mask), 4);
                break;
            }
            int64_t sv = asr(do_reloc(r->op, place, val), r->lsb);
            int64_t lim = (int64_t)1 << (r->length - 1);
            if (r->check && !(sv >= -lim && sv < lim)) return (int64_t)p;
            wrn(at, encode_imm(r, rd32(at), (uint64_t)sv & mask), 4);
            break;
        }
        case K_ADRP: {
            if (r->length == 0 || r->length > 63) return (int64_t)p;
            if (erratum && (place & 0xFFF) >= 0xFF8) return (int64_t)p;
            int64_t sv = asr((int64_t)((val & ~0xFFFull) - (place & ~0xFFFull)), 12);
            int64_t lim = (int64_t)1 << (r->length - 1);
            if (r->check && !(sv >= -lim && sv < lim)) return (int64_t)p;
            uint64_t v = (uint64_t)sv & ((1ull << r->length) - 1);
            uint32_t insn = rd32(at);
            wrn(at, (insn & 0x9F00001Fu) | (uint32_t)((v & 3) << 29) |
                        (uint32_t)(((v >> 2) & 0x7FFFF) << 5), 4);
            break;
        }
        case K_BRANCH: {
            if (r->length == 0 || r->length > 63 || r->imm_shift < 0) return (int64_t)p;
            int64_t sv = asr((int64_t)(val - place), r->lsb);
            int64_t lim = (int64_t)1 << (r->length - 1);
            if (!(sv >= -lim && sv < lim)) return (int64_t)p; /* PLT or overflow: Python */
            wrn(at, encode_imm(r, rd32(at), (uint64_t)sv & ((1ull << r->length) - 1)), 4);
            break;
        }
        default:
            return (int64_t)p;
        }
    }
    return (int64_t)n;
}
