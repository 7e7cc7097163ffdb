/* bertprep.trainer._loader: the loader's two per-row loops in C with the GIL released, so the
 * reading thread works while the training thread runs: the shuffle's keyed permutation
 * (trainer/stream.py's FeistelPermutation) and `--mask-prob` re-masking (trainer/remask.py).
 *
 * permute(positions, keys, half, mask, n, out): out[i] = the permutation of positions[i]; uint64
 *   in, int64 out, the same rounds and cycle walking as FeistelPermutation (tests/test_stream.py
 *   compares them).
 *
 * Re-masking computes exactly what the numpy definition in trainer/remask.py computes (tests/test_remask.py
 * compares the two on every mode): the same hashes, the same k, the same chosen tokens, the same
 * 80/10/10 draws. Only the algorithms differ, where numpy has no cheaper whole-array form:
 *   - a row's k smallest keys are those up to a cut found by counting keys per bucket of their
 *     top bits (the keys are hashes, uniform there) and sorting only the bucket where the count
 *     reaches k; one ascending scan then reads them back (numpy sorts every row's keys, then the
 *     chosen positions, with SIMD);
 *   - whole words need their full key order (the greedy passes over words that do not fit): a
 *     counting sort on the top bits and an insertion sort, then the greedy straight from it,
 *     stopping when the budget is spent (numpy runs it in vectorized passes).
 *
 * remask(ids, positions, masked, num, length, keys, special, cont, pool,
 *        ids_out, positions_out, masked_out, num_out,
 *        T, P_in, P, id_bytes, below, mask_id, vocab_size, bits, mask_prob, replace, whole_word)
 *   N rows of T tokens; ids/masked/ids_out/masked_out hold uint16 or uint32 ids (id_bytes);
 *   positions/num/length/positions_out/num_out uint16; keys uint64 (one per row, row_keys());
 *   special: uint8 per vocab id (used when below < 0); cont: uint8 per vocab id, `##` pieces
 *   (whole_word only); pool: uint32 ids a random replacement is drawn from (used when below < 0);
 *   bits: the position bits of a sort key, max(1, bit length of T - 1).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN32 0x9E3779B9u
#define ACTION_SALT 0x68E31DA4u
/* np.uint32(0.8 * 2**32) and np.uint32(0.9 * 2**32): numpy truncates the float */
#define U80 3435973836u
#define U90 3865470566u

/* murmur3's 32-bit finaliser of (row key half, position); `high_only` skips the last step, which
 * changes only the low 16 bits (remask.py's _draw) */
static inline uint32_t draw(uint32_t key32, uint32_t pos, int high_only) {
    uint32_t x = key32 + pos * GOLDEN32;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    if (!high_only) x ^= x >> 16;
    return x;
}

/* the sort key of position t (remask.py's _keys): hash high, position low, so keys are unique */
static inline uint64_t sort_key(uint32_t lo, uint32_t t, int bits) {
    if (bits <= 10) return (uint64_t)((draw(lo, t, 1) & ~((1u << bits) - 1)) | t);
    return ((uint64_t)draw(lo, t, 0) << bits) | t;
}

/* Sorts m unique keys whose top bits are uniform (a hash sits above the position): a counting sort
 * on the top `nb` bits into `tmp` (about two keys per bucket), then an insertion sort, which has
 * only the few inversions inside buckets left to fix. O(m) and nearly branch-free, where a
 * quickselect or a heap mispredicts about every other comparison of random keys (3x slower). */
static void sort_keys(uint64_t *key, Py_ssize_t m, uint64_t *tmp, uint32_t *hist, int top) {
    int nb = 4;
    while (nb < 12 && ((Py_ssize_t)1 << (nb + 1)) <= m) nb++;
    const int shift = top - nb;
    const Py_ssize_t buckets = (Py_ssize_t)1 << nb;
    memset(hist, 0, (size_t)(buckets + 1) * sizeof *hist);
    for (Py_ssize_t i = 0; i < m; i++) hist[(key[i] >> shift) + 1]++;
    for (Py_ssize_t b = 1; b <= buckets; b++) hist[b] += hist[b - 1];
    for (Py_ssize_t i = 0; i < m; i++) tmp[hist[key[i] >> shift]++] = key[i];
    for (Py_ssize_t i = 0; i < m; i++) {
        uint64_t x = tmp[i];
        Py_ssize_t j = i;
        while (j > 0 && key[j - 1] > x) {
            key[j] = key[j - 1];
            j--;
        }
        key[j] = x;
    }
}

