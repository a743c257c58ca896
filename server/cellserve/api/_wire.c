/* The Session stream's most frequent messages in C: a keystroke's Append read and its answer
 * written (api/wire.py; protobuf stays the reference and the fallback):
 *
 *   append_request(raw) -> AppendRequest (request_id, offset, text, top_k, want_logprobs,
 *                           want_gates, only_last, no_memory: a struct sequence) or None
 *       a serialized SessionRequest read, when it is an Append in the plain shape a client
 *       writes: request_id and append each at most once, the Append's fields each at most once
 *       (offset, input holding only a non-empty valid UTF-8 text, top_k (-1: unset) and the
 *       four flags as 0/1), no other field; top_k None when unset. None for anything else (other operations, unknown
 *       or repeated fields, an empty or missing text, malformed bytes): protobuf reads those,
 *       and raises where it must. Whatever this returns is what protobuf reads from the same
 *       bytes.
 *
 *   prediction_response(request_id, position, top_k, replayed, superseded) -> bytes
 *       a SessionResponse {request_id, prediction {position, top_characters {entries
 *       {character, probability}...}, replayed, superseded}}: what
 *       ``SessionResponse(request_id=...)`` with ``convert.fill_prediction`` then
 *       ``SerializeToString()`` give, byte for byte (proto3: scalars at their default are left
 *       out, a float is left out only when its bits are zero; fields in number order). ``top_k``
 *       is a tuple of (str, float) pairs; the floats are rounded to float32 as protobuf does.
 *
 * The answer to a keystroke is built per keystroke on the event loop: in protobuf's Python
 * runtime, the message, five entries and the serialization cost a few microseconds, here a
 * fraction of one. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_ENTRIES 4096 /* Settings.max_top_k's ceiling */

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

static unsigned char *put_varint(unsigned char *p, uint64_t v) {
    while (v > 0x7F) {
        *p++ = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

typedef struct {
    const char *utf8;
    Py_ssize_t len;
    uint32_t bits; /* the float32's bits */
    size_t size;   /* the CharProbability message's bytes */
} Entry;

static int as_u64(PyObject *o, const char *what, uint64_t *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be between 0 and 2**64 - 1", what);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static PyObject *prediction_response(PyObject *self, PyObject *args) {
    PyObject *rid_o, *pos_o, *top;
    int replayed, superseded;
    if (!PyArg_ParseTuple(args, "OOO!pp", &rid_o, &pos_o, &PyTuple_Type, &top, &replayed, &superseded)) return NULL;
    uint64_t rid, pos;
    if (as_u64(rid_o, "request_id", &rid) < 0 || as_u64(pos_o, "position", &pos) < 0) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(top);
    if (n > MAX_ENTRIES) {
        PyErr_SetString(PyExc_ValueError, "top_k: too many entries");
        return NULL;
    }
    Entry stack[64];
    Entry *e = n <= 64 ? stack : (Entry *)PyMem_Malloc(sizeof(Entry) * (size_t)n);
    if (!e) return PyErr_NoMemory();
    PyObject *result = NULL;
    size_t entries = 0; /* TopCharacters' bytes */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(top, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_TypeError, "top_k: (str, float) pairs");
            goto done;
        }
        e[i].utf8 = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &e[i].len);
        if (!e[i].utf8) goto done;
        double q = PyFloat_AsDouble(PyTuple_GET_ITEM(pair, 1));
        if (q == -1.0 && PyErr_Occurred()) goto done;
        float f = (float)q;
        memcpy(&e[i].bits, &f, 4);
        e[i].size = (e[i].len ? 1 + varint_len((uint64_t)e[i].len) + (size_t)e[i].len : 0) + (e[i].bits ? 5 : 0);
        entries += 1 + varint_len(e[i].size) + e[i].size;
    }
    size_t pred = (pos ? 1 + varint_len(pos) : 0) + (n ? 1 + varint_len(entries) + entries : 0) + (replayed ? 2 : 0) +
                  (superseded ? 2 : 0);
    size_t total = (rid ? 1 + varint_len(rid) : 0) + 1 + varint_len(pred) + pred;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!result) goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(result);
    if (rid) {
        *p++ = 0x08; /* SessionResponse.request_id = 1, varint */
        p = put_varint(p, rid);
    }
    *p++ = 0x1a; /* SessionResponse.prediction = 3, length-delimited */
    p = put_varint(p, pred);
    if (pos) {
        *p++ = 0x08; /* Prediction.position = 1 */
        p = put_varint(p, pos);
    }
    if (n) {
        *p++ = 0x12; /* Prediction.top_characters = 2 */
        p = put_varint(p, entries);
        for (Py_ssize_t i = 0; i < n; i++) {
            *p++ = 0x0a; /* TopCharacters.entries = 1 */
            p = put_varint(p, e[i].size);
            if (e[i].len) {
                *p++ = 0x0a; /* CharProbability.character = 1 */
                p = put_varint(p, (uint64_t)e[i].len);
                memcpy(p, e[i].utf8, (size_t)e[i].len);
                p += e[i].len;
            }
            if (e[i].bits) {
                *p++ = 0x15; /* CharProbability.probability = 2, fixed32 little-endian */
                for (int b = 0; b < 4; b++) *p++ = (unsigned char)(e[i].bits >> (8 * b));
            }
        }
    }
    if (replayed) {
        *p++ = 0x28; /* Prediction.replayed = 5 */
        *p++ = 1;
    }
    if (superseded) {
        *p++ = 0x30; /* Prediction.superseded = 6 */
        *p++ = 1;
    }
