/*
 * common.juki._scan: the C half of the "juki" codec's speed work, and the
 * notice file's common row.
 *
 * Why this exists: the codec runs Python's C utf-16-be codec over whole
 * strings and then has to find the few characters that are not their own
 * code. A compiled regex character class does that at ~6 ns/char, seven
 * times the cost of the utf-16-be codec itself; find_special_str needs
 * ~0.4 ns/char. When some characters are table-mapped (every 佐々木 holds
 * one), splicing them in from Python costs more than all the rest: so
 * encode_run also produces the output in C for every spelling with a code
 * (one BMP character, a base with its variation selector, an astral kanji)
 * and hands back to Python only at a spelling without one, and decode_run
 * decodes every valid unit in C (one BMP character, or a multi-unit
 * sequence: an IVS spelling, an astral kanji) and hands back only at a unit
 * that is not a code. A notice
 * row costs more in Python's split and dict than in decoding, so parse_row
 * decodes, splits and builds the record of the common row (no quotes, no
 * line breaks, the right width) in one pass and leaves every other row to
 * the Python parser; any_flagged finds a character class (controls, for the
 * validator) in several strings without joining them. Every mapping comes
 * from tables built in common/juki/tables.py; every error, message and
 * position rule stays in Python (common/juki/codec.py, common/noticefile.py),
 * which uses the regex and its own loops instead when this module is not
 * built. Plain C99 and the CPython API; nothing else.
 *
 * find_special_str's table (65,536 bytes) holds, for each BMP code point c,
 * a nonzero byte at index c when c is special. A byte per code point rather
 * than a bit: one load per character, twice as fast as a bit test.
 * Characters above U+FFFF are always special (no Juki code is one).
 *
 * The run tables (131,072 bytes) hold a 16-bit entry per BMP code point or
 * per Juki unit; 0 means "not one-for-one". 0 is free as a marker: U+0000
 * has no Juki code and J+0000 decodes to nothing. The sequence table
 * (131,072 + 8 * n bytes) holds, per unit, the 1-based number of its
 * multi-unit spelling (0: none), then n pairs of 32-bit code points (the
 * second 0 for a one-character spelling), all in native byte order. The
 * spelling table (12 * n bytes) holds, for encoding, every spelling that is
 * not one BMP character: n sorted entries of three native uint32 (first
 * code point, second or 0, Juki code), binary-searched. Every number read
 * from a table is checked against the table's size and against U+10FFFF
 * (a code against 0xFFFF) before it is used.
 *
 * The tables come first in every function so that
 * functools.partial(function, table, ...) gives the codec a callable without
 * a Python frame per call.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define TABLE_SIZE 65536
#define RUN_TABLE_SIZE (2 * TABLE_SIZE)

/* 1- and 2-byte kinds: every value indexes the table. Eight at a time with
 * one branch, then the exact index among them. */
#define SCAN_BMP(TYPE)                                                        \
    static Py_ssize_t scan_##TYPE(const TYPE *s, Py_ssize_t i, Py_ssize_t n,   \
                                  const unsigned char *t)                     \
    {                                                                         \
        for (; i + 8 <= n; i += 8) {                                          \
            if (t[s[i]] | t[s[i + 1]] | t[s[i + 2]] | t[s[i + 3]] |           \
                t[s[i + 4]] | t[s[i + 5]] | t[s[i + 6]] | t[s[i + 7]])        \
                break;                                                        \
        }                                                                     \
        for (; i < n; i++) {                                                  \
            if (t[s[i]])                                                      \
                return i;                                                     \
        }                                                                     \
        return -1;                                                            \
    }

SCAN_BMP(Py_UCS1)
SCAN_BMP(Py_UCS2)

/* 4-byte kind: the string holds at least one character above U+FFFF. */
static Py_ssize_t
scan_Py_UCS4(const Py_UCS4 *s, Py_ssize_t i, Py_ssize_t n, const unsigned char *t)
{
    for (; i < n; i++) {
        if (s[i] > 0xFFFF || t[s[i]])
            return i;
    }
    return -1;
}

PyDoc_STRVAR(find_special_str_doc,
             "find_special_str(table, text, start=0, /) -> int\n\n"
             "Index of the first character of text at or after start that is above\n"
             "U+FFFF or whose byte in table (bytes, 65536 long) is nonzero; -1 if none.\n"
             "A negative start counts as 0, as in re.Pattern.search.");

