/* Fast path of dicomd.dicom.parser: converts runs of "simple" explicit VR little endian elements to
 * their DICOM JSON form in C.
 *
 * scan(buf, pos, end, ds, text_ok) starts at offset `pos`, adds each simple element to the dict `ds`
 * exactly as parser._Parser.read_dataset would, and returns the offset of the first element it does not
 * handle (or `end`, or an offset with fewer than 8 bytes left before `end`: a truncated header is the
 * Python parser's to report). The Python parser handles that element and calls scan again, so everything that is
 * not simple (sequences, items, binary and long-header VRs, UN, person names, non-ASCII text, private
 * creators, tracked attributes, invalid values that need a warning, truncated elements) keeps its one
 * implementation in Python. The Python converters stay the reference: tests compare both paths.
 *
 * Simple: a short-header VR among AE AS CS DA DS DT IS LO SH ST LT TM UI (ASCII values only; LO SH ST
 * LT only when the character set keeps ASCII as ASCII) and US SS UL SL FL FD with exactly one value.
 * Every read is bounds-checked against `end`, which the caller guarantees lies within the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum kind { K_NONE, K_MULTI, K_AE, K_UI, K_IS, K_DS, K_TEXT_MULTI, K_TEXT_SINGLE,
            K_US, K_SS, K_UL, K_SL, K_FL, K_FD };

#define N_VRS 19
static const char *VR_NAMES[N_VRS] = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "ST",
                                      "LT", "TM", "UI", "US", "SS", "UL", "SL", "FL", "FD"};
static const enum kind VR_KINDS[N_VRS] = {K_AE, K_MULTI, K_MULTI, K_MULTI, K_DS, K_MULTI, K_IS,
                                          K_TEXT_MULTI, K_TEXT_MULTI, K_TEXT_SINGLE, K_TEXT_SINGLE,
                                          K_MULTI, K_UI, K_US, K_SS, K_UL, K_SL, K_FL, K_FD};
static PyObject *vr_strings[N_VRS];
static PyObject *str_vr, *str_value;
/* tags the Python parser must see itself (charset and the attributes later elements depend on) */
#define MAX_STOP_TAGS 32
static uint32_t stop_tags[MAX_STOP_TAGS];
static int n_stop_tags = 0;

/* Data set keys ("GGGGEEEE") by tag, made once: a bounded open-addressing table, never evicted (past
 * three quarters full, or after a few probes, keys are made per use, so hostile files full of odd
 * tags cannot slow it down). The strings keep their hash, so inserting them into data sets does not
 * hash again. */
#define KEY_SLOTS 8192
#define KEY_SHIFT 19 /* 32 - log2(KEY_SLOTS): the high bits of the multiplicative hash */
#define KEY_PROBES 8
static uint32_t key_tags[KEY_SLOTS];
static PyObject *key_strings[KEY_SLOTS];
static int n_keys = 0;

static PyObject *make_key(uint32_t tag) {
    static const char hex[] = "0123456789ABCDEF";
    char text[8];
    for (int i = 7; i >= 0; i--, tag >>= 4) text[i] = hex[tag & 0xF];
    return PyUnicode_DecodeASCII(text, 8, NULL);
}

static PyObject *key_for(uint32_t tag) { /* a new reference */
    uint32_t slot = (uint32_t)(tag * 2654435761u) >> KEY_SHIFT;
    int probes = 0;
    while (key_strings[slot] != NULL) {
        if (key_tags[slot] == tag) return Py_NewRef(key_strings[slot]);
        if (++probes == KEY_PROBES) return make_key(tag);
        slot = (slot + 1) & (KEY_SLOTS - 1);
    }
    PyObject *key = make_key(tag);
    if (key && n_keys < KEY_SLOTS * 3 / 4) {
        key_tags[slot] = tag;
        key_strings[slot] = Py_NewRef(key);
        n_keys++;
    }
    return key;
}

static int vr_index(unsigned char a, unsigned char b) {
    for (int i = 0; i < N_VRS; i++) {
        if (VR_NAMES[i][0] == a && VR_NAMES[i][1] == b) return i;
    }
    return -1;
}

static inline int is_space(unsigned char c) { /* str.isspace() for ASCII */
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
}

/* A list of the backslash-separated parts of v[0:n], each with `strip` applied:
 * 0 none, 1 rstrip("\0 "), 2 strip() (whitespace). */
static PyObject *split_values(const char *v, Py_ssize_t n, int strip) {
    Py_ssize_t count = 1;
    for (Py_ssize_t i = 0; i < n; i++) count += v[i] == '\\';
    PyObject *list = PyList_New(count);
    if (!list) return NULL;
    Py_ssize_t start = 0, k = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i < n && v[i] != '\\') continue;
        Py_ssize_t a = start, b = i;
        if (strip == 1) {
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\0')) b--;
        } else if (strip == 2) {
            while (a < b && is_space((unsigned char)v[a])) a++;
            while (b > a && is_space((unsigned char)v[b - 1])) b--;
        }
        PyObject *s = PyUnicode_DecodeASCII(v + a, b - a, NULL);
        if (!s) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, k++, s);
        start = i + 1;
    }
    return list;
}