done:
    if (e != stack) PyMem_Free(e);
    return result;
}

static PyStructSequence_Field append_fields[] = {
    {"request_id", NULL}, {"offset", NULL},     {"text", NULL},      {"top_k", "None when unset"},
    {"want_logprobs", NULL}, {"want_gates", NULL}, {"only_last", NULL}, {"no_memory", NULL},
    {NULL, NULL},
};
static PyStructSequence_Desc append_desc = {
    "cellserve.api._wire.AppendRequest",
    "A SessionRequest holding a plain Append, as append_request read it.",
    append_fields,
    8,
};
static PyTypeObject AppendRequestType;

/* A varint at *p (< end): its value into *v, the position after it; NULL when truncated or
 * longer than 64 bits. */
static const unsigned char *get_varint(const unsigned char *p, const unsigned char *end, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
        unsigned char b = *p++;
        if (shift == 63 && b > 1) return NULL;
        x |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return p;
        }
    }
    return NULL;
}

/* A length-delimited field's body: [*body, *body + *len) within end; NULL when it overruns. */
static const unsigned char *get_len(const unsigned char *p, const unsigned char *end, const unsigned char **body,
                                    Py_ssize_t *len) {
    uint64_t n;
    p = get_varint(p, end, &n);
    if (!p || n > (uint64_t)(end - p)) return NULL;
    *body = p;
    *len = (Py_ssize_t)n;
    return p + n;
}

static PyObject *append_request(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "append_request: bytes");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(arg), *end = p + PyBytes_GET_SIZE(arg);
    uint64_t rid = 0, offset = 0, v;
    const unsigned char *append = NULL, *aend = NULL, *text = NULL;
    Py_ssize_t alen = 0, tlen = 0;
    int seen = 0; /* bits: request_id, append */
    while (p < end) {
        unsigned char tag = *p++;
        if (tag == 0x08 && !(seen & 1)) { /* request_id = 1, varint */
            if (!(p = get_varint(p, end, &rid))) Py_RETURN_NONE;
            seen |= 1;
        } else if (tag == 0x22 && !(seen & 2)) { /* append = 4, length-delimited */
            if (!(p = get_len(p, end, &append, &alen))) Py_RETURN_NONE;
            seen |= 2;
        } else {
            Py_RETURN_NONE;
        }
    }
    if (!append) Py_RETURN_NONE;
    long long top_k = -1;
    int flags[4] = {0, 0, 0, 0}; /* want_logprobs, want_gates, only_last, no_memory */
    int fseen = 0;                /* bits: field number */
    p = append;
    aend = append + alen;
    while (p < aend) {
        unsigned char tag = *p++;
        int field = tag >> 3;
        if (tag & 0x80 || field < 1 || field > 7 || (fseen >> field) & 1) Py_RETURN_NONE;
        fseen |= 1 << field;
        if (field == 2) { /* input = 2: an Input holding only text = 1 */
            const unsigned char *in, *q;
            Py_ssize_t inlen;
            if ((tag & 7) != 2 || !(p = get_len(p, aend, &in, &inlen))) Py_RETURN_NONE;
            if (inlen < 1 || in[0] != 0x0a || !(q = get_len(in + 1, in + inlen, &text, &tlen)) || q != in + inlen)
                Py_RETURN_NONE;
            continue;
        }
        if ((tag & 7) != 0 || !(p = get_varint(p, aend, &v))) Py_RETURN_NONE;
        if (field == 1) {
            offset = v;
        } else if (field == 3) { /* top_k, optional uint32 */
            if (v > 0xFFFFFFFFu) Py_RETURN_NONE;
            top_k = (long long)v;
        } else { /* the flags, bools */
            if (v > 1) Py_RETURN_NONE;
            flags[field - 4] = (int)v;
        }
    }
    if (!text || !tlen) Py_RETURN_NONE; /* no text, or empty: protobuf's path says which */
    PyObject *s = PyUnicode_DecodeUTF8((const char *)text, tlen, NULL);
    if (!s) { /* not UTF-8: protobuf refuses the message */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *r = PyStructSequence_New(&AppendRequestType);
    if (!r) {
        Py_DECREF(s);
        return NULL;
    }
    PyObject *items[8] = {PyLong_FromUnsignedLongLong(rid), PyLong_FromUnsignedLongLong(offset), s,
                          top_k < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(top_k), PyBool_FromLong(flags[0]),
                          PyBool_FromLong(flags[1]), PyBool_FromLong(flags[2]), PyBool_FromLong(flags[3])};
    for (int i = 0; i < 8; i++) {
        if (!items[i]) { /* out of memory: the rest are released with r */
            for (int j = i + 1; j < 8; j++) Py_XDECREF(items[j]);
            Py_DECREF(r);
            return NULL;
        }
        PyStructSequence_SET_ITEM(r, i, items[i]);
    }
    return r;
}

static PyMethodDef methods[] = {
    {"append_request", append_request, METH_O,
     "A serialized SessionRequest holding a plain Append, read; None for any other message."},
    {"prediction_response", prediction_response, METH_VARARGS,
     "A SessionResponse carrying a Prediction (position, top-k, flags), serialized."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__wire(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyStructSequence_InitType2(&AppendRequestType, &append_desc) < 0 ||
        PyModule_AddObjectRef(m, "AppendRequest", (PyObject *)&AppendRequestType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
