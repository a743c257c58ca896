/* The session memory's two per-keystroke loops in C (memory/window.py holds the reference
 * Python of both and the semantics; this file changes nothing they compute):
 *
 *   events(buf, i0, pos0, orders, cap, mask)
 *       hash-chain the characters buf[i0:] as text positions pos0.. (SessionMemory._push_events
 *       after its bytes are appended and the chains' ring slots exist);
 *   predict(buf, off, base_len, extra, orders, cap, mask, window, occ, max_links)
 *       -> (nexts: tuple of bytes, match_char, match_len)   (SessionMemory._predict)
 *   fill(preds, dists, host, vocab, log_occ, log_match)
 *       the predictions' expert distributions and host features written into zeroed float32
 *       arrays (features.memory_arrays_many, whose Python is the reference)
 *   mix(lp, preds, w1, b1, w2, b2, vocab, eps, log_occ, log_match)
 *       the predictions mixed with lp's rows, written over them (mixer.mix_log_probs of fill's
 *       arrays is the reference: the same formulas on sparse experts, summed in double)
 *
 * ``orders`` is SessionMemory._orders: per context order (length k, crc seed, head array,
 * chain array), the arrays array('i'). The hash is zlib's crc32 (same table, same seeds), so
 * both implementations fill the same buckets and walk the same links. Every array index is
 * checked: a state the Python would fail on with IndexError fails here the same way. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_ORDERS 32

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* zlib.crc32(data, seed) */
static inline uint32_t crc32_seeded(const unsigned char *p, Py_ssize_t n, uint32_t seed) {
    uint32_t c = ~seed;
    for (Py_ssize_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return ~c;
}

typedef struct {
    Py_ssize_t k;
    uint32_t seed;
    Py_buffer head, prev;
    Py_ssize_t nhead, nprev; /* elements */
} Order;

static void release_orders(Order *o, int n) {
    for (int j = 0; j < n; j++) {
        if (o[j].head.obj) PyBuffer_Release(&o[j].head);
        if (o[j].prev.obj) PyBuffer_Release(&o[j].prev);
    }
}

/* Reads ``orders`` (a tuple of (k, seed, head, prev)); on failure releases what it took. */
static int take_orders(PyObject *orders, Order *o, int *n_out, int writable) {
    if (!PyTuple_Check(orders) || PyTuple_GET_SIZE(orders) > MAX_ORDERS) {
        PyErr_SetString(PyExc_TypeError, "orders: a tuple of (k, seed, head, prev)");
        return -1;
    }
    int n = (int)PyTuple_GET_SIZE(orders);
    memset(o, 0, sizeof(Order) * (size_t)n);
    int flags = PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    for (int j = 0; j < n; j++) {
        PyObject *t = PyTuple_GET_ITEM(orders, j);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 4) {
            PyErr_SetString(PyExc_TypeError, "orders: a tuple of (k, seed, head, prev)");
            goto fail;
        }
        o[j].k = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 0));
        unsigned long seed = PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(t, 1));
        if (PyErr_Occurred()) goto fail;
        o[j].seed = (uint32_t)seed;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(t, 2), &o[j].head, flags) < 0) goto fail;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(t, 3), &o[j].prev, flags) < 0) goto fail;
        if (o[j].head.itemsize != 4 || o[j].prev.itemsize != 4 || o[j].k < 0) {
            PyErr_SetString(PyExc_TypeError, "orders: head and prev must be array('i')");
            goto fail;
        }
        o[j].nhead = o[j].head.len / 4;
        o[j].nprev = o[j].prev.len / 4;
    }
    *n_out = n;
    return 0;
fail:
    release_orders(o, n);
    return -1;
}

static int index_error(void) {
    PyErr_SetString(PyExc_IndexError, "array index out of range");
    return -1;
}

