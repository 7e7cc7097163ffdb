/* bertprep.preprocess._native: BERT WordPiece tokenizing of whole paragraphs, sentence splitting
 * included, in C with the GIL released.
 *
 * Nothing here decides what the ids are: `preprocess/native.py` asks HuggingFace `tokenizers` how
 * its normalizer maps each code point (the BMP and the emoji blocks) and how its pre-tokenizer
 * classes every output character, and hands that table in, together with the WordPiece vocabulary
 * and the sentence splitter's whitespace set and abbreviations. Code points the table marks SLOW
 * (and all at or above CMAP_LIMIT) make their sentence go back to Python, which encodes it with
 * `tokenizers` itself. This file implements only what is the same for every such table:
 *   - the sentence rule of `preprocess/sentences.py` (its regex, reproduced as a scan; windows with
 *     non-ASCII text call back into Python's own `_ends_with_abbreviation`),
 *   - BertPreTokenizer: whitespace ends a word, punctuation is a word of its own,
 *   - WordPiece: greedy longest match first, `##` continuations, a word of more than
 *     max_input_chars_per_word characters or with no match is one [UNK].
 *
 * Encoder(tokens, ids, prefix, unk_id, max_chars, cmap, pool, spaces, abbreviations, abbrev_cb)
 * Encoder.encode(paragraphs: list[str], opens: bytes) -> (ids int32 bytes, lengths int64 bytes,
 *     starts uint8 bytes, slow: list[(sentence index, sentence str)])
 * words(cmap, pool, paragraphs: list[str], line_bytes) -> (text utf-8 bytes, slow: list[paragraph
 *     index], seen: bitmap bytes of the code points read): the words BertNormalizer and
 *     BertPreTokenizer make of the paragraphs, separated by spaces, a newline after the paragraph
 *     that takes a line past line_bytes; what vocab training counts (`preprocess/vocab.py`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CMAP_LIMIT 0x20000
/* A cmap entry: the low two bits are a tag. */
#define TAG_ONE 0  /* one output character: class in bits 2-3, code point in bits 8-31 */
#define TAG_GONE 1 /* the normalizer removes it */
#define TAG_MANY 2 /* several: count in bits 4-7, offset into pool in bits 8-31 */
#define TAG_SLOW 3 /* not handled here: the sentence goes to `tokenizers` */
/* Classes of normalized characters, as BertPreTokenizer sees them (pool items: class << 24 | cp). */
#define CL_SPACE 1
#define CL_PUNCT 2
#define CL_WORD 3

#define FNV_INIT 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* ---------------------------------------------------------------- string -> id hash table */

typedef struct {
    uint64_t hash;
    uint32_t off, len;
    int32_t id; /* -1: empty slot */
} Slot;

typedef struct {
    Slot *slots;
    int bits;
    char *keys;
    size_t keys_len, keys_cap;
    size_t count;
    uint32_t maxlen; /* longest key in bytes */
} Table;

static uint64_t fnv(const unsigned char *s, size_t n) {
    uint64_t h = FNV_INIT;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * FNV_PRIME;
    return h;
}

static inline size_t slot_index(const Table *t, uint64_t h) {
    return (size_t)((h * 0x9E3779B97F4A7C15ULL) >> (64 - t->bits));
}

static int table_init(Table *t, size_t n) {
    t->bits = 4;
    while (((size_t)1 << t->bits) < 2 * n + 2) t->bits++;
    size_t cap = (size_t)1 << t->bits;
    t->slots = malloc(cap * sizeof(Slot));
    if (!t->slots) return -1;
    for (size_t i = 0; i < cap; i++) t->slots[i].id = -1;
    t->keys = NULL;
    t->keys_len = t->keys_cap = 0;
    t->count = 0;
    t->maxlen = 0;
    return 0;
}

static void table_free(Table *t) {
    free(t->slots);
    free(t->keys);
    t->slots = NULL;
    t->keys = NULL;
}

static inline int32_t table_get(const Table *t, const unsigned char *s, size_t n, uint64_t h) {
    size_t mask = ((size_t)1 << t->bits) - 1;
    for (size_t i = slot_index(t, h);; i = (i + 1) & mask) {
        const Slot *sl = &t->slots[i];
        if (sl->id < 0) return -1;
        if (sl->hash == h && sl->len == n && memcmp(t->keys + sl->off, s, n) == 0) return sl->id;
    }
}

