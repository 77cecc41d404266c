/*
 * common.juki._scan: the C half of the "juki" codec's speed work.
 *
 * Why this exists: the codec runs Python's C utf-16-be codec over whole
 * strings and then has to find the few characters that are not their own
 * code. A compiled regex character class does that at ~6 ns/char, seven
 * times the cost of the utf-16-be codec itself; find_special_str needs
 * ~0.4 ns/char. When some characters are table-mapped (every 佐々木 holds
 * one), splicing them in from Python costs more than all the rest: so
 * encode_run and decode_run also produce the output in C for the
 * one-for-one cases (a character with a single-unit code, a unit whose
 * canonical decoding is one BMP character), and hand back to Python at the
 * first character or unit that is anything else. Every mapping comes from
 * tables built in common/juki/tables.py; every error, message and position
 * rule stays in common/juki/codec.py, which uses the regex and its own
 * loops instead when this module is not built. Plain C99 and the CPython API; nothing else.
 *
 * find_special_str's table (65,536 bytes) holds, for each BMP code point c,
 * a nonzero byte at index c when c is special. A byte per code point rather
 * than a bit: one load per character, twice as fast as a bit test.
 * Characters above U+FFFF are always special (no Juki code is one).
 *
 * The run tables (131,072 bytes) hold a 16-bit entry per BMP code point or
 * per Juki unit; 0 means "not one-for-one: Python decides". 0 is free as a
 * marker: U+0000 has no Juki code and J+0000 decodes to nothing.
 *
 * The table comes first in every function so that
 * functools.partial(function, table) gives the codec a callable without a
 * Python frame per call.
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
 * the first character that is not one-for-one; return its index, or end.
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

PyDoc_STRVAR(encode_run_doc,
             "encode_run(table, text, start, /) -> (bytes, stop)\n\n"
             "Encode text[start:stop], where stop is the index of the first character\n"
             "at or after start that is above U+FFFF or whose 2-byte entry in table\n"
             "(bytes, 131072 long: the code of chr(c) big-endian at 2*c) is zero, or\n"
             "len(text). When that character is a variation selector following a\n"
             "character of the run, stop is the index of that character, so the\n"
             "caller gets the sequence whole. start is clamped to [0, len(text)].");

static PyObject *
encode_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *table;
    Py_ssize_t start, i, end, cap, n;
    PyObject *text, *out;
    unsigned char *dst;
    int kind;
    const void *data;

    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "encode_run() takes 3 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (!(table = table_arg(args[0], RUN_TABLE_SIZE, "encode_run")))
        return NULL;
    text = args[1];
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
    if (start_arg(args[2], n, &start) < 0)
        return NULL;
    kind = PyUnicode_KIND(text);
    data = PyUnicode_DATA(text);
    cap = n - start < BLOCK ? n - start : BLOCK;
    if (!(out = PyBytes_FromStringAndSize(NULL, 2 * cap)))
        return NULL;
    for (i = start;; cap = grow(cap, n - start)) {
        if (2 * cap != PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, 2 * cap) < 0)
            return NULL;
        dst = (unsigned char *)PyBytes_AS_STRING(out) + 2 * (i - start);
        end = start + cap;
        if (kind == PyUnicode_1BYTE_KIND)
            i = encode_Py_UCS1(data, i, end, table, dst);
        else if (kind == PyUnicode_2BYTE_KIND)
            i = encode_Py_UCS2(data, i, end, table, dst);
        else
            i = encode_Py_UCS4(data, i, end, table, dst);
        if (i < end || end == n)
            break;
    }
    if (i < n && i > start && is_selector(PyUnicode_READ(kind, data, i)))
        i--; /* the character before it was one-for-one, so no selector */
    if (2 * (i - start) != PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, 2 * (i - start)) < 0)
        return NULL;
    return Py_BuildValue("(Nn)", out, i);
}

/* --- decode_run: Juki bytes -> str, one-for-one units only --------------- */

/* The entry of the big-endian unit at src: its one-for-one code point, or 0. */
static inline uint16_t
decoded(const unsigned char *t, const unsigned char *src)
{
    uint16_t v;
    memcpy(&v, t + 2 * (((size_t)src[0] << 8) | src[1]), 2);
    return v;
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

/* A new UCS-2 str of cap characters starting with the k of the ASCII `ascii`. */
static PyObject *
widen(PyObject *ascii, Py_ssize_t k, Py_ssize_t cap)
{
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(ascii);
    PyObject *wide = PyUnicode_New(cap, 0xFFFF);
    Py_ssize_t j;

    if (wide != NULL) {
        Py_UCS2 *d = PyUnicode_2BYTE_DATA(wide);
        for (j = 0; j < k; j++)
            d[j] = s[j];
    }
    return wide;
}

PyDoc_STRVAR(decode_run_doc,
             "decode_run(table, data, start, /) -> (str, stop)\n\n"
             "Decode the big-endian 16-bit units of data (a contiguous buffer) from\n"
             "byte offset start up to byte offset stop: the first unit whose entry in\n"
             "table (bytes, 131072 long: native-order uint16 code point at 2*unit) is\n"
             "zero, or where fewer than two bytes remain (stop == len when none do).\n"
             "start is clamped to [0, len(data)].");

static PyObject *
decode_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *table, *src;
    Py_ssize_t start, i, end, cap, units, n;
    PyObject *out = NULL;
    Py_buffer view;
    int wide = 0;

    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "decode_run() takes 3 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (!(table = table_arg(args[0], RUN_TABLE_SIZE, "decode_run")))
        return NULL;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    src = view.buf;
    n = view.len;
    if (start_arg(args[2], n, &start) < 0)
        goto fail;
    units = (n - start) / 2;
    if (units == 0) {
        PyBuffer_Release(&view);
        return Py_BuildValue("(sn)", "", start);
    }
    /* ASCII into a 1-byte str while it lasts (a str must have the narrowest
     * kind its characters allow), then UCS-2 into a 2-byte one, made 1-byte
     * at the end when no character is above U+00FF after all. Tracking the
     * maximum while decoding would cost a quarter of the decoding. */
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
            Py_SETREF(out, widen(out, (i - start) / 2, cap));
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

static PyMethodDef scan_methods[] = {
    {"find_special_str", (PyCFunction)(void (*)(void))find_special_str, METH_FASTCALL,
     find_special_str_doc},
    {"encode_run", (PyCFunction)(void (*)(void))encode_run, METH_FASTCALL, encode_run_doc},
    {"decode_run", (PyCFunction)(void (*)(void))decode_run, METH_FASTCALL, decode_run_doc},
    {NULL, NULL, 0, NULL},
};

static int
scan_exec(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "TABLE_SIZE", TABLE_SIZE) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "RUN_TABLE_SIZE", RUN_TABLE_SIZE);
}

static PyModuleDef_Slot scan_slots[] = {
    {Py_mod_exec, scan_exec},
    {0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "common.juki._scan",
    .m_doc = "Finds the characters the juki codec must look up and converts the "
             "one-for-one runs between them; all other semantics live in "
             "common.juki.codec.",
    .m_size = 0,
    .m_methods = scan_methods,
    .m_slots = scan_slots,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&scan_module);
}