/* p % cap for 0 <= p < 2**31 (positions stay int32): a 32-bit division, about half a 64-bit one */
static inline Py_ssize_t ring(Py_ssize_t p, Py_ssize_t cap) { return (Py_ssize_t)((uint32_t)p % (uint32_t)cap); }

static PyObject *events(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t i0, pos0, cap, mask;
    PyObject *orders;
    if (!PyArg_ParseTuple(args, "y*nnOnn", &buf, &i0, &pos0, &orders, &cap, &mask)) return NULL;
    Order o[MAX_ORDERS];
    int n = 0;
    if (cap <= 0 || i0 < 0 || take_orders(orders, o, &n, 1) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "events: bad arguments");
        PyBuffer_Release(&buf);
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)buf.buf;
    int rc = 0;
    Py_ssize_t hs[MAX_ORDERS];
    for (Py_ssize_t i = i0; i < buf.len && rc == 0; i++) {
        Py_ssize_t pos = pos0 + (i - i0);
        Py_ssize_t slot = ring(pos, cap);
        /* every order's bucket first, its head fetched ahead: a long text's tables do not fit
           in cache, and the orders' misses then overlap instead of following one another */
        for (int j = 0; j < n; j++) {
            Py_ssize_t k = o[j].k;
            hs[j] = -1;
            if (i < k) continue; /* no context before the text's start: no event */
            hs[j] = (Py_ssize_t)(crc32_seeded(b + i - k, k, o[j].seed) & (uint32_t)mask);
            if (hs[j] < o[j].nhead) __builtin_prefetch((int32_t *)o[j].head.buf + hs[j], 1);
        }
        for (int j = 0; j < n; j++) {
            Py_ssize_t h = hs[j];
            if (h < 0) continue;
            int32_t *head = (int32_t *)o[j].head.buf, *prev = (int32_t *)o[j].prev.buf;
            if (h >= o[j].nhead || slot >= o[j].nprev) {
                rc = index_error();
                break;
            }
            prev[slot] = head[h];
            head[h] = (int32_t)pos;
        }
    }
    release_orders(o, n);
    PyBuffer_Release(&buf);
    if (rc) return NULL;
    Py_RETURN_NONE;
}

/* The text at position p, for p < end: the parent's buffer below base_len, then extra. */
typedef struct {
    const unsigned char *buf, *extra;
    Py_ssize_t off, base_len, nbuf;
} Text;

static inline int at(const Text *t, Py_ssize_t p) {
    return p < t->base_len ? t->buf[p - t->off] : t->extra[p - t->base_len];
}

/* text[p-k:p] == text[q-k:q] for positions anywhere in [off, end) */
static inline int same_context(const Text *t, Py_ssize_t p, Py_ssize_t q, Py_ssize_t k) {
    for (Py_ssize_t d = 1; d <= k; d++)
        if (at(t, p - d) != at(t, q - d)) return 0;
    return 1;
}

