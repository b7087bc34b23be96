/* Fast path of dicomd.dicom.parser: converts runs of "simple" explicit VR little endian elements to
 * their DICOM JSON form in C.
 *
 * scan(buf, pos, end, ds, text_ok, creators, prefix, bulk_ctx) starts at offset `pos`, adds each simple
 * element to the dict `ds` exactly as parser._Parser.read_dataset would, and returns the offset of the
 * first element it does not handle (or `end`, or an offset with fewer than 8 bytes left before `end`: a
 * truncated header is the Python parser's to report). The Python parser handles that element and calls
 * scan again, so everything that is not simple (sequences, items, UN, non-ASCII text, tracked
 * attributes, pixel data and the other binary values with special rules, invalid values that need a
 * warning, truncated elements) keeps its one implementation in Python. The Python converters stay the
 * reference: tests compare both paths.
 *
 * Simple:
 * - a short-header VR among AE AS CS DA DS DT IS LO SH ST LT TM UI (ASCII values only; LO SH ST LT
 *   only when the character set keeps ASCII as ASCII) and US SS UL SL FL FD with exactly one value;
 * - PN, as the ASCII branch of _Parser.person_name (same conditions as LO);
 * - a private creator (odd group, element 0x0010-0x00FF) of VR LO: also recorded in `creators`, the
 *   data set's _Ctx.creators, as the Python parser does;
 * - OB OD OF OL OV OW with a defined length, except the tags _Parser.element and ambiguous treat
 *   specially: as _Parser.binary, InlineBinary or (recorded in the bulk dict) BulkDataURI.
 *   `prefix` is the data set's tag path prefix, bulk_ctx the parser's
 *   (bulk dict, bulk threshold, inline_bulk, ByteRange type).
 * Every read is bounds-checked against `end`, which the caller guarantees lies within the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>

/* The version of scan's signature and behaviour parser.py expects: it ignores a stale build. */
#define SCAN_API 2

enum kind { K_NONE, K_MULTI, K_AE, K_UI, K_IS, K_DS, K_TEXT_MULTI, K_TEXT_SINGLE, K_PN, K_BINARY,
            K_US, K_SS, K_UL, K_SL, K_FL, K_FD };

#define N_VRS 26
#define VR_LO 7 /* the index of "LO": the one VR of private creators handled here */
static const char *VR_NAMES[N_VRS] = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "ST",
                                      "LT", "TM", "UI", "US", "SS", "UL", "SL", "FL", "FD", "PN",
                                      "OB", "OD", "OF", "OL", "OV", "OW"};
static const enum kind VR_KINDS[N_VRS] = {K_AE, K_MULTI, K_MULTI, K_MULTI, K_DS, K_MULTI, K_IS,
                                          K_TEXT_MULTI, K_TEXT_MULTI, K_TEXT_SINGLE, K_TEXT_SINGLE,
                                          K_MULTI, K_UI, K_US, K_SS, K_UL, K_SL, K_FL, K_FD, K_PN,
                                          K_BINARY, K_BINARY, K_BINARY, K_BINARY, K_BINARY, K_BINARY};
static signed char vr_table[26][26]; /* index in VR_NAMES by the two letters, -1 for other VRs */
static PyObject *vr_strings[N_VRS];
static PyObject *str_vr, *str_value, *str_alphabetic, *str_ideographic, *str_phonetic, *str_inline,
    *str_bulk_uri, *str_bulkdata;
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
    if (a < 'A' || a > 'Z' || b < 'A' || b > 'Z') return -1;
    return vr_table[a - 'A'][b - 'A'];
}

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
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

/* ASCII without ESC: text the Python parser decodes without its character set (raw.isascii() and
 * 27 not in raw). */
static int plain_ascii(const char *v, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c >= 0x80 || c == 0x1B) return 0;
    }
    return 1;
}

/* The JSON "Value" list of a string VR, Py_None for "no value" ({"vr": vr} only), or NULL: NULL with
 * an exception is an error, NULL without one means "leave this element to the Python parser". */