/* Insert unless present (the first id of a key wins, as in a dict built in order). */
static int table_put(Table *t, const unsigned char *s, size_t n, int32_t id) {
    uint64_t h = fnv(s, n);
    if (table_get(t, s, n, h) >= 0) return 0;
    if (t->keys_len + n > t->keys_cap) {
        size_t cap = t->keys_cap ? 2 * t->keys_cap : 4096;
        while (cap < t->keys_len + n) cap *= 2;
        char *k = realloc(t->keys, cap);
        if (!k) return -1;
        t->keys = k;
        t->keys_cap = cap;
    }
    memcpy(t->keys + t->keys_len, s, n);
    size_t mask = ((size_t)1 << t->bits) - 1;
    size_t i = slot_index(t, h);
    while (t->slots[i].id >= 0) i = (i + 1) & mask;
    t->slots[i].hash = h;
    t->slots[i].off = (uint32_t)t->keys_len;
    t->slots[i].len = (uint32_t)n;
    t->slots[i].id = id;
    t->keys_len += n;
    t->count++;
    if (n > t->maxlen) t->maxlen = (uint32_t)n;
    return 0;
}

/* ---------------------------------------------------------------- growable buffers */

typedef struct {
    char *p;
    size_t n, cap; /* bytes */
} Buf;