static PyObject *predict(PyObject *self, PyObject *args) {
    Py_buffer bufv, extrav;
    Py_ssize_t off, base_len, cap, mask, window, occ, max_links;
    PyObject *orders;
    if (!PyArg_ParseTuple(args, "y*ny*Onnnnnn", &bufv, &off, &extrav, &orders, &cap, &mask, &window, &occ,
                          &max_links, &base_len))
        return NULL;
    Order o[MAX_ORDERS];
    int n = 0;
    PyObject *result = NULL, *nexts = NULL;
    unsigned char *found = NULL;
    if (take_orders(orders, o, &n, 0) < 0) goto done_buffers;
    Text t = {(const unsigned char *)bufv.buf, (const unsigned char *)extrav.buf, off, base_len, bufv.len};
    Py_ssize_t end = base_len + extrav.len;
    Py_ssize_t start = end - window > 0 ? end - window : 0;
    /* start >= off: every position read lies in the kept text */
    if (cap <= 0 || occ < 1 || start < off || base_len - off > bufv.len) {
        PyErr_SetString(PyExc_ValueError, "predict: bad arguments");
        goto done;
    }
    found = (unsigned char *)PyMem_Malloc((size_t)occ);
    nexts = PyTuple_New(n);
    if (!found || !nexts) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t best_pos = -1, best_k = 0;
    /* the text's last characters (every order's context is a suffix of them), and each order's
       bucket with its head fetched ahead (see events) */
    unsigned char tail[256];
    Py_ssize_t longest = 0, hs[MAX_ORDERS];
    for (int i = 0; i < n; i++) {
        if (o[i].k > (Py_ssize_t)sizeof tail) {
            PyErr_SetString(PyExc_ValueError, "predict: context too long");
            goto done;
        }
        if (end - o[i].k >= start && o[i].k > longest) longest = o[i].k;
    }
    for (Py_ssize_t d = 0; d < longest; d++) tail[d] = (unsigned char)at(&t, end - longest + d);
    for (int i = 0; i < n; i++) {
        hs[i] = -1;
        if (end - o[i].k < start || !o[i].nhead) continue;
        hs[i] = (Py_ssize_t)(crc32_seeded(tail + longest - o[i].k, o[i].k, o[i].seed) & (uint32_t)mask);
        if (hs[i] < o[i].nhead) __builtin_prefetch((const int32_t *)o[i].head.buf + hs[i]);
    }
    int j = 0;
    for (; j < n; j++) {
        Py_ssize_t k = o[j].k, lo = start + k, nfound = 0, newest = -1;
        if (end - k < start) break; /* the context (and every longer one) reaches before the window */
        const int32_t *head = (const int32_t *)o[j].head.buf, *prev = (const int32_t *)o[j].prev.buf;
        if (extrav.len) { /* the fork's own characters first (newest) */
            for (Py_ssize_t p = end - 1; p >= base_len && p >= lo && nfound < occ; p--) {
                if (same_context(&t, p, end, k)) {
                    found[nfound++] = (unsigned char)at(&t, p);
                    if (newest < 0) newest = p;
                }
            }
        }
        int complete = 1;
        if (nfound < occ) {
            const unsigned char *ctx = tail + longest - k; /* contiguous, wherever it lies */
            Py_ssize_t p = -1;
            if (o[j].nhead) {
                Py_ssize_t h = hs[j];
                if (h >= o[j].nhead) {
                    index_error();
                    goto done;
                }
                p = head[h];
            }
            while (p >= base_len) { /* events at or after base_len: not in this text */
                if (ring(p, cap) >= o[j].nprev) {
                    index_error();
                    goto done;
                }
                p = prev[ring(p, cap)];
            }
            Py_ssize_t want = occ - nfound, links = 0;
            for (; links < max_links; links++) { /* each link: an event of the window before base_len */
                if (p < lo) break;
                Py_ssize_t i = p - k - off;
                if (i < 0 || p - off >= bufv.len) {
                    index_error();
                    goto done;
                }
                if (memcmp(t.buf + i, ctx, (size_t)k) == 0) {
                    if (newest < 0) newest = p;
                    found[nfound++] = t.buf[p - off];
                    if (--want == 0) break;
                }
                if (ring(p, cap) >= o[j].nprev) {
                    index_error();
                    goto done;
                }
                p = prev[ring(p, cap)];
            }
            if (links == max_links) complete = p < lo; /* the cap cut the walk (Python's for-else) */
        }
        PyObject *nx = PyBytes_FromStringAndSize((const char *)found, nfound);
        if (!nx) goto done;
        PyTuple_SET_ITEM(nexts, j, nx);
        if (newest >= 0) {
            best_pos = newest;
            best_k = k;
        } else if (complete) {
            j++;
            break; /* this context never occurs in the window: no longer one can */
        }
    }
    for (; j < n; j++) { /* the orders not reached: no occurrences */
        PyObject *nx = PyBytes_FromStringAndSize(NULL, 0);
        if (!nx) goto done;
        PyTuple_SET_ITEM(nexts, j, nx);
    }
    Py_ssize_t match_char = -1, match_len = 0;
    if (best_pos >= 0) { /* how far back from best_pos the text agrees with its end */
        Py_ssize_t top = best_pos - start < 64 ? best_pos - start : 64, m = best_k;
        while (m < top && at(&t, best_pos - m - 1) == at(&t, end - m - 1)) m++;
        match_char = at(&t, best_pos);
        match_len = m;
    }
    result = Py_BuildValue("(Onn)", nexts, match_char, match_len);
done:
    Py_XDECREF(nexts);
    PyMem_Free(found);
    release_orders(o, n);
done_buffers:
    PyBuffer_Release(&bufv);
    PyBuffer_Release(&extrav);
    return result;
}