static PyObject *
find_special_str(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *table;
    Py_ssize_t start = 0, n, found;
    PyObject *text;

    (void)module;
    if (nargs < 2 || nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "find_special_str() takes 2 or 3 positional arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) != TABLE_SIZE) {
        PyErr_Format(PyExc_ValueError, "find_special_str(): table must be bytes of length %d",
                     TABLE_SIZE);
        return NULL;
    }
    table = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    text = args[1];
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "find_special_str(): text must be str, not %.100s",
                     Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (nargs == 3) {
        /* OverflowError beyond Py_ssize_t, as re.Pattern.search raises. */
        start = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
        if (start == -1 && PyErr_Occurred())
            return NULL;
        if (start < 0)
            start = 0;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return NULL;
#endif
    n = PyUnicode_GET_LENGTH(text);
    if (start >= n)
        return PyLong_FromSsize_t(-1);
    switch (PyUnicode_KIND(text)) {
    case PyUnicode_1BYTE_KIND:
        found = scan_Py_UCS1(PyUnicode_1BYTE_DATA(text), start, n, table);
        break;
    case PyUnicode_2BYTE_KIND:
        found = scan_Py_UCS2(PyUnicode_2BYTE_DATA(text), start, n, table);
        break;
    default:
        found = scan_Py_UCS4(PyUnicode_4BYTE_DATA(text), start, n, table);
        break;
    }
    return PyLong_FromSsize_t(found);
}

/* --- any_flagged: a character class over several strings ------------------ */

/* Like scan_Py_UCS4, but characters above U+FFFF never match. */
static int
flagged_Py_UCS4(const Py_UCS4 *s, Py_ssize_t n, const unsigned char *t)
{
    Py_ssize_t i;

    for (i = 0; i < n; i++) {
        if (s[i] <= 0xFFFF && t[s[i]])
            return 1;
    }
    return 0;
}

PyDoc_STRVAR(any_flagged_doc,
             "any_flagged(table, texts, /) -> bool\n\n"
             "Whether a character c at or below U+FFFF of any str in texts (an\n"
             "iterable) has a nonzero byte at index c of table (bytes, 65536 long).\n"
             "Characters above U+FFFF never match. One pass and no joined copy: the\n"
             "validator's control-character check over a record's values.");

static PyObject *
any_flagged(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *table;
    PyObject *texts, *text;
    Py_ssize_t k, n, size;
    int found = 0;

    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "any_flagged() takes 2 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) != TABLE_SIZE) {
        PyErr_Format(PyExc_ValueError, "any_flagged(): table must be bytes of length %d",
                     TABLE_SIZE);
        return NULL;
    }
    table = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    /* A list or tuple as it is; anything else (dict.values()) as a list. */
    if (!(texts = PySequence_Fast(args[1], "any_flagged(): texts must be iterable")))
        return NULL;
    size = PySequence_Fast_GET_SIZE(texts);
    for (k = 0; k < size && !found; k++) {
        text = PySequence_Fast_GET_ITEM(texts, k);
        if (!PyUnicode_Check(text)) {
            PyErr_Format(PyExc_TypeError, "any_flagged(): texts must hold str, not %.100s",
                         Py_TYPE(text)->tp_name);
            Py_DECREF(texts);
            return NULL;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(text) < 0) {
            Py_DECREF(texts);
            return NULL;
        }
#endif
        n = PyUnicode_GET_LENGTH(text);
        switch (PyUnicode_KIND(text)) {
        case PyUnicode_1BYTE_KIND:
            found = scan_Py_UCS1(PyUnicode_1BYTE_DATA(text), 0, n, table) >= 0;
            break;
        case PyUnicode_2BYTE_KIND:
            found = scan_Py_UCS2(PyUnicode_2BYTE_DATA(text), 0, n, table) >= 0;
            break;
        default:
            found = flagged_Py_UCS4(PyUnicode_4BYTE_DATA(text), n, table);
            break;
        }
    }
    Py_DECREF(texts);
    return PyBool_FromLong(found);
}

/* --- encode_run: str -> Juki bytes, one-for-one characters only ---------- */

/* Entry c of the encode table: the two big-endian bytes of chr(c)'s code as
 * stored, read as one 16-bit value (only compared with 0 and copied back). */
static inline uint16_t
entry(const unsigned char *t, Py_UCS4 c)
{
    uint16_t v;
    memcpy(&v, t + 2 * (size_t)c, 2);
    return v;
}

/* A variation selector belongs to the character before it (SVS and IVS, as
 * tables.VARIATION_SELECTORS). */
static inline int
is_selector(Py_UCS4 c)
{
    return (c >= 0xFE00 && c <= 0xFE0F) || (c >= 0xE0100 && c <= 0xE01EF);
}

/* Per string kind: convert s[i:end] into dst (2 bytes per character) up to
 * the first character that is not one-for-one (encode_run then looks at
 * it: a spelling of its own, or a selector); return its index, or end.
 * The cast keeps the BMP test valid for every kind. */
#define ENCODE_KIND(TYPE)                                                      \
    static Py_ssize_t encode_##TYPE(const TYPE *s, Py_ssize_t i, Py_ssize_t end, \
                                    const unsigned char *t, unsigned char *dst) \
    {                                                                          \
        for (; i < end; i++, dst += 2) {                                       \
            uint16_t v;                                                        \
            if ((Py_UCS4)s[i] > 0xFFFF || !(v = entry(t, s[i])))               \
                break;                                                         \
            memcpy(dst, &v, 2);                                                \
        }                                                                      \
        return i;                                                              \
    }