static PyObject *string_value(enum kind kind, const char *v, Py_ssize_t n) {
    if (!plain_ascii(v, n)) return NULL;
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
    case K_UL: x = PyLong_FromUnsignedLong((unsigned long)le32(p)); break;
    case K_SL: x = PyLong_FromLong((long)(int32_t)le32(p)); break;
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

/* One person name (the part between backslashes) as _Parser.person_name makes it: its "=" groups
 * without the trailing empty ones, the first three as Alphabetic, Ideographic, Phonetic; Py_None when
 * no group is left. */
static PyObject *person_name(const char *v, Py_ssize_t n) {
    Py_ssize_t starts[3], ends[3];
    int groups = 0; /* groups up to the last non-empty one */
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0, g = 0; i <= n; i++) {
        if (i < n && v[i] != '=') continue;
        if (g < 3) { starts[g] = start; ends[g] = i; }
        if (i > start) groups = g < 3 ? (int)g + 1 : 3;
        g++;
        start = i + 1;
    }
    if (groups == 0) Py_RETURN_NONE;
    static PyObject **names[3] = {&str_alphabetic, &str_ideographic, &str_phonetic};
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int g = 0; g < groups; g++) {
        PyObject *s = PyUnicode_DecodeASCII(v + starts[g], ends[g] - starts[g], NULL);
        int failed = !s || PyDict_SetItem(d, *names[g], s) < 0;
        Py_XDECREF(s);
        if (failed) { Py_DECREF(d); return NULL; }
    }
    return d;
}

/* The JSON "Value" list of a PN value on the ASCII branch of _Parser.person_name: the whole value
 * rstrip(b"\0 ") (not each name), then split on backslashes; an empty name is None in a list, a single
 * empty one is no value at all (Py_None). Same NULL convention as string_value. */
static PyObject *person_names(const char *v, Py_ssize_t n) {
    if (!plain_ascii(v, n)) return NULL;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\0')) n--;
    Py_ssize_t count = 1;
    for (Py_ssize_t i = 0; i < n; i++) count += v[i] == '\\';
    PyObject *list = PyList_New(count);
    if (!list) return NULL;
    Py_ssize_t start = 0, k = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i < n && v[i] != '\\') continue;
        PyObject *name = person_name(v + start, i - start);
        if (!name) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, k++, name);
        start = i + 1;
    }
    if (count == 1 && PyList_GET_ITEM(list, 0) == Py_None) {
        Py_DECREF(list);
        Py_RETURN_NONE;
    }
    return list;
}

/* base64.b64encode(p[0:n]).decode("ascii"): standard alphabet, "=" padded. */
static PyObject *base64_string(const unsigned char *p, Py_ssize_t n) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n > PY_SSIZE_T_MAX / 4 * 3 - 3) return PyErr_NoMemory();
    PyObject *s = PyUnicode_New((n + 2) / 3 * 4, 127);
    if (!s) return NULL;
    Py_UCS1 *o = PyUnicode_1BYTE_DATA(s);
    Py_ssize_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t x = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = alphabet[x >> 18];
        *o++ = alphabet[x >> 12 & 63];
        *o++ = alphabet[x >> 6 & 63];
        *o++ = alphabet[x & 63];
    }
    if (i < n) { /* one or two bytes left */
        uint32_t x = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = alphabet[x >> 18];
        *o++ = alphabet[x >> 12 & 63];
        *o++ = i + 1 < n ? alphabet[x >> 6 & 63] : '=';
        *o++ = '=';
    }
    return s;
}

/* What _Parser.binary needs besides the value: from scan's bulk_ctx argument (borrowed references). */
struct bulk_ctx {
    PyObject *bulk;       /* _Parser.bulk: tag path -> ByteRange */
    long long threshold;  /* values longer than this become bulk data (unless inline_bulk) */
    int inline_bulk;      /* deflated data sets: every binary value inline */
    PyObject *byte_range; /* model.ByteRange */
    int ok;               /* 0: a threshold that is not an int, binary values are left to Python */
};

