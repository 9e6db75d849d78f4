/* Atomic 64-bit operations on a writable buffer (a shared-memory mapping).
 *
 * Why C: the write flags are raised by every process on every write, and the
 * `atomics` package costs about 5 us per operation through cffi on this
 * hardware; these calls cost about 0.05 us.  Offsets must be 8-byte aligned.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "_shmargs.h"

/* The word `(buffer, offset, ...)` names, with `view` held on it (release
 * it after use), and with `value` args[2] as a 64-bit word; NULL with an
 * exception set. */
static uint64_t *
word_of_args(PyObject *const *args, Py_ssize_t nargs, const char *signature, Py_buffer *view,
             uint64_t *value)
{
    if (!nargs_ok(nargs, value == NULL ? 2 : 3, -1, signature))
        return NULL;
    if (value != NULL) {
        unsigned long long given = PyLong_AsUnsignedLongLong(args[2]);
        if (given == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        *value = (uint64_t)given;
    }
    return open_word(args[0], args[1], view);
}

static PyObject *
fetch_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    uint64_t delta;
    uint64_t *p = word_of_args(args, nargs, "fetch_add(buffer, offset, delta)", &view, &delta);
    if (p == NULL)
        return NULL;
    uint64_t old = __atomic_fetch_add(p, delta, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *
load(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    uint64_t *p = word_of_args(args, nargs, "load(buffer, offset)", &view, NULL);
    if (p == NULL)
        return NULL;
    uint64_t value = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *
store(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    uint64_t value;
    uint64_t *p = word_of_args(args, nargs, "store(buffer, offset, value)", &view, &value);
    if (p == NULL)
        return NULL;
    __atomic_store_n(p, value, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* Mapping: a shared mapping that holds no file descriptor.
 *
 * Why: mmap.mmap keeps a duplicate of the descriptor for as long as the
 * mapping lives (Python < 3.13 cannot turn that off), so a process that maps
 * one segment per shared name runs out of descriptors after about a thousand
 * names.  A Mapping is mapped from a descriptor the caller then closes.  It
 * offers the part of mmap's interface accord uses: the buffer protocol, len(),
 * m[i], m[a:b] (a copy, as bytes), m[a:b] = data, close().  The memory is
 * unmapped by close() (refused while buffers are exported) or when the object
 * goes. */
typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t size;
    Py_ssize_t exports;
    int readonly; /* mapped PROT_READ: buffers are read-only, writes refused */
    int private_; /* MAP_PRIVATE: writes stay in this process (copy on write) */
} Mapping;

static int
mapping_open(Mapping *self)
{
    if (self->data == NULL) {
        PyErr_SetString(PyExc_ValueError, "mapping closed");
        return 0;
    }
    return 1;
}

static void
mapping_dealloc(Mapping *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->data != NULL)
        munmap(self->data, (size_t)self->size);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
mapping_getbuffer(Mapping *self, Py_buffer *view, int flags)
{
    if (!mapping_open(self)) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, self->readonly, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void
mapping_releasebuffer(Mapping *self, Py_buffer *view)
{
    self->exports--;
}

static Py_ssize_t
mapping_length(Mapping *self)
{
    return self->data == NULL ? 0 : self->size;
}

static PyObject *
mapping_subscript(Mapping *self, PyObject *item)
{
    if (!mapping_open(self))
        return NULL;
    if (PyIndex_Check(item)) {
        Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return NULL;
        if (i < 0)
            i += self->size;
        if (i < 0 || i >= self->size) {
            PyErr_SetString(PyExc_IndexError, "mapping index out of range");
            return NULL;
        }
        return PyLong_FromLong((unsigned char)self->data[i]);
    }
    if (PySlice_Check(item)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(item, &start, &stop, &step) < 0)
            return NULL;
        Py_ssize_t n = PySlice_AdjustIndices(self->size, &start, &stop, step);
        if (step != 1) {
            PyErr_SetString(PyExc_ValueError, "mapping slices take no step");
            return NULL;
        }
        return PyBytes_FromStringAndSize(self->data + start, n);
    }
    PyErr_SetString(PyExc_TypeError, "mapping indices must be integers or slices");
    return NULL;
}

static int
mapping_ass_subscript(Mapping *self, PyObject *item, PyObject *value)
{
    if (!mapping_open(self))
        return -1;
    if (self->readonly) {
        PyErr_SetString(PyExc_TypeError, "the mapping is read-only");
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "mapping items cannot be deleted");
        return -1;
    }
    if (PyIndex_Check(item)) {
        Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return -1;
        if (i < 0)
            i += self->size;
        long v = PyLong_AsLong(value);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (i < 0 || i >= self->size || v < 0 || v > 255) {
            PyErr_SetString(PyExc_IndexError, "mapping index or byte value out of range");
            return -1;
        }
        self->data[i] = (char)v;
        return 0;
    }
    if (!PySlice_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "mapping indices must be integers or slices");
        return -1;
    }
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(item, &start, &stop, &step) < 0)
        return -1;
    Py_ssize_t n = PySlice_AdjustIndices(self->size, &start, &stop, step);
    Py_buffer src;
    if (PyObject_GetBuffer(value, &src, PyBUF_SIMPLE) < 0)
        return -1;
    if (step != 1 || src.len != n) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_IndexError, "mapping slice assignment is wrong size");
        return -1;
    }
    memmove(self->data + start, src.buf, (size_t)n);
    PyBuffer_Release(&src);
    return 0;
}