static int buf_grow(Buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? 2 * b->cap : 1 << 16;
    while (cap < b->n + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

#define BUF_PUSH(b, type, value)                                      \
    (buf_grow((b), sizeof(type)) < 0 ? -1                             \
                                     : (*(type *)((b)->p + (b)->n) = (value), (b)->n += sizeof(type), 0))

/* ---------------------------------------------------------------- the encoder object */

typedef struct {
    PyObject_HEAD
    uint32_t *cmap;     /* CMAP_LIMIT entries */
    uint32_t *pool;     /* TAG_MANY items */
    Py_ssize_t npool;
    Table first, cont;  /* word-initial pieces; continuation pieces without their prefix */
    int32_t unk;
    Py_ssize_t max_chars;
    uint8_t *space;     /* bitmap over all code points: Python's str.isspace() */
    Table abbrev;       /* sentences.ABBREVIATIONS */
    PyObject *abbrev_cb;
} Encoder;

/* Per call: output buffers and the word being built. */
typedef struct {
    Buf ids, lens, starts, slow;
    unsigned char *word;
    size_t wlen, wcap;
    Py_ssize_t wchars;
    uint64_t *hashes; /* prefix hashes of the current piece, maxlen + 1 */
    PyThreadState *ts;
    int nomem;
    Py_ssize_t n_sentences;
} Work;

typedef struct {
    PyObject *obj;
    const void *data;
    int kind;
    Py_ssize_t len;
} Para;

/* Fill P[0..n) from the list of str `paras`, each held (Py_INCREF) while the GIL is released; on
   a non-str item a TypeError naming `who` and -1 (the items held so far are in P: callers release
   P[i].obj with Py_XDECREF over a zeroed array). */
static int hold_paras(PyObject *paras, Para *P, Py_ssize_t n, const char *who) {
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyList_GET_ITEM(paras, i);
        if (!PyUnicode_Check(s)) {
            PyErr_Format(PyExc_TypeError, "%s: paragraphs must be str", who);
            return -1;
        }
        Py_INCREF(s);
        P[i].obj = s;
        P[i].data = PyUnicode_DATA(s);
        P[i].kind = PyUnicode_KIND(s);
        P[i].len = PyUnicode_GET_LENGTH(s);
    }
    return 0;
}

#define READ(P, i) PyUnicode_READ((P)->kind, (P)->data, (i))

static inline int is_space(const Encoder *E, Py_UCS4 c) { return (E->space[c >> 3] >> (c & 7)) & 1; }
static inline int is_term(Py_UCS4 c) { return c == '.' || c == '!' || c == '?'; }
static inline int is_closer(Py_UCS4 c) {
    return c == '"' || c == '\'' || c == 0x201D || c == 0x2019 || c == ')' || c == ']';
}
static inline int is_opener(Py_UCS4 c) {
    return c == '"' || c == '\'' || c == 0x201C || c == 0x2018 || c == '(' || c == '[';
}
static inline int is_upper_or_digit(Py_UCS4 c) { return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

/* ---------------------------------------------------------------- WordPiece */

static int push_id(Work *W, int32_t id) {
    if (BUF_PUSH(&W->ids, int32_t, id) < 0) {
        W->nomem = 1;
        return -1;
    }
    return 0;
}

/* Greedy longest-match-first over the word in W->word, as tokenizers' WordPiece::tokenize. */
static int wordpiece(const Encoder *E, Work *W) {
    if (W->wchars > E->max_chars) return push_id(W, E->unk);
    const unsigned char *s = W->word;
    size_t n = W->wlen, start = 0, mark = W->ids.n;
    while (start < n) {
        const Table *T = start ? &E->cont : &E->first;
        size_t lim = n - start;
        if (lim > T->maxlen) lim = T->maxlen;
        uint64_t h = FNV_INIT;
        for (size_t k = 0; k < lim; k++) W->hashes[k + 1] = h = (h ^ s[start + k]) * FNV_PRIME;
        int32_t id = -1;
        size_t len = lim;
        for (; len > 0; len--) {
            size_t end = start + len;
            if (end < n && (s[end] & 0xC0) == 0x80) continue; /* not a character boundary */
            if ((id = table_get(T, s + start, len, W->hashes[len])) >= 0) break;
        }
        if (id < 0) {
            W->ids.n = mark;
            return push_id(W, E->unk);
        }
        if (push_id(W, id) < 0) return -1;
        start += len;
    }
    return 0;
}

static int flush_word(const Encoder *E, Work *W) {
    if (!W->wchars) return 0;
    int rc = wordpiece(E, W);
    W->wlen = 0;
    W->wchars = 0;
    return rc;
}

/* UTF-8 of code point cp at o (room for 4 bytes); returns the bytes written. */
static inline int utf8_encode(unsigned char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = 0xC0 | (cp >> 6);
        o[1] = 0x80 | (cp & 0x3F);
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = 0xE0 | (cp >> 12);
        o[1] = 0x80 | ((cp >> 6) & 0x3F);
        o[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    o[0] = 0xF0 | (cp >> 18);
    o[1] = 0x80 | ((cp >> 12) & 0x3F);
    o[2] = 0x80 | ((cp >> 6) & 0x3F);
    o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

static inline void append_char(const Encoder *E, Work *W, uint32_t cp) {
    if (W->wchars++ >= E->max_chars) return; /* already too long for WordPiece: only the count matters */
    W->wlen += utf8_encode(W->word + W->wlen, cp);
}

static inline int emit_char(const Encoder *E, Work *W, int cls, uint32_t cp) {
    if (cls == CL_WORD) {
        append_char(E, W, cp);
        return 0;
    }
    if (flush_word(E, W) < 0) return -1;
    if (cls == CL_PUNCT) {
        append_char(E, W, cp);
        return flush_word(E, W);
    }
    return 0;
}

/* Ids of P[a:b] appended to W->ids; 1 when a character is not in the table (the caller drops
 * whatever this sentence appended), -1 on memory exhaustion. */
static int encode_sentence(const Encoder *E, Work *W, const Para *P, Py_ssize_t a, Py_ssize_t b) {
    W->wlen = 0;
    W->wchars = 0;
    for (Py_ssize_t i = a; i < b; i++) {
        Py_UCS4 c = READ(P, i);
        uint32_t e = c < CMAP_LIMIT ? E->cmap[c] : TAG_SLOW;
        switch (e & 3) {
        case TAG_ONE:
            if (emit_char(E, W, (e >> 2) & 3, e >> 8) < 0) return -1;
            break;
        case TAG_GONE:
            break;
        case TAG_MANY: {
            const uint32_t *item = E->pool + (e >> 8);
            for (uint32_t k = 0, m = (e >> 4) & 15; k < m; k++)
                if (emit_char(E, W, item[k] >> 24, item[k] & 0xFFFFFF) < 0) return -1;
            break;
        }
        default:
            return 1;
        }
    }
    return flush_word(E, W);
}

/* ---------------------------------------------------------------- sentences */

/* sentences._ends_with_abbreviation(text, end) for an ASCII window; non-ASCII asks Python.
 * Returns 1/0, or -1 with a Python error set. */
static int ends_with_abbreviation(const Encoder *E, Work *W, const Para *P, Py_ssize_t end) {
    Py_ssize_t lo = end > 24 ? end - 24 : 0;
    for (Py_ssize_t q = lo; q < end; q++) {
        if (READ(P, q) >= 0x80) {
            PyEval_RestoreThread(W->ts);
            PyObject *r = PyObject_CallFunction(E->abbrev_cb, "On", P->obj, end);
            int res = r ? PyObject_IsTrue(r) : -1;
            Py_XDECREF(r);
            W->ts = PyEval_SaveThread();
            return res;
        }
    }
    Py_ssize_t e = end; /* head = text[lo:end].rstrip() */
    while (e > lo && is_space(E, READ(P, e - 1))) e--;
    if (e == lo) return 0;
    Py_ssize_t s = e; /* word = head.rsplit(None, 1)[-1].lstrip("(\"'").lower() */
    while (s > lo && !is_space(E, READ(P, s - 1))) s--;
    while (s < e && (READ(P, s) == '(' || READ(P, s) == '"' || READ(P, s) == '\'')) s++;
    unsigned char word[32];
    Py_ssize_t n = e - s;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_UCS4 c = READ(P, s + k);
        word[k] = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    if (n == 1 && word[0] >= 'a' && word[0] <= 'z') return 1; /* len(word) == 1 and word.isalpha() */
    Py_ssize_t t = n; /* word.rstrip(".") in ABBREVIATIONS */
    while (t > 0 && word[t - 1] == '.') t--;
    if (t > 0 && table_get(&E->abbrev, word, (size_t)t, fnv(word, (size_t)t)) >= 0) return 1;
    int dot = 0, run = 0, short_parts = 1; /* "." in word and all(len(p) <= 1 for p in word.split(".")) */
    for (Py_ssize_t k = 0; k < n; k++) {
        if (word[k] == '.') {
            dot = 1;
            run = 0;
        } else if (++run > 1) {
            short_parts = 0;
        }
    }
    return dot && short_parts;
}

static int emit_sentence(const Encoder *E, Work *W, const Para *P, Py_ssize_t p, Py_ssize_t a, Py_ssize_t b,
                         int *pending) {
    while (a < b && is_space(E, READ(P, a))) a++;
    while (b > a && is_space(E, READ(P, b - 1))) b--;
    if (a == b) return 0;
    size_t mark = W->ids.n;
    int rc = encode_sentence(E, W, P, a, b);
    if (rc < 0) return -1;
    if (rc == 1) {
        W->ids.n = mark;
        if (BUF_PUSH(&W->slow, int64_t, W->n_sentences) < 0 || BUF_PUSH(&W->slow, int64_t, p) < 0 ||
            BUF_PUSH(&W->slow, int64_t, a) < 0 || BUF_PUSH(&W->slow, int64_t, b) < 0) {
            W->nomem = 1;
            return -1;
        }
    }
    int64_t count = (int64_t)((W->ids.n - mark) / sizeof(int32_t));
    if (BUF_PUSH(&W->lens, int64_t, count) < 0 || BUF_PUSH(&W->starts, uint8_t, (uint8_t)*pending) < 0) {
        W->nomem = 1;
        return -1;
    }
    *pending = 0;
    W->n_sentences++;
    return 0;
}

/* sentences.split_sentences: the regex
 *   ([.!?]+["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]?[A-Z0-9])
 * as a scan. A match can only start at the first of a run of [.!?] and, since none of its parts
 * can give characters back to the next, it matches exactly when the greedy reading does. */
static int process_paragraph(const Encoder *E, Work *W, const Para *P, Py_ssize_t p, int *pending) {
    Py_ssize_t n = P->len, start = 0, i = 0;
    while (i < n) {
        Py_UCS4 c = READ(P, i);
        if (!is_term(c)) {
            i++;
            continue;
        }
        Py_ssize_t j = i, k, w;
        while (j < n && is_term(READ(P, j))) j++;
        for (k = j; k < n && is_closer(READ(P, k)); k++) {}
        for (w = k; w < n && is_space(E, READ(P, w)); w++) {}
        if (w > k && w < n) {
            Py_UCS4 c2 = READ(P, w);
            if (is_upper_or_digit(c2) || (is_opener(c2) && w + 1 < n && is_upper_or_digit(READ(P, w + 1)))) {
                int skip = 0;
                if (k - i == 1 && c == '.' && (skip = ends_with_abbreviation(E, W, P, i)) < 0) return -1;
                if (!skip) {
                    if (emit_sentence(E, W, P, p, start, k, pending) < 0) return -1;
                    start = w;
                }
                i = w;
                continue;
            }
        }
        i = j;
    }
    return emit_sentence(E, W, P, p, start, n, pending);
}

/* ---------------------------------------------------------------- Python glue */

static void Encoder_dealloc(Encoder *self) {
    free(self->cmap);
    free(self->pool);
    free(self->space);
    table_free(&self->first);
    table_free(&self->cont);
    table_free(&self->abbrev);
    Py_XDECREF(self->abbrev_cb);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    PyObject *tokens, *ids, *spaces, *abbrevs, *cb;
    const char *prefix;
    Py_ssize_t prefix_len, max_chars;
    int unk;
    Py_buffer cmap, pool;
    if (!PyArg_ParseTuple(args, "O!O!s#iny*y*O!O!O", &PyList_Type, &tokens, &PyList_Type, &ids, &prefix, &prefix_len,
                          &unk, &max_chars, &cmap, &pool, &PyList_Type, &spaces, &PyList_Type, &abbrevs, &cb))
        return -1;
    int rc = -1;
    if (self->cmap) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is already initialised");
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(tokens);
    if (PyList_GET_SIZE(ids) != n || cmap.len != CMAP_LIMIT * 4 || pool.len % 4 || max_chars < 0) {
        PyErr_SetString(PyExc_ValueError, "Encoder: inconsistent tables");
        goto done;
    }
    self->cmap = malloc(cmap.len);
    self->pool = malloc(pool.len ? pool.len : 4);
    self->space = calloc(0x110000 / 8, 1);
    if (!self->cmap || !self->pool || !self->space || table_init(&self->first, n) < 0 ||
        table_init(&self->cont, n) < 0 || table_init(&self->abbrev, PyList_GET_SIZE(abbrevs)) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(self->cmap, cmap.buf, cmap.len);
    memcpy(self->pool, pool.buf, pool.len);
    self->npool = pool.len / 4;
    for (Py_ssize_t i = 0; i < CMAP_LIMIT; i++) {
        uint32_t e = self->cmap[i];
        if ((e & 3) == TAG_MANY && (e >> 8) + ((e >> 4) & 15) > (uint32_t)self->npool) {
            PyErr_SetString(PyExc_ValueError, "Encoder: cmap points outside the pool");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(tokens, i), &len);
        long id = PyLong_AsLong(PyList_GET_ITEM(ids, i));
        if (!s || (id == -1 && PyErr_Occurred())) goto done;
        if (id < 0 || id > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "Encoder: token id out of range");
            goto done;
        }
        if (table_put(&self->first, (const unsigned char *)s, len, (int32_t)id) < 0) goto nomem;
        if (len >= prefix_len && memcmp(s, prefix, prefix_len) == 0 &&
            table_put(&self->cont, (const unsigned char *)s + prefix_len, len - prefix_len, (int32_t)id) < 0)
            goto nomem;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spaces); i++) {
        long c = PyLong_AsLong(PyList_GET_ITEM(spaces, i));
        if (c < 0 || c >= 0x110000) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "Encoder: bad whitespace code point");
            goto done;
        }
        self->space[c >> 3] |= (uint8_t)(1 << (c & 7));
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(abbrevs); i++) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(abbrevs, i), &len);
        if (!s) goto done;
        if (table_put(&self->abbrev, (const unsigned char *)s, len, 1) < 0) goto nomem;
    }
    self->unk = unk;
    self->max_chars = max_chars;
    Py_INCREF(cb);
    self->abbrev_cb = cb;
    rc = 0;
    goto done;
