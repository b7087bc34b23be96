/* Fast path of dicomd.dicom.parser: converts runs of "simple" explicit VR little endian elements to
 * their DICOM JSON form in C.
 *
 * scan(buf, pos, end, ds, text_ok, creators, prefix, bulk_ctx, levels, given_back) starts at offset `pos`,
 * adds each
 * simple element to the dict `ds` exactly as parser._Parser.read_dataset would, and returns the offset
 * of the first element it does not handle (or `end`, or an offset with fewer than 8 bytes left before
 * `end`: a truncated header is the Python parser's to report). The Python parser handles that element
 * and calls scan again, so everything that is not simple (UN, non-ASCII text, tracked attributes, pixel
 * data and the other binary values with special rules, invalid values that need a warning, truncated
 * elements, items of implicit VR) keeps its one implementation in Python. The Python converters stay
 * the reference: tests compare both paths.
 *
 * Simple:
 * - a short-header VR among AE AS CS DA DS DT IS LO SH ST LT TM UI (ASCII values only; LO SH ST LT
 *   only when the character set keeps ASCII as ASCII) and US SS UL SL FL FD with exactly one value;
 * - PN, as the ASCII branch of values.person_name (same conditions as LO);
 * - a private creator (odd group, element 0x0010-0x00FF) of VR LO: also recorded in `creators`, the
 *   data set's DataSetContext.creators, as the Python parser does;
 * - OB OD OF OL OV OW with a defined length, except the tags _Parser.element and ambiguous treat
 *   specially: as _Parser.binary, InlineBinary or (recorded in the bulk dict) BulkDataURI.
 *   `prefix` is the data set's tag path prefix, bulk_ctx the parser's
 *   (bulk dict, bulk threshold, inline_bulk, ByteRange type);
 * - SQ, of defined or undefined length, when every item is simple as a whole, as _Parser.read_sequence
 *   reads it: items of defined or undefined length (ended by an item delimiter of length 0), each an
 *   explicit VR data set (its first element has letters where the VR is, as detect_implicit wants; an
 *   empty item is explicit too) of simple elements only, nested sequences included; the sequence
 *   delimiter (when undefined length) or the sequence's length ends it. `levels` is how many more
 *   sequence levels the parser allows (_MAX_DEPTH - _Parser.depth): a sequence needs one.
 *   A sequence is converted whole or not at all: the first thing in it that is not simple (an item of
 *   implicit VR, any element above, the character set, a truncated or missing delimiter, a sequence
 *   nested too deeply...) leaves the whole sequence to the Python parser, with nothing added to `ds` or
 *   the bulk dict (bulk ranges found in a sequence are kept aside until it is complete).
 *   given_back is the parser's set of the offsets of sequence elements scan gave up on: every sequence
 *   open when it gave up (the one holding the element it does not convert, and those around it). scan
 *   leaves those to Python from then on: while the Python parser reads a sequence scan gave back, scan
 *   converts the other sequences in it but not the nested ones on the way to that element again, once
 *   per level (quadratic work on a hostile chain of nested sequences); each byte is converted at most
 *   twice. Items get no `creators`: each item has its own DataSetContext in Python, whose creators only
 *   decide the VRs of UN and implicit VR elements of that item, which scan never converts, so nothing
 *   reads them.
 * Every read is bounds-checked against `end`, which the caller guarantees lies within the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>

/* The version of scan's signature and behaviour parser.py expects: it ignores a stale build. */
#define SCAN_API 5
/* Nesting scan converts, whatever `levels` allows: a bound on its recursion (the parser allows 64). */
#define MAX_LEVELS 128

enum kind { K_NONE, K_MULTI, K_AE, K_UI, K_IS, K_DS, K_TEXT_MULTI, K_TEXT_SINGLE, K_PN, K_BINARY,
            K_SQ, K_US, K_SS, K_UL, K_SL, K_FL, K_FD };