/* Number from the ASCII text v[0:n] with Python's own int()/float() (same rules as the Python
 * parser). NULL without an exception set: not convertible here, the Python parser decides. */
static PyObject *number(const char *v, Py_ssize_t n, int is_int) {
    PyObject *s = PyUnicode_DecodeASCII(v, n, NULL);
    if (!s) return NULL;
    PyObject *r = is_int ? PyLong_FromUnicodeObject(s, 10) : PyFloat_FromString(s);
    Py_DECREF(s);
    if (!r) { PyErr_Clear(); return NULL; }
    if (!is_int) {
        double d = PyFloat_AS_DOUBLE(r);
        if (!(d - d == 0.0)) { Py_DECREF(r); return NULL; } /* inf/nan: the Python parser warns */
    }
    return r;
}

/* The JSON "Value" list of a string VR, Py_None for "no value" ({"vr": vr} only), or NULL: NULL with
 * an exception is an error, NULL without one means "leave this element to the Python parser". */
static PyObject *string_value(enum kind kind, const char *v, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c >= 0x80 || c == 0x1B) return NULL;
    }
    Py_ssize_t t = n; /* rstrip(" \0") */
    while (t > 0 && (v[t - 1] == ' ' || v[t - 1] == '\0')) t--;
    switch (kind) {
    case K_MULTI: /* parser._multi_string */
        if (t == 0) Py_RETURN_NONE;
        return split_values(v, t, 0);
    case K_AE: { /* parser._ae: strip each part; one empty part is no value */
        PyObject *list = split_values(v, n, 2);
        if (list && PyList_GET_SIZE(list) == 1 && PyUnicode_GET_LENGTH(PyList_GET_ITEM(list, 0)) == 0) {
            Py_DECREF(list);
            Py_RETURN_NONE;
        }
        return list;
    }
    case K_UI: { /* parser._ui, for values of digits, dots and backslashes only */
        if (t == 0) Py_RETURN_NONE;
        Py_ssize_t part = 0;
        for (Py_ssize_t i = 0; i < t; i++) {
            char c = v[i];
            if (c == '\\') { part = 0; continue; }
            if (!((c >= '0' && c <= '9') || c == '.') || ++part > 64) return NULL;
        }
        return split_values(v, t, 0);
    }
    case K_IS:
    case K_DS: { /* parser._is / parser._ds: every part a number (or blank: None) */
        int is_int = kind == K_IS;
        Py_ssize_t a = 0, b = n;
        if (!is_int) { /* _ds strips the whole value first */
            while (a < b && is_space((unsigned char)v[a])) a++;
            while (b > a && is_space((unsigned char)v[b - 1])) b--;
        }
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\0')) b--;
        int blank = 1;
        for (Py_ssize_t i = a; i < b; i++) blank &= is_space((unsigned char)v[i]);
        if (blank) return NULL; /* empty or odd padding: the Python parser's cases */
        Py_ssize_t count = 1;
        for (Py_ssize_t i = a; i < b; i++) count += v[i] == '\\';
        PyObject *list = PyList_New(count);
        if (!list) return NULL;
        Py_ssize_t start = a, k = 0;
        for (Py_ssize_t i = a; i <= b; i++) {
            if (i < b && v[i] != '\\') continue;
            int part_blank = 1;
            for (Py_ssize_t j = start; j < i; j++) part_blank &= is_space((unsigned char)v[j]);
            PyObject *x;
            if (part_blank) {
                if (count == 1) { Py_DECREF(list); return NULL; }
                x = Py_NewRef(Py_None);
            } else {
                x = number(v + start, i - start, is_int);
                if (!x) { Py_DECREF(list); return NULL; }
            }
            PyList_SET_ITEM(list, k++, x);
            start = i + 1;
        }
        return list;
    }
    case K_TEXT_MULTI: { /* SH LO: rstrip("\0 ") each part; one empty part is no value */
        PyObject *list = split_values(v, n, 1);
        if (list && PyList_GET_SIZE(list) == 1 && PyUnicode_GET_LENGTH(PyList_GET_ITEM(list, 0)) == 0) {
            Py_DECREF(list);
            Py_RETURN_NONE;
        }
        return list;
    }
    case K_TEXT_SINGLE: { /* ST LT: one value, rstrip("\0 ") */
        if (t == 0) Py_RETURN_NONE;
        PyObject *s = PyUnicode_DecodeASCII(v, t, NULL);
        if (!s) return NULL;
        PyObject *list = PyList_New(1);
        if (!list) { Py_DECREF(s); return NULL; }
        PyList_SET_ITEM(list, 0, s);
        return list;
    }
    default:
        return NULL;
    }
}