nomem:
    PyErr_NoMemory();
done:
    PyBuffer_Release(&cmap);
    PyBuffer_Release(&pool);
    return rc;
}

static PyObject *bytes_of(Buf *b) { return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->n); }

static PyObject *Encoder_encode(Encoder *self, PyObject *args) {
    PyObject *paras;
    Py_buffer opens;
    if (!self->cmap) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder is not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!y*", &PyList_Type, &paras, &opens)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paras);
    PyObject *result = NULL;
    Para *P = NULL;
    Work W;
    memset(&W, 0, sizeof W);
    if (opens.len != n) {
        PyErr_SetString(PyExc_ValueError, "encode: one document flag per paragraph");
        goto out;
    }
    size_t maxlen = self->first.maxlen > self->cont.maxlen ? self->first.maxlen : self->cont.maxlen;
    W.wcap = 4 * (size_t)(self->max_chars + 1);
    P = calloc(n ? n : 1, sizeof(Para));
    W.word = malloc(W.wcap);
    W.hashes = malloc((maxlen + 1) * sizeof(uint64_t));
    if (!P || !W.word || !W.hashes) {
        PyErr_NoMemory();
        goto out;
    }
    if (hold_paras(paras, P, n, "encode") < 0) goto out;
    const uint8_t *flags = opens.buf;
    int pending = 0, rc = 0;
    W.ts = PyEval_SaveThread();
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        pending |= flags[i] != 0;
        rc = process_paragraph(self, &W, &P[i], i, &pending);
    }
    PyEval_RestoreThread(W.ts);
    if (rc < 0) {
        if (W.nomem) PyErr_NoMemory();
        goto out;
    }
    Py_ssize_t nslow = (Py_ssize_t)(W.slow.n / (4 * sizeof(int64_t)));
    PyObject *slow = PyList_New(nslow);
    if (!slow) goto out;
    const int64_t *q = (const int64_t *)W.slow.p;
    for (Py_ssize_t k = 0; k < nslow; k++, q += 4) {
        PyObject *item = Py_BuildValue("(LN)", (long long)q[0], PyUnicode_Substring(P[q[1]].obj, q[2], q[3]));
        if (!item) {
            Py_DECREF(slow);
            goto out;
        }
        PyList_SET_ITEM(slow, k, item);
    }
    result = Py_BuildValue("(NNNN)", bytes_of(&W.ids), bytes_of(&W.lens), bytes_of(&W.starts), slow);
