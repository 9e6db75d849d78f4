/* Argument helpers shared by the shm backend's C extensions (_atomic, _ring).
 *
 * Every function there takes a writable buffer (a shared-memory mapping) and
 * offsets into it; these check the argument count, take the view and check
 * an 8-byte aligned word once, in one place.  On failure each sets an
 * exception and leaves no view held.
 */
#ifndef ACCORD_SHMARGS_H
#define ACCORD_SHMARGS_H

#include <Python.h>
#include <stdint.h>

/* 1 if `nargs` is `want` (or `alt`, when alt >= 0); else 0 with a TypeError
 * that shows the call's signature. */
static inline int
nargs_ok(Py_ssize_t nargs, Py_ssize_t want, Py_ssize_t alt, const char *signature)
{
    if (nargs == want || (alt >= 0 && nargs == alt))
        return 1;
    PyErr_SetString(PyExc_TypeError, signature);
    return 0;
}

static inline int
writable_view(PyObject *buffer, Py_buffer *view)
{
    return PyObject_GetBuffer(buffer, view, PyBUF_WRITABLE);
}

/* The 8-byte aligned word at `offset` of a held view, or NULL with an
 * IndexError (the view stays held). */
static inline uint64_t *
word_in(Py_buffer *view, Py_ssize_t offset)
{
    if (offset < 0 || offset % 8 != 0 || offset + 8 > view->len) {
        PyErr_Format(PyExc_IndexError, "offset %zd is not an aligned 8-byte slot", offset);
        return NULL;
    }
    return (uint64_t *)((char *)view->buf + offset);
}

/* Take a writable view of `buffer` and return its word at `offset` (an int);
 * NULL with an exception, and no view held, when either is wrong. */
static inline uint64_t *
open_word(PyObject *buffer, PyObject *offset, Py_buffer *view)
{
    Py_ssize_t at = PyLong_AsSsize_t(offset);
    if (at == -1 && PyErr_Occurred())
        return NULL;
    if (writable_view(buffer, view) < 0)
        return NULL;
    uint64_t *word = word_in(view, at);
    if (word == NULL)
        PyBuffer_Release(view);
    return word;
}

/* Both modules use multi-phase initialisation (PEP 489) with no module
 * state: importable in sub-interpreters, including those with their own GIL.
 * Put this before the {0, NULL} that ends the slots. */
#ifdef Py_mod_multiple_interpreters
#define ACCORD_SUBINTERPRETER_SLOT                                                            \
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#else
#define ACCORD_SUBINTERPRETER_SLOT
#endif

#endif