/* One prediction's experts, sparse: for order j < orders, its distinct characters
 * chars[j * v + i] (i < n[j], in order of first occurrence) with weights w[j * v + i] (the sum of
 * 1/count over the character's occurrences, in double in their order, rounded once to float32:
 * what numpy's bincount then astype give); the match model (j = orders): its character at
 * weight 1; and the host features hp[3 * (orders + 1)], written whole. ``acc``: v doubles,
 * zero, left zero. -1 with an exception set: a malformed prediction. */
static int pred_experts(PyObject *pred, Py_ssize_t orders, Py_ssize_t v, const double *log_occ, Py_ssize_t nlo,
                        const double *log_match, Py_ssize_t nlm, double *acc, unsigned char *chars, float *w,
                        Py_ssize_t *n, float *hp) {
    if (!PyTuple_Check(pred) || PyTuple_GET_SIZE(pred) != 3) {
        PyErr_SetString(PyExc_TypeError, "preds: (nexts, match_char, match_len) tuples");
        return -1;
    }
    PyObject *nexts = PyTuple_GET_ITEM(pred, 0);
    Py_ssize_t mc = PyLong_AsSsize_t(PyTuple_GET_ITEM(pred, 1));
    Py_ssize_t ml = PyLong_AsSsize_t(PyTuple_GET_ITEM(pred, 2));
    if (PyErr_Occurred()) return -1;
    if (!PyTuple_Check(nexts) || PyTuple_GET_SIZE(nexts) != orders) {
        PyErr_SetString(PyExc_TypeError, "preds: every prediction has one bytes per order");
        return -1;
    }
    memset(hp, 0, sizeof(float) * (size_t)(3 * orders + 3));
    for (Py_ssize_t j = 0; j < orders; j++) {
        PyObject *b = PyTuple_GET_ITEM(nexts, j);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "preds: nexts are bytes");
            return -1;
        }
        const unsigned char *c = (const unsigned char *)PyBytes_AS_STRING(b);
        Py_ssize_t k = PyBytes_GET_SIZE(b), m = 0;
        n[j] = 0;
        if (k >= nlo) {
            PyErr_SetString(PyExc_ValueError, "a count beyond the log_occ table");
            return -1;
        }
        if (k == 0) continue; /* absent: no character, host features 0 (log_occ[0] is 0) */
        double inv = 1.0 / (double)k, top = 0.0;
        for (Py_ssize_t i = 0; i < k; i++) {
            if (c[i] >= v) {
                PyErr_SetString(PyExc_ValueError, "a character id beyond the vocabulary");
                for (Py_ssize_t t = 0; t < i; t++) acc[c[t]] = 0.0;
                return -1;
            }
            acc[c[i]] += inv;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            double a = acc[c[i]];
            if (a == 0.0) continue; /* taken already */
            if (a > top) top = a;
            chars[j * v + m] = c[i];
            w[j * v + m] = (float)a;
            m++;
            acc[c[i]] = 0.0;
        }
        n[j] = m;
        hp[3 * j] = 1.0f;
        hp[3 * j + 1] = (float)log_occ[k];
        hp[3 * j + 2] = (float)top;
    }
    n[orders] = 0;
    if (mc >= 0) {
        if (mc >= v || ml < 0 || ml >= nlm) {
            PyErr_SetString(PyExc_ValueError, "a match beyond the vocabulary or the log_match table");
            return -1;
        }
        chars[orders * v] = (unsigned char)mc;
        w[orders * v] = 1.0f;
        n[orders] = 1;
        hp[3 * orders] = 1.0f;
        hp[3 * orders + 1] = (float)log_match[ml];
        hp[3 * orders + 2] = (float)((double)(ml < 16 ? ml : 16) / 16.0);
    }
    return 0;
}