#define N_VRS 27
#define VR_LO 7 /* the index of "LO": the one VR of private creators handled here */
#define VR_SQ 26
static const char *VR_NAMES[N_VRS] = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "ST",
                                      "LT", "TM", "UI", "US", "SS", "UL", "SL", "FL", "FD", "PN",
                                      "OB", "OD", "OF", "OL", "OV", "OW", "SQ"};
static const enum kind VR_KINDS[N_VRS] = {K_AE, K_MULTI, K_MULTI, K_MULTI, K_DS, K_MULTI, K_IS,
                                          K_TEXT_MULTI, K_TEXT_MULTI, K_TEXT_SINGLE, K_TEXT_SINGLE,
                                          K_MULTI, K_UI, K_US, K_SS, K_UL, K_SL, K_FL, K_FD, K_PN,
                                          K_BINARY, K_BINARY, K_BINARY, K_BINARY, K_BINARY, K_BINARY,
                                          K_SQ};
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

/* A list of `part` applied to each backslash-separated part of v[0:n] (with `arg`); NULL when a part
 * gives NULL (with or without an exception, as `part` says). */
typedef PyObject *(*part_fn)(const char *v, Py_ssize_t n, int arg);

static PyObject *split_map(const char *v, Py_ssize_t n, part_fn part, int arg) {
    Py_ssize_t count = 1;
    for (Py_ssize_t i = 0; i < n; i++) count += v[i] == '\\';
    PyObject *list = PyList_New(count);
    if (!list) return NULL;
    Py_ssize_t start = 0, k = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i < n && v[i] != '\\') continue;
        PyObject *x = part(v + start, i - start, arg);
        if (!x) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, k++, x);
        start = i + 1;
    }
    return list;
}

/* One part as a str, with `strip` applied: 0 none, 1 rstrip("\0 "), 2 strip() (whitespace). */
static PyObject *stripped_part(const char *v, Py_ssize_t n, int strip) {
    Py_ssize_t a = 0, b = n;
    if (strip == 1) {
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\0')) b--;
    } else if (strip == 2) {
        while (a < b && is_space((unsigned char)v[a])) a++;
        while (b > a && is_space((unsigned char)v[b - 1])) b--;
    }
    return PyUnicode_DecodeASCII(v + a, b - a, NULL);
}