typedef struct {
    const uint8_t *ids, *masked;
    const uint16_t *positions, *num, *length;
    const uint64_t *keys;
    const uint8_t *special, *cont;
    const uint32_t *pool;
    Py_ssize_t pool_n;
    uint8_t *ids_out, *masked_out;
    uint16_t *positions_out, *num_out;
    Py_ssize_t T, P_in, P;
    int id_bytes, whole_word, replace, bits;
    long below, mask_id, vocab_size;
    double mask_prob;
} Job;

static inline uint32_t get_id(const uint8_t *base, Py_ssize_t i, int wide) {
    return wide ? ((const uint32_t *)base)[i] : ((const uint16_t *)base)[i];
}

static inline void put_id(uint8_t *base, Py_ssize_t i, int wide, uint32_t v) {
    if (wide) ((uint32_t *)base)[i] = v;
    else ((uint16_t *)base)[i] = (uint16_t)v;
}

/* scratch of one call: row ids (T + 1), candidate and start flags (T), keys (T), chosen (T) */
typedef struct {
    uint32_t *row;
    uint8_t *cand, *start, *chosen;
    uint64_t *key, *tmp;
    uint32_t *pos, *unit, *hist;
} Scratch;

static void remask_row(const Job *J, Scratch *S, Py_ssize_t r) {
    const Py_ssize_t T = J->T, P = J->P;
    const int wide = J->id_bytes == 4;
    uint32_t *row = S->row;
    for (Py_ssize_t t = 0; t < T; t++) row[t] = get_id(J->ids, r * T + t, wide);
    Py_ssize_t live = J->num[r] < J->P_in ? J->num[r] : J->P_in;  /* put the originals back */
    for (Py_ssize_t j = 0; j < live; j++) {
        uint16_t p = J->positions[r * J->P_in + j];
        if (p < T) row[p] = get_id(J->masked, r * J->P_in + j, wide);
    }
    row[T] = 0;
    /* only the first L = length positions can be candidates: the loops stop there */
    Py_ssize_t len = J->length[r], L = len < T ? len : T, n = 0;
    /* Branch-free loops below (flags added, not tested): the flags are random, so a branch on them
     * would be mispredicted about as often as taken. Ids at or past the vocab (verified shards hold
     * none) are never candidates. */
    const uint32_t V = (uint32_t)J->vocab_size;
    if (J->below >= 0) {
        const uint32_t below = (uint32_t)J->below;
        for (Py_ssize_t t = 0; t < L; t++) {
            S->cand[t] = (row[t] >= below) & (row[t] < V);
            n += S->cand[t];
        }
    } else {
        for (Py_ssize_t t = 0; t < L; t++) {
            S->cand[t] = row[t] < V && !J->special[row[t]];
            n += S->cand[t];
        }
    }
    Py_ssize_t k = (Py_ssize_t)nearbyint((double)len * J->mask_prob);  /* round half to even, as np.rint */
    if (k < 1) k = 1;
    if (k > P) k = P;
    if (k > n) k = n;
    uint32_t lo = (uint32_t)J->keys[r], hi = (uint32_t)(J->keys[r] >> 32);
    Py_ssize_t got = 0;
    const uint64_t posmask = (1ull << J->bits) - 1;
    const int top = J->bits <= 10 ? 32 : 32 + J->bits;  /* the keys' width */
    if (k > 0 && !J->whole_word) {
        /* The k-th smallest key without sorting: count keys per bucket of their top bits (about one
         * per bucket), find the bucket where the count reaches k, sort only that bucket's few keys;
         * the chosen are the keys up to that cut. Non-candidates get the largest key. */
        int nb = 4;
        while (nb < 12 && ((Py_ssize_t)1 << (nb + 1)) <= n) nb++;
        const int shift = top - nb;
        const uint64_t buckets = (uint64_t)1 << nb;
        memset(S->hist, 0, (size_t)(buckets + 1) * sizeof *S->hist);
        for (Py_ssize_t t = 0; t < L; t++) {
            uint64_t key = S->cand[t] ? sort_key(lo, (uint32_t)t, J->bits) : UINT64_MAX, b = key >> shift;
            S->key[t] = key;
            S->hist[b < buckets ? b : buckets]++;
        }
        Py_ssize_t below = 0, bk = 0;
        while (below + S->hist[bk] < k) below += S->hist[bk++];
        Py_ssize_t c = 0;
        for (Py_ssize_t t = 0; t < L; t++) {
            S->tmp[c] = S->key[t];
            c += (S->key[t] >> shift) == (uint64_t)bk;
        }
        for (Py_ssize_t i = 1; i < c; i++) {  /* a few keys */
            uint64_t x = S->tmp[i];
            Py_ssize_t j = i;
            for (; j > 0 && S->tmp[j - 1] > x; j--) S->tmp[j] = S->tmp[j - 1];
            S->tmp[j] = x;
        }
        const uint64_t cut = S->tmp[k - below - 1];
        for (Py_ssize_t t = 0; t < L; t++) {
            S->pos[got] = S->unit[got] = (uint32_t)t;
            got += S->key[t] <= cut;
        }
    } else if (k > 0) {
        /* a word: a candidate that does not continue the one before it, and the candidates that do */
        Py_ssize_t m = 0;
        for (Py_ssize_t t = 0; t < L; t++) {
            uint8_t cont = J->cont[row[t] < V ? row[t] : 0] & (t > 0 ? S->cand[t - 1] : 0);
            S->start[t] = S->cand[t] & !cont;
            S->chosen[t] = 0;
            S->key[m] = sort_key(lo, (uint32_t)t, J->bits);
            m += S->start[t];
        }
        sort_keys(S->key, m, S->tmp, S->hist, top);
        Py_ssize_t left = k;
        for (Py_ssize_t w = 0; w < m && left > 0; w++) {  /* greedy in key order: a word that does not fit is passed over */
            Py_ssize_t s = (Py_ssize_t)(S->key[w] & posmask), e = s + 1;
            while (e < L && S->cand[e] && !S->start[e]) e++;
            if (e - s <= left) {
                memset(S->chosen + s, 1, (size_t)(e - s));
                left -= e - s;
            }
        }
        uint32_t word = 0;
        for (Py_ssize_t t = 0; t < L; t++) {
            word = S->start[t] ? (uint32_t)t : word;
            S->pos[got] = (uint32_t)t;
            S->unit[got] = word;
            got += S->chosen[t];
        }
    }
    uint8_t *out_row = J->ids_out;
    for (Py_ssize_t t = 0; t < T; t++) put_id(out_row, r * T + t, wide, row[t]);
    for (Py_ssize_t j = 0; j < P; j++) {
        Py_ssize_t at = r * P + j;
        if (j >= got) {
            J->positions_out[at] = 0;
            put_id(J->masked_out, at, wide, 0);
            continue;
        }
        uint32_t p = S->pos[j], orig = row[p], now = (uint32_t)J->mask_id;
        if (J->replace) {
            uint32_t u = draw(hi, S->unit[j], 0);
            if (u >= U80) {
                if (u < U90) {
                    uint64_t pick = draw(hi ^ ACTION_SALT, p, 0);
                    now = J->below >= 0 ? (uint32_t)(((pick * (uint64_t)(J->vocab_size - J->below)) >> 32) + J->below)
                                        : J->pool[(pick * (uint64_t)J->pool_n) >> 32];
                } else {
                    now = orig;
                }
            }
        }
        put_id(J->ids_out, r * T + p, wide, now);
        J->positions_out[at] = (uint16_t)p;
        put_id(J->masked_out, at, wide, orig);
    }
    J->num_out[r] = (uint16_t)got;
}