/* The scratch of a call over predictions: the sequence, and per expert v characters and
 * weights, counts, an accumulator. */
typedef struct {
    PyObject *seq;
    Py_ssize_t count, orders;
    double *acc;
    unsigned char *chars;
    float *w;
    Py_ssize_t *n;
} Preds;

static void preds_free(Preds *p) {
    Py_XDECREF(p->seq);
    PyMem_Free(p->acc);
    PyMem_Free(p->chars);
    PyMem_Free(p->w);
    PyMem_Free(p->n);
}

static int preds_take(PyObject *preds, Py_ssize_t v, Preds *p) {
    memset(p, 0, sizeof *p);
    p->seq = PySequence_Fast(preds, "preds: a sequence of predictions");
    if (!p->seq) return -1;
    p->count = PySequence_Fast_GET_SIZE(p->seq);
    p->orders = -1;
    if (p->count) {
        PyObject *first = PySequence_Fast_ITEMS(p->seq)[0];
        if (!PyTuple_Check(first) || PyTuple_GET_SIZE(first) != 3 || !PyTuple_Check(PyTuple_GET_ITEM(first, 0))) {
            PyErr_SetString(PyExc_TypeError, "preds: (nexts, match_char, match_len) tuples");
            return -1;
        }
        p->orders = PyTuple_GET_SIZE(PyTuple_GET_ITEM(first, 0));
    }
    if (v < 1) {
        PyErr_SetString(PyExc_ValueError, "the vocabulary has at least one character");
        return -1;
    }
    size_t experts = (size_t)(p->orders + 1);
    p->acc = (double *)PyMem_Calloc((size_t)v, sizeof(double));
    p->chars = (unsigned char *)PyMem_Malloc(experts * (size_t)v + 1);
    p->w = (float *)PyMem_Malloc(sizeof(float) * (experts * (size_t)v + 1));
    p->n = (Py_ssize_t *)PyMem_Malloc(sizeof(Py_ssize_t) * (experts + 1));
    if (!p->acc || !p->chars || !p->w || !p->n) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* features.memory_arrays_many: preds (MemoryPrediction tuples: nexts, match_char, match_len) ->
 * dists [P, orders + 1, vocab] and host [P, 3 * orders + 3], float32, zeroed by the caller
 * (``pred_experts`` per prediction, written dense); log_occ[count] and log_match[length] are
 * the Python's own tables (so no libm call can differ). */
static PyObject *fill(PyObject *self, PyObject *args) {
    PyObject *preds;
    Py_buffer d, h, lo, lm;
    Py_ssize_t v;
    if (!PyArg_ParseTuple(args, "Ow*w*ny*y*", &preds, &d, &h, &v, &lo, &lm)) return NULL;
    PyObject *result = NULL;
    Preds ps;
    if (preds_take(preds, v, &ps) < 0) goto done;
    Py_ssize_t np_ = ps.count, orders = ps.orders, experts = orders + 1, nhost = 3 * orders + 3;
    Py_ssize_t nlo = lo.len / (Py_ssize_t)sizeof(double), nlm = lm.len / (Py_ssize_t)sizeof(double);
    if (np_ && (d.len != np_ * experts * v * 4 || h.len != np_ * nhost * 4)) {
        PyErr_SetString(PyExc_ValueError, "fill: dists [P, experts, V] and host [P, features] float32");
        goto done;
    }
    for (Py_ssize_t p = 0; p < np_; p++) {
        float *dp = (float *)d.buf + p * experts * v, *hp = (float *)h.buf + p * nhost;
        if (pred_experts(PySequence_Fast_ITEMS(ps.seq)[p], orders, v, (const double *)lo.buf, nlo,
                         (const double *)lm.buf, nlm, ps.acc, ps.chars, ps.w, ps.n, hp) < 0)
            goto done;
        for (Py_ssize_t j = 0; j < experts; j++)
            for (Py_ssize_t i = 0; i < ps.n[j]; i++) dp[j * v + ps.chars[j * v + i]] = ps.w[j * v + i];
    }
    result = Py_None;
    Py_INCREF(result);
done:
    preds_free(&ps);
    PyBuffer_Release(&d);
    PyBuffer_Release(&h);
    PyBuffer_Release(&lo);
    PyBuffer_Release(&lm);
    return result;
}

/* sum_i w[i] * x[i] in double, in four interleaved partial sums (a fixed order: the same inputs
 * give the same bits; four chains instead of one dependent add per term) */
static inline double dot(const float *w, const double *x, Py_ssize_t n) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += (double)w[i] * x[i];
        a1 += (double)w[i + 1] * x[i + 1];
        a2 += (double)w[i + 2] * x[i + 2];
        a3 += (double)w[i + 3] * x[i + 3];
    }
    for (; i < n; i++) a0 += (double)w[i] * x[i];
    return (a0 + a1) + (a2 + a3);
}

