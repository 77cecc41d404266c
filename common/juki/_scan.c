/*
 * common.juki._scan: find the first character that needs the Juki table.
 *
 * Why this exists: the "juki" codec runs Python's C utf-16-be codec over
 * whole strings and then has to find the few characters that are not their
 * own code. A compiled regex character class does that at ~6 ns/char,
 * seven times the cost of the utf-16-be codec itself; this loop needs
 * ~0.4 ns/char. It only scans: every mapping, error and position rule stays
 * in common/juki/codec.py, which uses the regex instead when this module is
 * not built. Plain C99 and the CPython API; nothing else.
 *
 * The table (65,536 bytes, from common/juki/tables.py) holds, for each BMP
 * code point c, a nonzero byte at index c when c is special. A byte per code
 * point rather than a bit: one load per character, twice as fast as a bit
 * test. Characters above U+FFFF are always special (no Juki code is one).
 *
 * The table comes first so that functools.partial(find_special_str, table)
 * gives a scanner f(text, start) without a Python frame per call.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define TABLE_SIZE 65536

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

static PyMethodDef scan_methods[] = {
    {"find_special_str", (PyCFunction)(void (*)(void))find_special_str, METH_FASTCALL,
     find_special_str_doc},
    {NULL, NULL, 0, NULL},
};

static int
scan_exec(PyObject *module)
{
    return PyModule_AddIntConstant(module, "TABLE_SIZE", TABLE_SIZE);
}

static PyModuleDef_Slot scan_slots[] = {
    {Py_mod_exec, scan_exec},
    {0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "common.juki._scan",
    .m_doc = "Finds the characters the juki codec must look up; scans only, all "
             "semantics live in common.juki.codec.",
    .m_size = 0,
    .m_methods = scan_methods,
    .m_slots = scan_slots,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&scan_module);
}