ENCODE_KIND(Py_UCS1)
ENCODE_KIND(Py_UCS2)
ENCODE_KIND(Py_UCS4)

/* One pass over the input, so the output's size is not known in advance:
 * it starts at BLOCK characters (8 KiB of input is also what TextIOWrapper
 * hands the decoder at a time), grows fourfold twice, then takes the whole
 * rest, and shrinks to fit at the end. A run that stops early (at each IVS
 * of a long text) thus costs no allocation of the whole rest, and a long
 * one no more than two small copies. */
#define BLOCK 4096

static Py_ssize_t
grow(Py_ssize_t cap, Py_ssize_t limit)
{
    return cap < 16 * BLOCK && cap < limit / 4 ? 4 * cap : limit;
}

/* The table argument: bytes of exactly `size`, else ValueError naming fn. */
static const unsigned char *
table_arg(PyObject *arg, Py_ssize_t size, const char *fn)
{
    if (!PyBytes_Check(arg) || PyBytes_GET_SIZE(arg) != size) {
        PyErr_Format(PyExc_ValueError, "%s(): table must be bytes of length %zd", fn, size);
        return NULL;
    }
    return (const unsigned char *)PyBytes_AS_STRING(arg);
}

/* The start argument, clamped to [0, n] (OverflowError beyond Py_ssize_t). */
static int
start_arg(PyObject *arg, Py_ssize_t n, Py_ssize_t *start)
{
    Py_ssize_t v = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *start = v < 0 ? 0 : v > n ? n : v;
    return 0;
}

/* The multi-character and astral spellings for encoding, checked once per
 * call (see the top of this file): count entries of three native uint32,
 * (first code point, second code point or 0, Juki code), sorted by the
 * first two. */
typedef struct {
    const unsigned char *entries;
    Py_ssize_t count;
} Spellings;

#define SPELLING_SIZE 12

static int
spellings_arg(PyObject *arg, Spellings *p, const char *fn)
{
    Py_ssize_t size;

    if (!PyBytes_Check(arg) || (size = PyBytes_GET_SIZE(arg)) % SPELLING_SIZE != 0) {
        PyErr_Format(PyExc_ValueError, "%s(): spellings must be bytes of length 12 * n", fn);
        return -1;
    }
    p->entries = (const unsigned char *)PyBytes_AS_STRING(arg);
    p->count = size / SPELLING_SIZE;
    return 0;
}

/* The Juki code of the spelling (a, b) (b 0: the one character a), or 0
 * when it has none. A binary search: only the indexes 0..count-1 are ever
 * read, whatever the table holds, and an entry whose code is 0 or above
 * 0xFFFF counts as no code (never trusted). */