/* mixer.mix_log_probs on the host, from the predictions themselves: lp [P, V] float32 (the
 * model's log-probs, overwritten row p with the mix of prediction p), preds (as ``fill``),
 * the gate w1 [H, 2 + E + 3E], b1 [H], w2 [1 + E, H], b2 [1 + E] float32 (E = orders + 1
 * experts), the floor eps, fill's tables. The experts stay sparse (a few characters each, as
 * ``pred_experts`` gives them): the dense [E, V] arrays the torch path multiplies are never
 * made. Each row depends on nothing but itself (the same bits whatever rows share the call).
 * Sums run in double, each feature and output rounded once to float32; the torch reference
 * sums in float32, so the two agree to float32 rounding, not bit for bit. */
static PyObject *mix(PyObject *self, PyObject *args) {
    PyObject *preds;
    Py_buffer lp, w1, b1, w2, b2, lo, lm;
    Py_ssize_t v;
    double eps;
    if (!PyArg_ParseTuple(args, "w*Oy*y*y*y*ndy*y*", &lp, &preds, &w1, &b1, &w2, &b2, &v, &eps, &lo, &lm))
        return NULL;
    PyObject *result = NULL;
    double *scratch = NULL;
    float *hp = NULL;
    Preds ps;
    if (preds_take(preds, v, &ps) < 0) goto done;
    Py_ssize_t rows = ps.count, orders = ps.orders, experts = orders + 1, nhost = 3 * experts;
    Py_ssize_t outs = b2.len / 4, hidden = b1.len / 4, nf = 2 + experts + nhost;
    if (rows && (outs != experts + 1 || hidden < 1 || lp.len != rows * v * 4 || w1.len != hidden * nf * 4 ||
                 w2.len != outs * hidden * 4)) {
        PyErr_SetString(PyExc_ValueError,
                        "mix: lp [P, V] for P predictions; w1 [H, 2 + 4E], b1 [H], w2 [1 + E, H], b2 [1 + E] "
                        "for E experts; all float32");
        goto done;
    }
    scratch = (double *)PyMem_Malloc(sizeof(double) * (size_t)(v + nf + hidden + 2 * outs));
    hp = (float *)PyMem_Malloc(sizeof(float) * (size_t)nhost);
    if (!scratch || !hp) {
        PyErr_NoMemory();
        goto done;
    }
    double *p = scratch, *f = p + v, *hid = f + nf, *z = hid + hidden, *g = z + outs;
    const float *W1 = (const float *)w1.buf, *B1 = (const float *)b1.buf;
    const float *W2 = (const float *)w2.buf, *B2 = (const float *)b2.buf;
    const double keep = 1.0 - eps, floor_ = eps / (double)v;
    Py_ssize_t nlo = lo.len / (Py_ssize_t)sizeof(double), nlm = lm.len / (Py_ssize_t)sizeof(double);
    for (Py_ssize_t r = 0; r < rows; r++) {
        if (pred_experts(PySequence_Fast_ITEMS(ps.seq)[r], orders, v, (const double *)lo.buf, nlo,
                         (const double *)lm.buf, nlm, ps.acc, ps.chars, ps.w, ps.n, hp) < 0)
            goto done;
        float *l = (float *)lp.buf + r * v;
        double ent = 0.0, top = -INFINITY;
        for (Py_ssize_t i = 0; i < v; i++) {
            double pi = (double)expf(l[i]);
            p[i] = pi;
            ent += pi * (double)l[i];
            if (l[i] > top) top = l[i];
        }
        f[0] = (float)(-ent / 4.0);
        f[1] = (float)(top / 4.0);
        for (Py_ssize_t e = 0; e < experts; e++) { /* agreement: log(sum_v q_e(v) p(v) + 1e-6) / 8 */
            if (hp[3 * e] == 0.0f) {
                f[2 + e] = 0.0;
                continue;
            }
            const unsigned char *c = ps.chars + e * v;
            const float *we = ps.w + e * v;
            double s = 0.0;
            for (Py_ssize_t i = 0; i < ps.n[e]; i++) s += (double)we[i] * p[c[i]];
            f[2 + e] = (float)(log((double)(float)s + 1e-6) / 8.0);
        }
        for (Py_ssize_t k = 0; k < nhost; k++) f[2 + experts + k] = hp[k];
        for (Py_ssize_t j = 0; j < hidden; j++) {
            double a = (double)B1[j] + dot(W1 + j * nf, f, nf);
            hid[j] = a > 0.0 ? (double)(float)a : 0.0;
        }
        double zmax = -INFINITY, total = 0.0;
        for (Py_ssize_t o = 0; o < outs; o++) { /* the gate: a softmax over the model and the present experts */
            int on = o == 0 || hp[3 * (o - 1)] != 0.0f;
            z[o] = on ? (double)(float)((double)B2[o] + dot(W2 + o * hidden, hid, hidden)) : -INFINITY;
            if (z[o] > zmax) zmax = z[o];
        }
        for (Py_ssize_t o = 0; o < outs; o++) total += g[o] = z[o] == -INFINITY ? 0.0 : exp(z[o] - zmax);
        double g0 = (double)(float)(g[0] / total);
        for (Py_ssize_t i = 0; i < v; i++) p[i] *= g0;
        for (Py_ssize_t e = 0; e < experts; e++) {
            if (g[1 + e] == 0.0) continue;
            double ge = (double)(float)(g[1 + e] / total);
            const unsigned char *c = ps.chars + e * v;
            const float *we = ps.w + e * v;
            for (Py_ssize_t i = 0; i < ps.n[e]; i++) p[c[i]] += ge * (double)we[i];
        }
        for (Py_ssize_t i = 0; i < v; i++) l[i] = logf((float)(p[i] * keep + floor_));
    }
    result = Py_None;
    Py_INCREF(result);
done:
    preds_free(&ps);
    PyMem_Free(scratch);
    PyMem_Free(hp);
    PyBuffer_Release(&lp), PyBuffer_Release(&w1), PyBuffer_Release(&b1), PyBuffer_Release(&w2);
    PyBuffer_Release(&b2), PyBuffer_Release(&lo), PyBuffer_Release(&lm);
    return result;
}