static int need(Py_buffer *b, Py_ssize_t bytes, const char *name) {
    if (b->len != bytes) {
        PyErr_Format(PyExc_ValueError, "remask: %s holds %zd bytes, expected %zd", name, b->len, bytes);
        return -1;
    }
    return 0;
}

static PyObject *remask_chunk(PyObject *self, PyObject *args) {
    Py_buffer ids, positions, masked, num, length, keys, special, cont, pool, ids_out, positions_out, masked_out,
        num_out;
    Job J;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*w*w*w*w*nnnilllidii", &ids, &positions, &masked, &num, &length,
                          &keys, &special, &cont, &pool, &ids_out, &positions_out, &masked_out, &num_out, &J.T,
                          &J.P_in, &J.P, &J.id_bytes, &J.below, &J.mask_id, &J.vocab_size, &J.bits, &J.mask_prob,
                          &J.replace, &J.whole_word))
        return NULL;
    Py_buffer *all[] = {&ids, &positions, &masked, &num, &length, &keys, &special, &cont, &pool,
                        &ids_out, &positions_out, &masked_out, &num_out};
    PyObject *result = NULL;
    Scratch S = {0};
    Py_ssize_t N = keys.len / 8, T = J.T, w = J.id_bytes;
    if ((w != 2 && w != 4) || T < 1 || J.P < 1 || J.P > T || J.P_in < 0 || J.bits < 1 || J.bits > 16) {
        PyErr_SetString(PyExc_ValueError, "remask: bad shape arguments");
        goto out;
    }
    if (need(&ids, N * T * w, "ids") || need(&positions, N * J.P_in * 2, "positions") ||
        need(&masked, N * J.P_in * w, "masked") || need(&num, N * 2, "num") || need(&length, N * 2, "length") ||
        need(&ids_out, N * T * w, "ids_out") || need(&positions_out, N * J.P * 2, "positions_out") ||
        need(&masked_out, N * J.P * w, "masked_out") || need(&num_out, N * 2, "num_out") ||
        (J.below < 0 && need(&special, J.vocab_size, "special")) ||
        (J.whole_word && need(&cont, J.vocab_size, "cont")) ||
        (J.below < 0 && J.replace && pool.len < 4)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "remask: an empty pool of random ids");
        goto out;
    }
    J.ids = ids.buf; J.positions = positions.buf; J.masked = masked.buf; J.num = num.buf; J.length = length.buf;
    J.keys = keys.buf; J.special = special.buf; J.cont = cont.buf; J.pool = pool.buf; J.pool_n = pool.len / 4;
    J.ids_out = ids_out.buf; J.positions_out = positions_out.buf; J.masked_out = masked_out.buf;
    J.num_out = num_out.buf;
    S.row = malloc((size_t)(T + 1) * 4);
    S.cand = malloc((size_t)T * 3);
    S.key = malloc((size_t)T * 16);
    S.pos = malloc((size_t)T * 8);
    S.hist = malloc(((1 << 12) + 1) * sizeof *S.hist);
    if (!S.row || !S.cand || !S.key || !S.pos || !S.hist) {
        PyErr_NoMemory();
        goto out;
    }
    S.start = S.cand + T;
    S.chosen = S.cand + 2 * T;
    S.unit = S.pos + T;
    S.tmp = S.key + T;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < N; r++) remask_row(&J, &S, r);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