static uint32_t
spelling_code(const Spellings *p, Py_UCS4 a, Py_UCS4 b)
{
    Py_ssize_t lo = 0, hi = p->count;

    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        uint32_t e[3];
        memcpy(e, p->entries + SPELLING_SIZE * (size_t)mid, SPELLING_SIZE);
        if (e[0] == a && e[1] == b)
            return e[2] <= 0xFFFF ? e[2] : 0;
        if (e[0] < a || (e[0] == a && e[1] < b))
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

PyDoc_STRVAR(encode_run_doc,
             "encode_run(table, spellings, text, start, /) -> (bytes, stop)\n\n"
             "Encode text[start:stop], spelling by spelling, where stop is the index of\n"
             "the first spelling that has no code, or len(text). A spelling is a\n"
             "character that is not a variation selector, with the selector after it\n"
             "if there is one (as codec._spelling_bounds), or a lone selector. Its\n"
             "code: for one BMP character, the 2-byte entry at 2*c in table (bytes,\n"
             "131072 long: the code of chr(c) big-endian; 0 for none); otherwise the\n"
             "entry of spellings (see _scan.c). start is clamped to [0, len(text)].");

static PyObject *
encode_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *table;
    Spellings p;
    Py_ssize_t start, i, from, end, cap, n, w = 0, single_to = -1;
    PyObject *text, *out;
    unsigned char *dst;
    int kind;
    const void *data;

    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "encode_run() takes 4 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (!(table = table_arg(args[0], RUN_TABLE_SIZE, "encode_run")))
        return NULL;
    if (spellings_arg(args[1], &p, "encode_run") < 0)
        return NULL;
    text = args[2];
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "encode_run(): text must be str, not %.100s",
                     Py_TYPE(text)->tp_name);
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return NULL;
#endif
    n = PyUnicode_GET_LENGTH(text);
    if (start_arg(args[3], n, &start) < 0)
        return NULL;
    kind = PyUnicode_KIND(text);
    data = PyUnicode_DATA(text);
    /* Every spelling is one or two characters and gives two bytes, so w
     * (bytes written) <= 2 * (i - start) throughout: a spelling starting at
     * i < end always fits in the 2 * cap bytes of out. */
    cap = n - start < BLOCK ? n - start : BLOCK;
    if (!(out = PyBytes_FromStringAndSize(NULL, 2 * cap)))
        return NULL;
    for (i = start;;) {
        end = start + cap;
        from = i;
        dst = (unsigned char *)PyBytes_AS_STRING(out) + w;
        if (kind == PyUnicode_1BYTE_KIND)
            i = encode_Py_UCS1(data, i, end, table, dst);
        else if (kind == PyUnicode_2BYTE_KIND)
            i = encode_Py_UCS2(data, i, end, table, dst);
        else
            i = encode_Py_UCS4(data, i, end, table, dst);
        if (i > from) {
            w += 2 * (i - from);
            single_to = i; /* text[i - 1] went alone: no selector followed yet */
        }
        if (i < end) {
            /* Not one BMP character with a code: a spelling of its own. */
            Py_UCS4 c = PyUnicode_READ(kind, data, i), next = 0;
            uint32_t code;
            if (is_selector(c)) {
                if (i != single_to)
                    break; /* a lone selector: no spelling has one first */
                i--;       /* the base went alone: take it back with its selector */
                w -= 2;
                c = PyUnicode_READ(kind, data, i);
            }
            if (i + 1 < n && is_selector(next = PyUnicode_READ(kind, data, i + 1)))
                code = spelling_code(&p, c, next);
            else if (c > 0xFFFF)
                code = spelling_code(&p, c, 0);
            else
                break; /* one BMP character without a table entry */
            if (code == 0)
                break;
            dst = (unsigned char *)PyBytes_AS_STRING(out) + w;
            dst[0] = (unsigned char)(code >> 8);
            dst[1] = (unsigned char)code;
            w += 2;
            i += is_selector(next) ? 2 : 1;
            single_to = -1;
            continue;
        }
        if (end == n)
            break;
        cap = grow(cap, n - start);
        if (_PyBytes_Resize(&out, 2 * cap) < 0)
            return NULL;
    }
    if (w != PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, w) < 0)
        return NULL;
    return Py_BuildValue("(Nn)", out, i);
}

/* --- decode_run: Juki bytes -> str, every valid unit ----------------------- */

/* The entry of the big-endian unit at src: its one-for-one code point, or 0. */
static inline uint16_t
decoded(const unsigned char *t, const unsigned char *src)
{
    uint16_t v;
    memcpy(&v, t + 2 * (((size_t)src[0] << 8) | src[1]), 2);
    return v;
}

/* The sequence table, checked once per call (see the top of this file). */
typedef struct {
    const unsigned char *index; /* TABLE_SIZE native uint16: 1-based number or 0 */
    const unsigned char *points; /* count pairs of native uint32 */
    Py_ssize_t count;
} Sequences;

static int
sequences_arg(PyObject *arg, Sequences *q, const char *fn)
{
    Py_ssize_t size;

    if (!PyBytes_Check(arg) || (size = PyBytes_GET_SIZE(arg)) < RUN_TABLE_SIZE ||
        (size - RUN_TABLE_SIZE) % 8 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): sequences must be bytes of length %d + 8 * n", fn, RUN_TABLE_SIZE);
        return -1;
    }
    q->index = (const unsigned char *)PyBytes_AS_STRING(arg);
    q->points = q->index + RUN_TABLE_SIZE;
    q->count = (size - RUN_TABLE_SIZE) / 8;
    return 0;
}

/* The spelling of the multi-unit code at src: its length (1 or 2) with its
 * code points in out[0..1], or 0 when the unit has none (or the table's
 * entry is out of range: then it is treated as no code, never trusted). */
static inline int
sequence(const Sequences *q, const unsigned char *src, Py_UCS4 out[2])
{
    uint16_t k;
    uint32_t p[2];

    memcpy(&k, q->index + 2 * (((size_t)src[0] << 8) | src[1]), 2);
    if (k == 0 || k > q->count)
        return 0;
    memcpy(p, q->points + 8 * ((size_t)k - 1), 8);
    if (p[0] == 0 || p[0] > 0x10FFFF || p[1] > 0x10FFFF)
        return 0;
    out[0] = p[0];
    out[1] = p[1];
    return p[1] ? 2 : 1;
}

/* Per output kind: convert the units of src[i:end] into dst up to the first
 * unit whose entry is 0 or has a bit of WIDER set (too wide for the kind);
 * return the byte offset reached. */
#define DECODE_KIND(TYPE, WIDER)                                                 \
    static Py_ssize_t decode_##TYPE(const unsigned char *src, Py_ssize_t i,     \
                                    Py_ssize_t end, const unsigned char *t,    \
                                    TYPE *dst)                                 \
    {                                                                          \
        for (; i < end; i += 2, dst++) {                                       \
            uint16_t v = decoded(t, src + i);                                  \
            if (!v || (v & (WIDER)))                                           \
                break;                                                         \
            *dst = (TYPE)v;                                                    \
        }                                                                      \
        return i;                                                              \
    }