out:
    if (P)
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(P[i].obj);
    free(P);
    free(W.word);
    free(W.hashes);
    free(W.ids.p);
    free(W.lens.p);
    free(W.starts.p);
    free(W.slow.p);
    PyBuffer_Release(&opens);
    return result;
}

/* ---------------------------------------------------------------- words, for vocab training */

static inline int put_utf8(Buf *b, uint32_t cp) {
    if (buf_grow(b, 4) < 0) return -1;
    b->n += utf8_encode((unsigned char *)b->p + b->n, cp);
    return 0;
}

/* A space between words: never two, never at a line start. */
static inline int put_gap(Buf *b, size_t line_start) {
    if (b->n == line_start || b->p[b->n - 1] == ' ') return 0;
    return BUF_PUSH(b, char, ' ');
}

static inline int put_item(Buf *b, size_t line_start, int cls, uint32_t cp) {
    if (cls == CL_WORD) return put_utf8(b, cp);
    if (put_gap(b, line_start) < 0) return -1;
    if (cls == CL_SPACE) return 0;
    if (put_utf8(b, cp) < 0) return -1; /* punctuation: a word of its own */
    return BUF_PUSH(b, char, ' ');
}

/* One paragraph's words appended to `out`: 0, 1 when a character is SLOW (the caller drops what
 * was appended), -1 on memory exhaustion. */