static int parse_bulk_ctx(PyObject *arg, struct bulk_ctx *bc) {
    if (!PyTuple_Check(arg) || PyTuple_GET_SIZE(arg) != 4 || !PyDict_Check(PyTuple_GET_ITEM(arg, 0))) {
        PyErr_SetString(PyExc_TypeError, "scan: bulk_ctx is (bulk dict, threshold, inline_bulk, ByteRange)");
        return -1;
    }
    bc->bulk = PyTuple_GET_ITEM(arg, 0);
    bc->byte_range = PyTuple_GET_ITEM(arg, 3);
    bc->inline_bulk = PyObject_IsTrue(PyTuple_GET_ITEM(arg, 2));
    if (bc->inline_bulk < 0) return -1;
    PyObject *threshold = PyTuple_GET_ITEM(arg, 1);
    bc->ok = PyLong_Check(threshold);
    bc->threshold = LLONG_MAX;
    if (bc->ok) {
        int overflow;
        bc->threshold = PyLong_AsLongLongAndOverflow(threshold, &overflow);
        if (bc->threshold == -1 && PyErr_Occurred()) return -1;
        if (overflow) bc->threshold = overflow > 0 ? LLONG_MAX : -1; /* lengths are never negative */
    }
    return 0;
}

/* Binary values _Parser.element and _Parser.ambiguous do more with than _Parser.binary: pixel data
 * and everything else of group 7FE0 (Extended Offset Table...), overlay data, LUT data, waveform data. */
static int special_binary(uint32_t tag) {
    uint32_t group = tag >> 16;
    return group == 0x7FE0 || ((group & 0xFF01) == 0x6000 && (tag & 0xFFFF) == 0x3000) ||
           tag == 0x00283006 || tag == 0x54000110 || tag == 0x54000112 || tag == 0x5400100A ||
           tag == 0x54001010;
}

/* The element _Parser.binary returns for buf[vpos:vpos+length] (a new reference, NULL on error):
 * {"vr": vr} when empty, else InlineBinary, or BulkDataURI with the range recorded in the bulk dict
 * under prefix + key. */