DECODE_KIND(Py_UCS1, 0xFF80) /* ASCII */
DECODE_KIND(Py_UCS2, 0)

/* From a sequence on: the number of characters the valid units of
 * src[i:end) decode to, and in *stop the offset of the first unit that is no
 * code (or end). A pass of its own so that the UCS-4 str is made at its
 * exact size: growing it, or shrinking a generous one, costs page faults
 * (glibc maps large blocks afresh) worth more than the decoding. */
static Py_ssize_t
wide_length(const unsigned char *src, Py_ssize_t i, Py_ssize_t end, const unsigned char *t,
            const Sequences *q, Py_ssize_t *stop)
{
    Py_ssize_t len = 0;
    Py_UCS4 seq[2];
    int m;

    for (; i < end; i += 2) {
        if (decoded(t, src + i)) {
            len++;
            continue;
        }
        if (!(m = sequence(q, src + i, seq)))
            break;
        len += m;
    }
    *stop = i;
    return len;
}

/* Decode src[i:stop), every unit valid (wide_length said so), into dst;
 * return whether a character above U+FFFF was written. */
static int
decode_wide(const unsigned char *src, Py_ssize_t i, Py_ssize_t stop, const unsigned char *t,
            const Sequences *q, Py_UCS4 *dst)
{
    Py_UCS4 seq[2] = {0, 0}, astral = 0;
    int m;

    for (; i < stop; i += 2) {
        uint16_t v = decoded(t, src + i);
        if (v) {
            *dst++ = v;
            continue;
        }
        /* A sequence: wide_length read the same units of the same tables
         * (the GIL is held, so the buffer cannot change in between). */
        m = sequence(q, src + i, seq);
        *dst++ = seq[0];
        if (m == 2)
            *dst++ = seq[1];
        astral |= seq[0] | seq[1];
    }
    return astral > 0xFFFF;
}

/* The str of the k UCS-2 characters of `wide`: itself when one of them is
 * above U+00FF (found at once in Japanese text), else a new 1-byte copy, as
 * a str must have the narrowest kind its characters allow. */
static PyObject *
narrowest(PyObject *wide, Py_ssize_t k)
{
    const Py_UCS2 *s = PyUnicode_2BYTE_DATA(wide);
    Py_UCS2 max = 0;
    Py_ssize_t j;
    PyObject *narrow;

    for (j = 0; j < k; j++) {
        if (s[j] > 0xFF)
            return wide;
        max |= s[j];
    }
    narrow = PyUnicode_New(k, max);
    if (narrow != NULL) {
        Py_UCS1 *d = PyUnicode_1BYTE_DATA(narrow);
        for (j = 0; j < k; j++)
            d[j] = (Py_UCS1)s[j];
    }
    Py_DECREF(wide);
    return narrow;
}

/* A new str of cap characters of maxchar's kind (wider than `from`'s)
 * starting with the k characters of `from`. */
static PyObject *
widen(PyObject *from, Py_ssize_t k, Py_ssize_t cap, Py_UCS4 maxchar)
{
    PyObject *to = PyUnicode_New(cap, maxchar);
    Py_ssize_t j;

    if (to == NULL)
        return NULL;
    if (PyUnicode_KIND(to) == PyUnicode_2BYTE_KIND) {
        const Py_UCS1 *s = PyUnicode_1BYTE_DATA(from);
        Py_UCS2 *d = PyUnicode_2BYTE_DATA(to);
        for (j = 0; j < k; j++)
            d[j] = s[j];
    } else if (PyUnicode_KIND(from) == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *s = PyUnicode_1BYTE_DATA(from);
        Py_UCS4 *d = PyUnicode_4BYTE_DATA(to);
        for (j = 0; j < k; j++)
            d[j] = s[j];
    } else {
        const Py_UCS2 *s = PyUnicode_2BYTE_DATA(from);
        Py_UCS4 *d = PyUnicode_4BYTE_DATA(to);
        for (j = 0; j < k; j++)
            d[j] = s[j];
    }
    return to;
}

/* The UCS-4 phase of decode_run: from the sequence at byte offset *at (of
 * n whole-unit bytes), with the k characters decoded so far in *out. On
 * success *out is the whole result in its narrowest kind and *at the offset
 * reached. */