static PyObject *split_values(const char *v, Py_ssize_t n, int strip) {
    return split_map(v, n, stripped_part, strip);
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
    case K_MULTI: /* values._multi_string */
        if (t == 0) Py_RETURN_NONE;
        return split_values(v, t, 0);
    case K_AE: { /* values._ae: strip each part; one empty part is no value */
        PyObject *list = split_values(v, n, 2);
        if (list && PyList_GET_SIZE(list) == 1 && PyUnicode_GET_LENGTH(PyList_GET_ITEM(list, 0)) == 0) {
            Py_DECREF(list);
            Py_RETURN_NONE;
        }
        return list;
    }
    case K_UI: { /* values._ui, for values of digits, dots and backslashes only */
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
    case K_DS: { /* values._is / values._ds: every part a number (or blank: None) */
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

/* One person name (the part between backslashes) as values.person_name makes it: its "=" groups
 * without the trailing empty ones, the first three as Alphabetic, Ideographic, Phonetic; Py_None when
 * no group is left. (A part_fn for split_map: `unused` is its argument.) */
static PyObject *person_name(const char *v, Py_ssize_t n, int unused) {
    (void)unused;
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

/* The JSON "Value" list of a PN value on the ASCII branch of values.person_name: the whole value
 * rstrip(b"\0 ") (not each name), then split on backslashes; an empty name is None in a list, a single
 * empty one is no value at all (Py_None). Same NULL convention as string_value. */
static PyObject *person_names(const char *v, Py_ssize_t n) {
    if (!plain_ascii(v, n)) return NULL;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\0')) n--;
    PyObject *list = split_map(v, n, person_name, 0);
    if (list && PyList_GET_SIZE(list) == 1 && PyList_GET_ITEM(list, 0) == Py_None) {
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

/* One scan call: what every data set it reads shares. */
struct scan {
    const unsigned char *buf;
    int text_ok;         /* the character set keeps ASCII as ASCII (items inherit it) */
    struct bulk_ctx bc;
    int in_sequence;     /* reading a sequence: bulk ranges go to `pending` */
    PyObject *pending;   /* the bulk ranges of the outermost sequence being read (a dict made on first
                            use), added to the bulk dict once the whole sequence is converted */
    PyObject *given_back; /* the parser's set of the offsets of sequences given back to it (see scan) */
};

/* The tag path prefix of a data set ("" or "<seqtag>/<itemindex>/..."), made when first needed: only
 * bulk data needs it. */
struct path {
    PyObject *prefix;    /* a new reference, NULL until made */
    struct path *parent; /* the data set holding the item's sequence */
    PyObject *key;       /* the sequence's key (borrowed) */
    Py_ssize_t index;    /* the item's index in its sequence */
};

static PyObject *path_prefix(struct path *p) { /* borrowed */
    if (!p->prefix) {
        PyObject *parent = path_prefix(p->parent);
        if (parent) p->prefix = PyUnicode_FromFormat("%U%U/%zd/", parent, p->key, p->index);
    }
    return p->prefix;
}

/* The element _Parser.binary returns for buf[vpos:vpos+length] (a new reference, NULL on error):
 * {"vr": vr} when empty, else InlineBinary, or BulkDataURI with the range recorded under prefix + key
 * (in the bulk dict, or kept aside while in a sequence). */
static PyObject *binary_element(struct scan *st, struct path *path, PyObject *vr, PyObject *key,
                                Py_ssize_t vpos, Py_ssize_t length) {
    PyObject *element = PyDict_New();
    if (!element || PyDict_SetItem(element, str_vr, vr) < 0) { Py_XDECREF(element); return NULL; }
    if (length == 0) return element;
    int failed;
    if (!st->bc.inline_bulk && (long long)length > st->bc.threshold) {
        if (st->in_sequence && !st->pending && !(st->pending = PyDict_New())) { Py_DECREF(element); return NULL; }
        PyObject *target = st->in_sequence ? st->pending : st->bc.bulk;
        PyObject *prefix = path_prefix(path);
        PyObject *full = prefix ? PyUnicode_Concat(prefix, key) : NULL;
        PyObject *range = full ? PyObject_CallFunction(st->bc.byte_range, "nn", vpos, length) : NULL;
        PyObject *uri = range ? PyUnicode_Concat(str_bulkdata, full) : NULL;
        failed = !uri || PyDict_SetItem(target, full, range) < 0 || PyDict_SetItem(element, str_bulk_uri, uri) < 0;
        Py_XDECREF(full);
        Py_XDECREF(range);
        Py_XDECREF(uri);
    } else {
        PyObject *text = base64_string(st->buf + vpos, length);
        failed = !text || PyDict_SetItem(element, str_inline, text) < 0;
        Py_XDECREF(text);
    }
    if (failed) { Py_DECREF(element); return NULL; }
    return element;
}

#define ITEM 0xFFFEE000u
#define ITEM_DELIM 0xFFFEE00Du
#define SEQ_DELIM 0xFFFEE0DDu
#define UNDEFINED 0xFFFFFFFFu

static inline uint32_t tag_at(const unsigned char *p) {
    return (uint32_t)(p[0] | p[1] << 8) << 16 | (uint32_t)(p[2] | p[3] << 8);
}

static inline int upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }

/* An item delimiter of length 0 at pos (within end): how an item of undefined length ends here. (The
 * Python parser reads other lengths too, as an explicit VR header when they look like a VR.) */
static int item_delimiter(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end) {
    return pos + 8 <= end && tag_at(buf + pos) == ITEM_DELIM && le32(buf + pos + 4) == 0;
}

static Py_ssize_t scan_run(struct scan *st, Py_ssize_t pos, Py_ssize_t end, PyObject *ds,
                           PyObject *creators, struct path *path, int levels);

/* Whether the sequence element at `pos` is in the parser's set of sequences given back (add: put it
 * there): 1 yes, 0 no, -1 an error. */
static int given_back(struct scan *st, Py_ssize_t pos, int add) {
    if (!add && PySet_GET_SIZE(st->given_back) == 0) return 0; /* the common case: no lookup */
    PyObject *offset = PyLong_FromSsize_t(pos);
    if (!offset) return -1;
    int r = add ? PySet_Add(st->given_back, offset) : PySet_Contains(st->given_back, offset);
    Py_DECREF(offset);
    return r;
}

/* _Parser.read_sequence of an explicit VR sequence, value buf[pos:end] (end: the container's end when
 * `delimited`), when scan_run converts every item whole: adds {"vr": "SQ", "Value": [items]} to ds.
 * 1: done, *after is the offset after the sequence delimiter (when delimited); 0: left to the Python
 * parser, nothing added to ds or the bulk dict; -1: an error (an exception is set). */
static int sequence(struct scan *st, Py_ssize_t pos, Py_ssize_t end, int delimited, uint32_t tag,
                    struct path *path, int levels, PyObject *ds, Py_ssize_t *after) {
#define GIVE_UP do { result = 0; goto done; } while (0) /* left to the Python parser */
    if (levels < 1) return 0; /* nested too deeply: the Python parser raises */
    const unsigned char *buf = st->buf;
    int outermost = !st->in_sequence;
    st->in_sequence = 1;
    int result = -1;
    PyObject *items = NULL, *element = NULL, *key = key_for(tag);
    if (!key || !(items = PyList_New(0))) goto done;
    for (;;) {
        if (pos >= end && !delimited) break;
        if (pos + 8 > end) GIVE_UP; /* truncated */
        uint32_t itag = tag_at(buf + pos), length = le32(buf + pos + 4);
        if (itag == SEQ_DELIM) { /* its length is not looked at, as in Python */
            pos += 8;
            break;
        }
        if (itag != ITEM) GIVE_UP;
        Py_ssize_t start = pos + 8, iend = end;
        int item_delimited = length == UNDEFINED;
        if (!item_delimited) {
            if ((uint64_t)length > (uint64_t)(end - start)) GIVE_UP; /* overruns */
            iend = start + length;
        }
        /* _Parser.detect_implicit: no letters where the VR would be is an implicit VR item, Python's
         * (an item that is just its delimiter is empty either way). scan_run would stop at such a first
         * element too: this says why. */
        if (start + 6 <= iend && !(upper(buf[start + 4]) && upper(buf[start + 5])) &&
            !(item_delimited && item_delimiter(buf, start, iend)))
            GIVE_UP;
        PyObject *item = PyDict_New();
        if (!item) goto done;
        struct path item_path = {NULL, path, key, PyList_GET_SIZE(items)};
        Py_ssize_t stop = scan_run(st, start, iend, item, NULL, &item_path, levels - 1);
        Py_XDECREF(item_path.prefix);
        int whole = item_delimited ? stop >= 0 && item_delimiter(buf, stop, iend) : stop == iend;
        if (stop < 0 || !whole || PyList_Append(items, item) < 0) {
            Py_DECREF(item);
            if (stop >= 0 && !whole) GIVE_UP; /* an element scan_run does not convert, or no delimiter */
            goto done;
        }
        Py_DECREF(item);
        pos = item_delimited ? stop + 8 : iend;
    }
    element = PyDict_New();
    if (!element || PyDict_SetItem(element, str_vr, vr_strings[VR_SQ]) < 0 ||
        PyDict_SetItem(element, str_value, items) < 0)
        goto done;
    if (outermost && st->pending) { /* the sequence is complete: its bulk ranges, in their order */
        Py_ssize_t i = 0;
        PyObject *k, *v;
        while (PyDict_Next(st->pending, &i, &k, &v))
            if (PyDict_SetItem(st->bc.bulk, k, v) < 0) goto done;
    }
    if (PyDict_SetItem(ds, key, element) < 0) goto done;
    *after = pos;
    result = 1;
done:
    if (outermost) {
        st->in_sequence = 0;
        Py_CLEAR(st->pending);
    }
    Py_XDECREF(element);
    Py_XDECREF(items);
    Py_XDECREF(key);
    return result;
#undef GIVE_UP
}

/* Converts simple elements of buf[pos:end] into ds; the offset of the first other one (see scan), or
 * -1 on error. creators: the data set's private creators, NULL in items (see above). */
static Py_ssize_t scan_run(struct scan *st, Py_ssize_t pos, Py_ssize_t end, PyObject *ds,
                           PyObject *creators, struct path *path, int levels) {
    const unsigned char *buf = st->buf;
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
        if ((kind == K_TEXT_MULTI || kind == K_TEXT_SINGLE || kind == K_PN) && !st->text_ok) break;
        Py_ssize_t vpos, length;
        if (kind == K_BINARY || kind == K_SQ) { /* 12-byte header: 2 reserved bytes, 32-bit length */
            if ((kind == K_BINARY && (!st->bc.ok || special_binary(tag))) || pos + 12 > end) break;
            uint32_t n = le32(h + 8);
            vpos = pos + 12;
            if (kind == K_SQ) {
                int known = given_back(st, pos, 0);
                if (known < 0) return -1;
                if (known) break; /* converting it failed before: see scan */
            }
            if (kind == K_SQ && n == UNDEFINED) { /* up to the sequence delimiter */
                Py_ssize_t after = 0;
                int r = sequence(st, vpos, end, 1, tag, path, levels, ds, &after);
                if (r < 0 || (r == 0 && given_back(st, pos, 1) < 0)) return -1;
                if (r == 0) break;
                pos = after;
                continue;
            }
            if (n == UNDEFINED || (uint64_t)n > (uint64_t)(end - vpos)) break; /* undefined, overrun */
            length = (Py_ssize_t)n;
            if (kind == K_SQ) {
                Py_ssize_t after = 0;
                int r = sequence(st, vpos, vpos + length, 0, tag, path, levels, ds, &after);
                if (r < 0 || (r == 0 && given_back(st, pos, 1) < 0)) return -1;
                if (r == 0) break;
                pos = vpos + length; /* whatever a sequence delimiter in it says, as in Python */
                continue;
            }
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
            element = binary_element(st, path, vr_strings[vi], key, vpos, length);
            if (!element) goto error;
        } else {
            element = PyDict_New();
            if (!element || PyDict_SetItem(element, str_vr, vr_strings[vi]) < 0 ||
                (value != Py_None && PyDict_SetItem(element, str_value, value) < 0))
                goto error;
        }
        if (PyDict_SetItem(ds, key, element) < 0) goto error;
        if (creator && creators && value != Py_None && PyList_GET_SIZE(value) == 1) {
            /* as context.record_creator: the block's creator, for the VRs of its private elements */
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
        return -1;
    }
    return pos;
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "scan takes 10 arguments (buf, pos, end, ds, text_ok, creators, "
                                         "prefix, bulk_ctx, levels, given_back)");
        return NULL;
    }
    PyObject *given = args[9];
    if (!PySet_CheckExact(given)) {
        PyErr_SetString(PyExc_TypeError, "scan: given_back must be a set");
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
    int overflow;
    long long levels = PyLong_AsLongLongAndOverflow(args[8], &overflow);
    if (levels == -1 && PyErr_Occurred()) return NULL;
    if (overflow > 0 || levels > MAX_LEVELS) levels = MAX_LEVELS;
    if (overflow < 0 || levels < 0) levels = 0;
    struct scan st = {NULL, 0, {0}, 0, NULL, given};
    st.text_ok = PyObject_IsTrue(args[4]);
    if (st.text_ok < 0) return NULL;
    if (parse_bulk_ctx(args[7], &st.bc) < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    st.buf = (const unsigned char *)view.buf;
    if (pos < 0 || end > view.len || pos > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan: range outside the buffer");
        return NULL;
    }
    struct path top = {Py_NewRef(prefix), NULL, NULL, 0};
    pos = scan_run(&st, pos, end, ds, creators, &top, (int)levels);
    Py_DECREF(top.prefix);
    PyBuffer_Release(&view);
    return pos < 0 ? NULL : PyLong_FromSsize_t(pos);
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