static PyObject *binary_element(PyObject *vr, PyObject *key, PyObject *prefix, const unsigned char *buf,
                                Py_ssize_t vpos, Py_ssize_t length, const struct bulk_ctx *bc) {
    PyObject *element = PyDict_New();
    if (!element || PyDict_SetItem(element, str_vr, vr) < 0) { Py_XDECREF(element); return NULL; }
    if (length == 0) return element;
    int failed;
    if (!bc->inline_bulk && (long long)length > bc->threshold) {
        PyObject *path = PyUnicode_Concat(prefix, key);
        PyObject *range = path ? PyObject_CallFunction(bc->byte_range, "nn", vpos, length) : NULL;
        PyObject *uri = range ? PyUnicode_Concat(str_bulkdata, path) : NULL;
        failed = !uri || PyDict_SetItem(bc->bulk, path, range) < 0 ||
                 PyDict_SetItem(element, str_bulk_uri, uri) < 0;
        Py_XDECREF(path);
        Py_XDECREF(range);
        Py_XDECREF(uri);
    } else {
        PyObject *text = base64_string(buf + vpos, length);
        failed = !text || PyDict_SetItem(element, str_inline, text) < 0;
        Py_XDECREF(text);
    }
    if (failed) { Py_DECREF(element); return NULL; }
    return element;
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "scan takes 8 arguments (buf, pos, end, ds, text_ok, creators, prefix, bulk_ctx)");
        return NULL;
    }
    PyObject *ds = args[3], *creators = args[5], *prefix = args[6];
    if (!PyDict_Check(ds) || !PyDict_Check(creators) || !PyUnicode_Check(prefix)) {
        PyErr_SetString(PyExc_TypeError, "scan: ds and creators must be dicts, prefix a str");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred()) return NULL;
    int text_ok = PyObject_IsTrue(args[4]);
    if (text_ok < 0) return NULL;
    struct bulk_ctx bc;
    if (parse_bulk_ctx(args[7], &bc) < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
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
        if (group == 0xFFFE) break;
        int stop = 0;
        for (int i = 0; i < n_stop_tags; i++) stop |= stop_tags[i] == tag;
        if (stop) break;
        int vi = vr_index(h[4], h[5]);
        if (vi < 0) break;
        enum kind kind = VR_KINDS[vi];
        int creator = (group & 1) && elem >= 0x0010 && elem < 0x0100;
        if (creator && vi != VR_LO) break; /* private creators of other VRs: the Python parser */
        if ((kind == K_TEXT_MULTI || kind == K_TEXT_SINGLE || kind == K_PN) && !text_ok) break;
        Py_ssize_t vpos, length;
        if (kind == K_BINARY) { /* 12-byte header: 2 reserved bytes, 32-bit length */
            if (!bc.ok || special_binary(tag) || pos + 12 > end) break;
            uint32_t n = le32(h + 8);
            vpos = pos + 12;
            if (n == 0xFFFFFFFFu || (uint64_t)n > (uint64_t)(end - vpos)) break; /* undefined, overrun */
            length = (Py_ssize_t)n;
        } else {
            length = h[6] | h[7] << 8;
            vpos = pos + 8;
            if (vpos + length > end) break;
        }
        PyObject *value = NULL, *key = NULL, *element = NULL;
        if (kind != K_BINARY) {
            if (kind >= K_US) {
                value = binary_value(kind, buf + vpos, length);
            } else if (length == 0) {
                value = Py_NewRef(Py_None);
            } else if (kind == K_PN) {
                value = person_names((const char *)buf + vpos, length);
            } else {
                value = string_value(kind, (const char *)buf + vpos, length);
            }
            if (!value) {
                if (PyErr_Occurred()) goto error;
                break;
            }
        }
        key = key_for(tag);
        if (!key) goto error;
        if (kind == K_BINARY) {
            element = binary_element(vr_strings[vi], key, prefix, buf, vpos, length, &bc);
            if (!element) goto error;
        } else {
            element = PyDict_New();
            if (!element || PyDict_SetItem(element, str_vr, vr_strings[vi]) < 0 ||
                (value != Py_None && PyDict_SetItem(element, str_value, value) < 0))
                goto error;
        }
        if (PyDict_SetItem(ds, key, element) < 0) goto error;
        if (creator && value != Py_None && PyList_GET_SIZE(value) == 1) {
            /* as parser._record_creator: the block's creator, for the VRs of its private elements */
            PyObject *block = PyLong_FromUnsignedLong(tag & 0xFFFF00FF);
            int failed = !block || PyDict_SetItem(creators, block, PyList_GET_ITEM(value, 0)) < 0;
            Py_XDECREF(block);
            if (failed) goto error;
        }
        Py_DECREF(element);
        Py_DECREF(key);
        Py_XDECREF(value);
        pos = vpos + length;
        continue;
    error:
        Py_XDECREF(element);
        Py_XDECREF(key);
        Py_XDECREF(value);
        PyBuffer_Release(&view);
        return NULL;
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
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "Add simple explicit VR LE elements to a data set; return the offset reached."},
    {"set_stop_tags", set_stop_tags, METH_O, "Tags scan leaves to the Python parser."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastscan(void) {
    memset(vr_table, -1, sizeof vr_table);
    for (int i = 0; i < N_VRS; i++) {
        vr_table[VR_NAMES[i][0] - 'A'][VR_NAMES[i][1] - 'A'] = (signed char)i;
        vr_strings[i] = PyUnicode_InternFromString(VR_NAMES[i]);
        if (!vr_strings[i]) return NULL;
    }
    str_vr = PyUnicode_InternFromString("vr");
    str_value = PyUnicode_InternFromString("Value");
    str_alphabetic = PyUnicode_InternFromString("Alphabetic");
    str_ideographic = PyUnicode_InternFromString("Ideographic");
    str_phonetic = PyUnicode_InternFromString("Phonetic");
    str_inline = PyUnicode_InternFromString("InlineBinary");
    str_bulk_uri = PyUnicode_InternFromString("BulkDataURI");
    str_bulkdata = PyUnicode_InternFromString("bulkdata/");
    if (!str_vr || !str_value || !str_alphabetic || !str_ideographic || !str_phonetic || !str_inline ||
        !str_bulk_uri || !str_bulkdata)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "API", SCAN_API) < 0) Py_CLEAR(m);
    return m;
}