static int
decode_rest_wide(const unsigned char *src, Py_ssize_t *at, Py_ssize_t n, const unsigned char *t,
                 const Sequences *q, PyObject **out, Py_ssize_t k)
{
    Py_ssize_t stop, len = wide_length(src, *at, n, t, q, &stop);

    Py_SETREF(*out, widen(*out, k, k + len, 0x10FFFF));
    if (*out == NULL)
        return -1;
    if (!decode_wide(src, *at, stop, t, q, PyUnicode_4BYTE_DATA(*out) + k)) {
        /* Only BMP characters after all (a sequence of two BMP characters):
         * a str must not be wider than its characters. */
        PyObject *narrow =
            PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, PyUnicode_4BYTE_DATA(*out), k + len);
        Py_SETREF(*out, narrow);
        if (*out == NULL)
            return -1;
    }
    *at = stop;
    return 0;
}

PyDoc_STRVAR(decode_run_doc,
             "decode_run(table, sequences, data, start, /) -> (str, stop)\n\n"
             "Decode the big-endian 16-bit units of data (a contiguous buffer) from\n"
             "byte offset start up to byte offset stop: the first unit that has neither\n"
             "an entry in table (bytes, 131072 long: native-order uint16 code point at\n"
             "2*unit) nor a spelling in sequences (see _scan.c), or where fewer than\n"
             "two bytes remain (stop == len when none do). start is clamped to\n"
             "[0, len(data)].");