static int paragraph_words(const uint32_t *cmap, const uint32_t *pool, const Para *P, Buf *out, size_t line_start,
                           uint8_t *seen) {
    for (Py_ssize_t i = 0; i < P->len; i++) {
        Py_UCS4 c = READ(P, i);
        seen[c >> 3] |= (uint8_t)(1u << (c & 7));
        uint32_t e = c < CMAP_LIMIT ? cmap[c] : TAG_SLOW;
        switch (e & 3) {
        case TAG_ONE:
            if (put_item(out, line_start, (e >> 2) & 3, e >> 8) < 0) return -1;
            break;
        case TAG_GONE:
            break;
        case TAG_MANY: {
            const uint32_t *item = pool + (e >> 8);
            for (uint32_t k = 0, m = (e >> 4) & 15; k < m; k++)
                if (put_item(out, line_start, item[k] >> 24, item[k] & 0xFFFFFF) < 0) return -1;
            break;
        }
        default:
            for (i++; i < P->len; i++) { /* the rest is read too: its code points count as seen */
                c = READ(P, i);
                seen[c >> 3] |= (uint8_t)(1u << (c & 7));
            }
            return 1;
        }
    }
    return 0;
}

static PyObject *native_words(PyObject *self, PyObject *args) {
    Py_buffer cmap, pool;
    PyObject *paras, *result = NULL;
    Py_ssize_t line_bytes;
    if (!PyArg_ParseTuple(args, "y*y*O!n", &cmap, &pool, &PyList_Type, &paras, &line_bytes)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paras);
    Para *P = calloc(n ? n : 1, sizeof(Para));
    uint8_t *seen = calloc(0x110000 / 8, 1);
    Buf out = {0}, slow = {0};
    int rc = 0;
    if (cmap.len != CMAP_LIMIT * 4) {
        PyErr_SetString(PyExc_ValueError, "words: cmap must hold CMAP_LIMIT uint32 entries");
        goto out;
    }
    if (!P || !seen) {
        PyErr_NoMemory();
        goto out;
    }
    if (hold_paras(paras, P, n, "words") < 0) goto out;
    Py_BEGIN_ALLOW_THREADS
    size_t line_start = 0;
    for (Py_ssize_t i = 0; i < n && rc >= 0; i++) {
        size_t mark = out.n;
        rc = paragraph_words(cmap.buf, pool.buf, &P[i], &out, line_start, seen);
        if (rc == 1) {
            out.n = mark;
            rc = BUF_PUSH(&slow, int64_t, (int64_t)i);
        } else if (rc == 0 && out.n - line_start >= (size_t)line_bytes) {
            if (out.n > line_start && out.p[out.n - 1] == ' ') out.n--;
            rc = BUF_PUSH(&out, char, '\n');
            line_start = out.n;
        } else if (rc == 0) {
            rc = put_gap(&out, line_start);
        }
    }
    if (rc >= 0 && out.n > line_start) { /* the text ends with a line end */
        if (out.p[out.n - 1] == ' ') out.n--;
        if (out.n > line_start) rc = BUF_PUSH(&out, char, '\n');
    }
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto out;
    }
    Py_ssize_t nslow = (Py_ssize_t)(slow.n / sizeof(int64_t));
    PyObject *slow_list = PyList_New(nslow);
    if (!slow_list) goto out;
    for (Py_ssize_t k = 0; k < nslow; k++)
        PyList_SET_ITEM(slow_list, k, PyLong_FromLongLong(((const int64_t *)slow.p)[k]));
    result = Py_BuildValue("(NNN)", bytes_of(&out), slow_list,
                           PyBytes_FromStringAndSize((const char *)seen, 0x110000 / 8));
out:
    if (P)
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(P[i].obj);
    free(P);
    free(seen);
    free(out.p);
    free(slow.p);
    PyBuffer_Release(&cmap);
    PyBuffer_Release(&pool);
    return result;
}

static PyMethodDef native_functions[] = {
    {"words", native_words, METH_VARARGS,
     "words(cmap, pool, paragraphs, line_bytes) -> (text utf-8 bytes, slow paragraph indices, seen bitmap)"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_VARARGS,
     "encode(paragraphs, opens) -> (ids int32 bytes, lengths int64 bytes, starts uint8 bytes, slow list)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bertprep.preprocess._native.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BERT WordPiece over paragraphs, driven by tables built from a tokenizers Tokenizer.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "C WordPiece for bertprep tokenize (see preprocess/native.py).", -1,
    native_functions,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddIntConstant(m, "CMAP_LIMIT", CMAP_LIMIT) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