out:
    free(S.row);
    free(S.cand);
    free(S.key);
    free(S.pos);
    free(S.hist);
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) PyBuffer_Release(all[i]);
    return result;
}

/* ---------------------------------------------------------------- the shuffle's permutation */

#define FEISTEL_ROUNDS 4

static inline uint64_t splitmix_final(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint64_t feistel_once(uint64_t x, const uint64_t *keys, int half, uint64_t mask) {
    uint64_t left = x >> half, right = x & mask;
    for (int r = 0; r < FEISTEL_ROUNDS; r++) {
        uint64_t next = left ^ (splitmix_final(right ^ keys[r]) & mask);
        left = right;
        right = next;
    }
    return (left << half) | right;
}

static PyObject *permute(PyObject *self, PyObject *args) {
    Py_buffer pos, keys, out;
    int half;
    unsigned long long mask, n;
    if (!PyArg_ParseTuple(args, "y*y*iKKw*", &pos, &keys, &half, &mask, &n, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t N = pos.len / 8;
    if (keys.len != FEISTEL_ROUNDS * 8 || out.len != pos.len || half < 1 || half > 32 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "permute: bad arguments");
        goto out;
    }
    const uint64_t *x = pos.buf, *k = keys.buf;
    int64_t *y = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < N; i++) {
        uint64_t v = feistel_once(x[i], k, half, mask);
        while (v >= n) v = feistel_once(v, k, half, mask);  /* cycle walking back into range(n) */
        y[i] = (int64_t)v;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&pos);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef loader_functions[] = {
    {"remask", remask_chunk, METH_VARARGS, "remask(...) -> None: re-mask N shard rows into the output buffers"},
    {"permute", permute, METH_VARARGS, "permute(positions, keys, half, mask, n, out) -> None: a Feistel permutation"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef loader_module = {
    PyModuleDef_HEAD_INIT, "_loader", "The loader's per-row loops in C (see trainer/stream.py, trainer/remask.py).",
    -1, loader_functions,
};

PyMODINIT_FUNC PyInit__loader(void) { return PyModule_Create(&loader_module); }
