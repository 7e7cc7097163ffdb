/* bertprep.shards._gather: rows of many memory-mapped column buffers into one array, in C with
 * the GIL released (see shards/gather.py, which owns the bookkeeping and the numpy fallback).
 *
 * gather(dst, sources, which, row, row_bytes) -> None
 *   dst: a writable C-contiguous buffer of N * row_bytes bytes; sources: a sequence of
 *   C-contiguous buffers (a column's record batches, of every file); which: int64 (N,), the source
 *   of each output row; row: int64 (N,), its row in that source. Row i of dst becomes row row[i]
 *   of sources[which[i]]; an index outside a source raises IndexError and leaves dst partly written.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *gather(PyObject *self, PyObject *args) {
    Py_buffer dst, which, row;
    PyObject *sources;
    Py_ssize_t row_bytes;
    if (!PyArg_ParseTuple(args, "w*Oy*y*n", &dst, &sources, &which, &row, &row_bytes)) return NULL;
    PyObject *seq = PySequence_Fast(sources, "gather: sources must be a sequence of buffers");
    Py_ssize_t n_src = seq ? PySequence_Fast_GET_SIZE(seq) : 0, got = 0, bad = -1;
    Py_buffer *src = seq ? PyMem_Calloc(n_src ? n_src : 1, sizeof(Py_buffer)) : NULL;
    PyObject *result = NULL;
    Py_ssize_t N = which.len / 8;
    if (!seq) goto out;
    if (!src) {
        PyErr_NoMemory();
        goto out;
    }
    if (row_bytes < 1 || row.len != which.len || dst.len != N * row_bytes) {
        PyErr_SetString(PyExc_ValueError, "gather: dst, which and row disagree on the number of rows");
        goto out;
    }
    for (; got < n_src; got++)
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &src[got], PyBUF_C_CONTIGUOUS) < 0) goto out;
    const int64_t *w = which.buf, *r = row.buf;
    char *out = dst.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < N; i++) {
        int64_t s = w[i], k = r[i];
        if (s < 0 || s >= n_src || k < 0 || (k + 1) * row_bytes > src[s].len) {
            bad = i;
            break;
        }
        memcpy(out + i * row_bytes, (const char *)src[s].buf + k * row_bytes, (size_t)row_bytes);
    }
    Py_END_ALLOW_THREADS
    if (bad >= 0) {
        PyErr_Format(PyExc_IndexError, "gather: row %zd asks for row %lld of source %lld, outside it", bad,
                     (long long)r[bad], (long long)w[bad]);
        goto out;
    }
    result = Py_NewRef(Py_None);
out:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&src[i]);
    PyMem_Free(src);
    Py_XDECREF(seq);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&which);
    PyBuffer_Release(&row);
    return result;
}

static PyMethodDef gather_functions[] = {
    {"gather", gather, METH_VARARGS, "gather(dst, sources, which, row, row_bytes) -> None (see shards/gather.py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef gather_module = {
    PyModuleDef_HEAD_INIT, "_gather", "Rows of memory-mapped shard columns in C (see shards/gather.py).", -1,
    gather_functions,
};

PyMODINIT_FUNC PyInit__gather(void) { return PyModule_Create(&gather_module); }