static PyObject *binary_value(enum kind kind, const unsigned char *p, Py_ssize_t n) {
    static const Py_ssize_t sizes[] = {[K_US] = 2, [K_SS] = 2, [K_UL] = 4, [K_SL] = 4, [K_FL] = 4, [K_FD] = 8};
    if (n != sizes[kind]) return NULL; /* several values (or none): the Python parser */
    PyObject *x;
    switch (kind) {
    case K_US: x = PyLong_FromLong((long)(p[0] | p[1] << 8)); break;
    case K_SS: x = PyLong_FromLong((long)(int16_t)(p[0] | p[1] << 8)); break;
    case K_UL: x = PyLong_FromUnsignedLong((unsigned long)p[0] | (unsigned long)p[1] << 8 |
                                           (unsigned long)p[2] << 16 | (unsigned long)p[3] << 24); break;
    case K_SL: x = PyLong_FromLong((long)(int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                                                   (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24)); break;
    case K_FL: { float f; memcpy(&f, p, 4); x = PyFloat_FromDouble((double)f); break; }
    case K_FD: { double d; memcpy(&d, p, 8); x = PyFloat_FromDouble(d); break; }
    default: return NULL;
    }
    if (!x) return NULL;
    PyObject *list = PyList_New(1);
    if (!list) { Py_DECREF(x); return NULL; }
    PyList_SET_ITEM(list, 0, x);
    return list;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *bufobj, *ds;
    Py_ssize_t pos, end;
    int text_ok;
    if (!PyArg_ParseTuple(args, "OnnO!p", &bufobj, &pos, &end, &PyDict_Type, &ds, &text_ok)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    if (pos < 0 || end > view.len || pos > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan: range outside the buffer");
        return NULL;
    }
    while (pos + 8 <= end) {
        const unsigned char *h = buf + pos;
        uint32_t group = h[0] | h[1] << 8, elem = h[2] | h[3] << 8;
        uint32_t tag = group << 16 | elem;
        if (group == 0xFFFE || ((group & 1) && elem >= 0x0010 && elem < 0x0100)) break;
        int stop = 0;
        for (int i = 0; i < n_stop_tags; i++) stop |= stop_tags[i] == tag;
        if (stop) break;
        int vi = vr_index(h[4], h[5]);
        if (vi < 0) break;
        enum kind kind = VR_KINDS[vi];
        if ((kind == K_TEXT_MULTI || kind == K_TEXT_SINGLE) && !text_ok) break;
        Py_ssize_t length = h[6] | h[7] << 8;
        Py_ssize_t vpos = pos + 8;
        if (vpos + length > end) break;
        PyObject *value;
        if (kind >= K_US) {
            value = binary_value(kind, buf + vpos, length);
        } else if (length == 0) {
            value = Py_NewRef(Py_None);
        } else {
            value = string_value(kind, (const char *)buf + vpos, length);
        }
        if (!value) {
            if (PyErr_Occurred()) { PyBuffer_Release(&view); return NULL; }
            break;
        }
        PyObject *element = PyDict_New();
        PyObject *key = key_for(tag);
        int failed = !element || !key || PyDict_SetItem(element, str_vr, vr_strings[vi]) < 0 ||
                     (value != Py_None && PyDict_SetItem(element, str_value, value) < 0) ||
                     PyDict_SetItem(ds, key, element) < 0;
        Py_XDECREF(key);
        Py_XDECREF(element);
        Py_DECREF(value);
        if (failed) { PyBuffer_Release(&view); return NULL; }
        pos = vpos + length;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(pos);
}

static PyObject *set_stop_tags(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "stop tags must be a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_STOP_TAGS) { Py_DECREF(seq); PyErr_SetString(PyExc_ValueError, "too many stop tags"); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long t = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) { Py_DECREF(seq); return NULL; }
        stop_tags[i] = (uint32_t)t;
    }
    n_stop_tags = (int)n;
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Add simple explicit VR LE elements to a data set; return the offset reached."},
    {"set_stop_tags", set_stop_tags, METH_O, "Tags scan leaves to the Python parser."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastscan(void) {
    for (int i = 0; i < N_VRS; i++) {
        vr_strings[i] = PyUnicode_InternFromString(VR_NAMES[i]);
        if (!vr_strings[i]) return NULL;
    }
    str_vr = PyUnicode_InternFromString("vr");
    str_value = PyUnicode_InternFromString("Value");
    if (!str_vr || !str_value) return NULL;
    return PyModule_Create(&module);
}