static PyObject *
mapping_close(Mapping *self, PyObject *unused)
{
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "cannot close a mapping while buffers are exported");
        return NULL;
    }
    if (self->data != NULL) {
        munmap(self->data, (size_t)self->size);
        self->data = NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
mapping_closed(Mapping *self, void *unused)
{
    return PyBool_FromLong(self->data == NULL);
}

/* Mapping.rebase(fd, offset): the same addresses, now a private (copy-on-write)
 * mapping of fd from offset.  Why: the coordinator's copy of a big buffer
 * lives over the snapshot it last published, so its pages are the readers'
 * pages until it writes one; after each commit it moves onto the new
 * snapshot (which holds exactly its contents) without moving the objects
 * that view it.  MAP_FIXED replaces the old pages in one step. */
static PyObject *
mapping_rebase(Mapping *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rebase(fd, offset)");
        return NULL;
    }
    if (!mapping_open(self))
        return NULL;
    if (!self->private_) {
        PyErr_SetString(PyExc_ValueError, "only a private mapping (map_private) can be rebased");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    long long offset = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    void *data;
    Py_BEGIN_ALLOW_THREADS
    data = mmap(self->data, (size_t)self->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
                (int)fd, (off_t)offset);
    Py_END_ALLOW_THREADS
    if (data == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *
mapping_address(Mapping *self, void *unused)
{
    return PyLong_FromVoidPtr(self->data);
}

static PyMethodDef mapping_methods[] = {
    {"close", (PyCFunction)mapping_close, METH_NOARGS,
     "Unmap (BufferError while buffers are exported)."},
    {"rebase", (PyCFunction)(void (*)(void))mapping_rebase, METH_FASTCALL,
     "rebase(fd, offset): remap a private mapping, in place, over fd from offset."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mapping_getset[] = {
    {"closed", (getter)mapping_closed, NULL, "Whether the mapping was closed.", NULL},
    {"address", (getter)mapping_address, NULL, "Where the mapping starts in memory.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot mapping_slots[] = {
    {Py_tp_dealloc, mapping_dealloc},
    {Py_tp_methods, mapping_methods},
    {Py_tp_getset, mapping_getset},
    {Py_bf_getbuffer, mapping_getbuffer},
    {Py_bf_releasebuffer, mapping_releasebuffer},
    {Py_mp_length, mapping_length},
    {Py_mp_subscript, mapping_subscript},
    {Py_mp_ass_subscript, mapping_ass_subscript},
    {Py_sq_length, mapping_length},
    {Py_tp_doc, "A shared memory mapping that holds no file descriptor (see map())."},
    {0, NULL},
};

static PyType_Spec mapping_spec = {
    "accord._core._atomic.Mapping", sizeof(Mapping), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, mapping_slots,
};

static PyObject *
new_mapping(PyObject *module, void *data, Py_ssize_t size, int readonly, int private_)
{
    PyObject *tp = PyObject_GetAttrString(module, "Mapping");
    if (tp == NULL) {
        munmap(data, (size_t)size);
        return NULL;
    }
    Mapping *self = (Mapping *)((PyTypeObject *)tp)->tp_alloc((PyTypeObject *)tp, 0);
    Py_DECREF(tp);
    if (self == NULL) {
        munmap(data, (size_t)size);
        return NULL;
    }
    self->data = data;
    self->size = size;
    self->exports = 0;
    self->readonly = readonly;
    self->private_ = private_;
    return (PyObject *)self;
}

/* map_private(fd, size, offset): a writable copy-on-write mapping of a
 * segment: reads share the segment's pages, a page written becomes this
 * process's own; the segment never changes. */
static PyObject *
map_private(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "map_private(fd, size, offset)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    long long offset = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "cannot map an empty segment");
        return NULL;
    }
    void *data;
    Py_BEGIN_ALLOW_THREADS
    data = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE, (int)fd, (off_t)offset);
    Py_END_ALLOW_THREADS
    if (data == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError);
    return new_mapping(module, data, size, 0, 1);
}

/* address(buffer): where a buffer's memory starts (to tell whether an
 * object's buffer is a given mapping). */
static PyObject *
buffer_address(PyObject *module, PyObject *buffer)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
map_fd(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "map(fd, size, readonly=False)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    int readonly = nargs == 3 ? PyObject_IsTrue(args[2]) : 0;
    if (readonly < 0)
        return NULL;
    if (PyErr_Occurred())
        return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "cannot map an empty segment");
        return NULL;
    }
    void *data;
    Py_BEGIN_ALLOW_THREADS
    data = mmap(NULL, (size_t)size, readonly ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED,
                (int)fd, 0);
    Py_END_ALLOW_THREADS
    if (data == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError);
    return new_mapping(module, data, size, readonly, 0);
}

static int
exec_module(PyObject *module)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, &mapping_spec, NULL);
    if (tp == NULL)
        return -1;
    if (PyModule_AddObject(module, "Mapping", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}

static PyMethodDef methods[] = {
    {"fetch_add", (PyCFunction)(void (*)(void))fetch_add, METH_FASTCALL,
     "fetch_add(buffer, offset, delta) -> old value: atomic 64-bit add."},
    {"load", (PyCFunction)(void (*)(void))load, METH_FASTCALL,
     "load(buffer, offset) -> value: atomic 64-bit load."},
    {"store", (PyCFunction)(void (*)(void))store, METH_FASTCALL,
     "store(buffer, offset, value): atomic 64-bit store."},
    {"map", (PyCFunction)(void (*)(void))map_fd, METH_FASTCALL,
     "map(fd, size, readonly=False) -> Mapping: map a shared segment (read-write unless "
     "readonly); fd may be closed after."},
    {"map_private", (PyCFunction)(void (*)(void))map_private, METH_FASTCALL,
     "map_private(fd, size, offset) -> Mapping: a writable copy-on-write mapping; fd may "
     "be closed after."},
    {"address", (PyCFunction)buffer_address, METH_O,
     "address(buffer) -> int: where the buffer's memory starts."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    ACCORD_SUBINTERPRETER_SLOT{0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_atomic", "Atomic 64-bit operations on shared memory.", 0, methods,
    slots,
};

PyMODINIT_FUNC
PyInit__atomic(void)
{
    return PyModuleDef_Init(&module);
}
