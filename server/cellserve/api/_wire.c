/* The Session stream's most frequent response, serialized in C (api/stream.py holds the
 * protobuf path it short-cuts, which stays the reference and the fallback):
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

static PyMethodDef methods[] = {
    {"prediction_response", prediction_response, METH_VARARGS,
     "A SessionResponse carrying a Prediction (position, top-k, flags), serialized."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