static PyObject *
decode_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *table, *src;
    Py_ssize_t start, i, end, cap, units, n;
    PyObject *out = NULL;
    Py_buffer view;
    Sequences q;
    int wide = 0;

    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "decode_run() takes 4 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (!(table = table_arg(args[0], RUN_TABLE_SIZE, "decode_run")))
        return NULL;
    if (sequences_arg(args[1], &q, "decode_run") < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    src = view.buf;
    n = view.len;
    if (start_arg(args[3], n, &start) < 0)
        goto fail;
    units = (n - start) / 2;
    if (units == 0) {
        PyBuffer_Release(&view);
        return Py_BuildValue("(sn)", "", start);
    }
    /* ASCII into a 1-byte str while it lasts (a str must have the narrowest
     * kind its characters allow), then UCS-2 into a 2-byte one, made 1-byte
     * at the end when no character is above U+00FF after all; from the
     * first multi-unit sequence on, UCS-4. Tracking the maximum while
     * decoding would cost a quarter of the decoding. */
    cap = units < BLOCK ? units : BLOCK;
    if (!(out = PyUnicode_New(cap, 0x7F)))
        goto fail;
    for (i = start;;) {
        end = start + 2 * cap;
        if (!wide)
            i = decode_Py_UCS1(src, i, end, table, PyUnicode_1BYTE_DATA(out) + (i - start) / 2);
        else
            i = decode_Py_UCS2(src, i, end, table, PyUnicode_2BYTE_DATA(out) + (i - start) / 2);
        if (!wide && i < end && decoded(table, src + i)) {
            Py_SETREF(out, widen(out, (i - start) / 2, cap, 0xFFFF));
            if (out == NULL)
                goto fail;
            wide = 1;
            continue;
        }
        if (i < end || cap == units)
            break;
        cap = grow(cap, units);
        if (PyUnicode_Resize(&out, cap) < 0)
            goto fail;
    }
    if (i < end) {
        /* Stopped at a unit with no one-for-one entry (end <= start + 2 *
         * units, so the unit is whole): a sequence goes on in UCS-4. */
        Py_UCS4 seq[2];
        if (sequence(&q, src + i, seq)) {
            if (decode_rest_wide(src, &i, start + 2 * units, table, &q, &out, (i - start) / 2) <
                0)
                goto fail;
            PyBuffer_Release(&view);
            return Py_BuildValue("(Nn)", out, i);
        }
    }
    PyBuffer_Release(&view);
    if ((i - start) / 2 != cap && PyUnicode_Resize(&out, (i - start) / 2) < 0) {
        Py_DECREF(out); /* unlike _PyBytes_Resize, left to the caller on failure */
        return NULL;
    }
    if (wide && !(out = narrowest(out, (i - start) / 2)))
        return NULL;
    return Py_BuildValue("(Nn)", out, i);

fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

/* --- parse_row: one notice row -> record, the common case only ------------ */

typedef struct {
    PyObject *empty;      /* () for tp_new */
    PyObject *record_id;  /* the record's attribute names, interned */
    PyObject *pattern;
    PyObject *values;
} scan_state;

static inline scan_state *
state_of(PyObject *module)
{
    return (scan_state *)PyModule_GetState(module);
}

/* One field of the row: where it ends in the decoded characters, and the OR
 * of its characters (below 0x80, 0x100, 0x10000 exactly when every one is). */
typedef struct {
    Py_ssize_t end;
    Py_UCS4 bits;
} Field;

/* A new str of s[0:len) in the kind `bits` calls for. */
static PyObject *
field_str(const Py_UCS4 *s, Py_ssize_t len, Py_UCS4 bits)
{
    PyObject *str = PyUnicode_New(len, bits > 0xFFFF ? 0x10FFFF : bits);
    Py_ssize_t j;

    if (str == NULL || len == 0)
        return str;
    switch (PyUnicode_KIND(str)) {
    case PyUnicode_1BYTE_KIND: {
        Py_UCS1 *d = PyUnicode_1BYTE_DATA(str);
        for (j = 0; j < len; j++)
            d[j] = (Py_UCS1)s[j];
        break;
    }
    case PyUnicode_2BYTE_KIND: {
        Py_UCS2 *d = PyUnicode_2BYTE_DATA(str);
        for (j = 0; j < len; j++)
            d[j] = (Py_UCS2)s[j];
        break;
    }
    default:
        memcpy(PyUnicode_4BYTE_DATA(str), s, (size_t)len * sizeof(Py_UCS4));
    }
    return str;
}

/* Decode the units of src[0:n) (n even) into chars and split them at commas
 * into at most `width` fields. Returns the number of fields, or -1 when the
 * row is not a common one: a unit that is no code, a quote, CR or LF, or
 * more than `width` fields. */
static Py_ssize_t
split_units(const unsigned char *src, Py_ssize_t n, const unsigned char *t, const Sequences *q,
            Py_UCS4 *chars, Field *fields, Py_ssize_t width)
{
    Py_ssize_t i, k = 0, nf = 0;
    Py_UCS4 bits = 0, seq[2];
    int m, j;

    for (i = 0; i < n; i += 2) {
        Py_UCS4 c = decoded(t, src + i);
        if (c == ',') {
            if (nf == width - 1)
                return -1;
            fields[nf].end = k;
            fields[nf++].bits = bits;
            bits = 0;
            continue;
        }
        if (c > '"' || (c != 0 && c != '"' && c != '\r' && c != '\n')) {
            chars[k++] = c;
            bits |= c;
            continue;
        }
        if (c != 0 || !(m = sequence(q, src + i, seq)))
            return -1; /* a quote, CR, LF, or no code */
        for (j = 0; j < m; j++) {
            /* No sequence holds these today; if one did, Python would split it. */
            if (seq[j] == ',' || seq[j] == '"' || seq[j] == '\r' || seq[j] == '\n')
                return -1;
            chars[k++] = seq[j];
            bits |= seq[j];
        }
    }
    fields[nf].end = k;
    fields[nf++].bits = bits;
    return nf;
}

/* The record for the fields: record_type made as object.__new__ makes it,
 * its three attributes set as object.__setattr__ sets them (what a frozen
 * dataclass's __init__ does, without a Python frame). */
static PyObject *
build_record(scan_state *st, PyObject *record_type, PyObject *columns, const Py_UCS4 *chars,
             const Field *fields, Py_ssize_t width)
{
    PyObject *record_id = NULL, *pattern = NULL, *values = NULL, *record = NULL, *value;
    PyTypeObject *type = (PyTypeObject *)record_type;
    Py_ssize_t f, begin;

    if (!(values = PyDict_New()))
        goto done;
    for (f = 2; f < width; f++) {
        begin = fields[f - 1].end;
        if (fields[f].end == begin)
            continue; /* an empty field is a missing key */
        value = field_str(chars + begin, fields[f].end - begin, fields[f].bits);
        if (value == NULL)
            goto done;
        if (PyDict_SetItem(values, PyTuple_GET_ITEM(columns, f - 2), value) < 0) {
            Py_DECREF(value);
            goto done;
        }
        Py_DECREF(value);
    }
    if (!(record_id = field_str(chars, fields[0].end, fields[0].bits)))
        goto done;
    begin = fields[0].end;
    if (!(pattern = field_str(chars + begin, fields[1].end - begin, fields[1].bits)))
        goto done;
    if (type->tp_new == NULL) {
        PyErr_Format(PyExc_TypeError, "cannot create '%.100s' instances", type->tp_name);
        goto done;
    }
    if (!(record = type->tp_new(type, st->empty, NULL)))
        goto done;
    if (PyObject_GenericSetAttr(record, st->record_id, record_id) < 0 ||
        PyObject_GenericSetAttr(record, st->pattern, pattern) < 0 ||
        PyObject_GenericSetAttr(record, st->values, values) < 0)
        Py_CLEAR(record);
done:
    Py_XDECREF(record_id);
    Py_XDECREF(pattern);
    Py_XDECREF(values);
    return record;
}

/* Rows are short (a notice row is ~200 characters): these cover them
 * without an allocation; longer ones get one. */
#define LOCAL_CHARS 1024
#define LOCAL_FIELDS 128

PyDoc_STRVAR(parse_row_doc,
             "parse_row(table, sequences, columns, record_type, line, /) -> record or None\n\n"
             "The record of one notice-file line in Juki code (a contiguous buffer,\n"
             "without its CR LF) when it is a common row: every unit a code (tables\n"
             "as for decode_run), no quote, CR or LF, exactly len(columns) + 2\n"
             "comma-separated fields. The record is record_type's instance with\n"
             "record_id and pattern (the first two fields) and values: a new dict of\n"
             "columns[i] -> field i + 2 for each non-empty field, in column order.\n"
             "None for any other line (and an odd length): the caller's parser\n"
             "decides what it is and explains what is wrong.");

static PyObject *
parse_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *table;
    Sequences q;
    PyObject *columns, *record_type, *result = NULL;
    Py_buffer view;
    Py_ssize_t width, units, nf;
    Py_UCS4 local_chars[LOCAL_CHARS], *chars = local_chars;
    Field local_fields[LOCAL_FIELDS], *fields = local_fields;

    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "parse_row() takes 5 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (!(table = table_arg(args[0], RUN_TABLE_SIZE, "parse_row")))
        return NULL;
    if (sequences_arg(args[1], &q, "parse_row") < 0)
        return NULL;
    columns = args[2];
    record_type = args[3];
    if (!PyTuple_Check(columns)) {
        PyErr_Format(PyExc_TypeError, "parse_row(): columns must be a tuple, not %.100s",
                     Py_TYPE(columns)->tp_name);
        return NULL;
    }
    if (!PyType_Check(record_type)) {
        PyErr_Format(PyExc_TypeError, "parse_row(): record_type must be a type, not %.100s",
                     Py_TYPE(record_type)->tp_name);
        return NULL;
    }
    if (PyObject_GetBuffer(args[4], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    width = PyTuple_GET_SIZE(columns) + 2;
    if (view.len % 2) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    units = view.len / 2;
    /* Each unit decodes to at most two characters. */
    if (units > LOCAL_CHARS / 2) {
        if ((size_t)units > PY_SSIZE_T_MAX / (2 * sizeof(Py_UCS4)) ||
            !(chars = PyMem_Malloc((size_t)units * 2 * sizeof(Py_UCS4)))) {
            PyErr_NoMemory();
            goto done;
        }
    }
    if (width > LOCAL_FIELDS) {
        if ((size_t)width > PY_SSIZE_T_MAX / sizeof(Field) ||
            !(fields = PyMem_Malloc((size_t)width * sizeof(Field)))) {
            PyErr_NoMemory();
            goto done;
        }
    }
    nf = split_units(view.buf, view.len, table, &q, chars, fields, width);
    if (nf != width)
        result = Py_NewRef(Py_None);
    else
        result = build_record(state_of(module), record_type, columns, chars, fields, width);
done:
    if (chars != local_chars)
        PyMem_Free(chars);
    if (fields != local_fields)
        PyMem_Free(fields);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef scan_methods[] = {
    {"find_special_str", (PyCFunction)(void (*)(void))find_special_str, METH_FASTCALL,
     find_special_str_doc},
    {"any_flagged", (PyCFunction)(void (*)(void))any_flagged, METH_FASTCALL, any_flagged_doc},
    {"encode_run", (PyCFunction)(void (*)(void))encode_run, METH_FASTCALL, encode_run_doc},
    {"decode_run", (PyCFunction)(void (*)(void))decode_run, METH_FASTCALL, decode_run_doc},
    {"parse_row", (PyCFunction)(void (*)(void))parse_row, METH_FASTCALL, parse_row_doc},
    {NULL, NULL, 0, NULL},
};

static int
scan_exec(PyObject *module)
{
    scan_state *st = state_of(module);

    if (!(st->empty = PyTuple_New(0)) ||
        !(st->record_id = PyUnicode_InternFromString("record_id")) ||
        !(st->pattern = PyUnicode_InternFromString("pattern")) ||
        !(st->values = PyUnicode_InternFromString("values")))
        return -1;
    if (PyModule_AddIntConstant(module, "TABLE_SIZE", TABLE_SIZE) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "RUN_TABLE_SIZE", RUN_TABLE_SIZE);
}

static int
scan_traverse(PyObject *module, visitproc visit, void *arg)
{
    scan_state *st = state_of(module);

    Py_VISIT(st->empty);
    Py_VISIT(st->record_id);
    Py_VISIT(st->pattern);
    Py_VISIT(st->values);
    return 0;
}

static int
scan_clear(PyObject *module)
{
    scan_state *st = state_of(module);

    Py_CLEAR(st->empty);
    Py_CLEAR(st->record_id);
    Py_CLEAR(st->pattern);
    Py_CLEAR(st->values);
    return 0;
}

static void
scan_free(void *module)
{
    scan_clear((PyObject *)module);
}

static PyModuleDef_Slot scan_slots[] = {
    {Py_mod_exec, scan_exec},
    {0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "common.juki._scan",
    .m_doc = "Finds the characters the juki codec must look up, converts the runs "
             "between them, and parses the notice file's common row; all other "
             "semantics live in common.juki.codec and common.noticefile.",
    .m_size = sizeof(scan_state),
    .m_methods = scan_methods,
    .m_slots = scan_slots,
    .m_traverse = scan_traverse,
    .m_clear = scan_clear,
    .m_free = scan_free,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&scan_module);
}