/* topk(lsm, v, rows, k): the CPU pick's top-k (engine/runner.py: ModelRunner._pick). lsm holds
 * float32 log-prob rows of v entries; for each index in rows (in order), the k largest entries,
 * largest first (NaN counts as the largest, as torch.topk has it; equal values: the lower index
 * first). Returns ONE flat list: every row's k probabilities (expf of the log-probs), then every
 * row's k indices (as floats): the layout of the pick's host numbers. */
static PyObject *topk(PyObject *self, PyObject *args) {
    Py_buffer lsm;
    Py_ssize_t v, k;
    PyObject *rows;
    if (!PyArg_ParseTuple(args, "y*nOn", &lsm, &v, &rows, &k)) return NULL;
    PyObject *result = NULL, *seq = NULL;
    float *best = NULL;
    Py_ssize_t *at = NULL;
    seq = PySequence_Fast(rows, "topk: rows must be a sequence of row indices");
    if (!seq) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), nrows = v > 0 ? lsm.len / (v * 4) : 0;
    if (v < 1 || k < 1 || k > v || lsm.len != nrows * v * 4) {
        PyErr_SetString(PyExc_ValueError, "topk: lsm float32 [N, v], 1 <= k <= v");
        goto done;
    }
    best = (float *)PyMem_Malloc(sizeof(float) * (size_t)k);
    at = (Py_ssize_t *)PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)k);
    result = PyList_New(2 * n * k);
    if (!best || !at || !result) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        Py_CLEAR(result);
        goto done;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t row = PyLong_AsSsize_t(PySequence_Fast_ITEMS(seq)[r]);
        if (row == -1 && PyErr_Occurred()) goto fail;
        if (row < 0 || row >= nrows) {
            PyErr_SetString(PyExc_IndexError, "topk: a row index is out of range");
            goto fail;
        }
        const float *l = (const float *)lsm.buf + row * v;
        Py_ssize_t have = 0;
        for (Py_ssize_t i = 0; i < v; i++) {
            float x = l[i];
            /* x goes before the entries it is greater than (ties stay behind: lower index first) */
            Py_ssize_t j = have < k ? have : k;
            while (j > 0 && ((isnan(x) && !isnan(best[j - 1])) || x > best[j - 1])) j--;
            if (j >= k) continue;
            Py_ssize_t last = have < k ? have : k - 1;
            for (Py_ssize_t m = last; m > j; m--) best[m] = best[m - 1], at[m] = at[m - 1];
            best[j] = x, at[j] = i;
            if (have < k) have++;
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *pv = PyFloat_FromDouble((double)expf(best[j]));
            PyObject *iv = PyFloat_FromDouble((double)at[j]);
            if (!pv || !iv) {
                Py_XDECREF(pv), Py_XDECREF(iv);
                goto fail;
            }
            PyList_SET_ITEM(result, r * k + j, pv);
            PyList_SET_ITEM(result, n * k + r * k + j, iv);
        }
    }
    goto done;
fail:
    Py_CLEAR(result);
done:
    Py_XDECREF(seq);
    PyMem_Free(best);
    PyMem_Free(at);
    PyBuffer_Release(&lsm);
    return result;
}

static PyMethodDef methods[] = {
    {"events", events, METH_VARARGS, "Hash-chains buf[i0:] as positions pos0.. (SessionMemory._push_events)."},
    {"predict", predict, METH_VARARGS, "(nexts, match_char, match_len) (SessionMemory._predict)."},
    {"fill", fill, METH_VARARGS, "Expert distributions and host features (features.memory_arrays_many)."},
    {"mix", mix, METH_VARARGS, "Mixed log-probs over lp's rows (mixer.mix_log_probs)."},
    {"topk", topk, METH_VARARGS, "The top-k of log-prob rows as probabilities and indices (the CPU pick)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_window", "The session memory's hot loops, and the CPU pick's top-k.", -1, methods};

PyMODINIT_FUNC PyInit__window(void) {
    crc_init();
    return PyModule_Create(&module);
}
