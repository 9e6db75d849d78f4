/* The unchanged-read fast path of `share.name`, in C.
 *
 * Why C: a read of an unchanged value is the most frequent operation on a
 * share.  In Python it costs several function calls (the attribute hook, the
 * link, the client, the snapshot cache, the augmented-assignment check):
 * about 2 us on this hardware, 4-10x a `multiprocessing.Value` read.  Here
 * it costs the attribute lookup, a dictionary lookup and four atomic loads.
 *
 * What is checked before a cached object is handed out (all of it, or the
 * slow path in Python runs, and decides as before):
 *
 *   - the share handle is bound to a live client (`Reader.arm`), whose
 *     `Control` is open (closed when the client is lost or closed);
 *   - the coordinator's heartbeat is fresh (else the slow path checks that
 *     it still lives, and raises if not);
 *   - applied >= pending on the name's WHOLE flag: every write to it queued
 *     before now, by any process (this one included), is applied;
 *   - the global commit counter is the one the cached object was read at:
 *     nothing was committed since, so the cached object is the latest commit
 *     (commits raise the counter before the flags they satisfy);
 *   - the caller's instruction is a LOAD_ATTR not preceded by COPY or
 *     EXTENDED_ARG: it cannot be the read that starts `share.name += x`
 *     (see share/_augmented.py; anything else goes to the Python detector).
 *
 * Only immutable values are remembered (`Control.remember`, by the slow path
 * after a read), so handing the cached object out is as safe as before.
 *
 * Multi-phase initialisation with per-module state and heap types only:
 * importable in sub-interpreters, including those with their own GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

typedef struct {
    PyTypeObject *control_type;
    PyTypeObject *entry_type;
    PyTypeObject *reader_type;
    PyTypeObject *share_type;
    PyObject *slow_name; /* "_accord_slow": the Python slow path */
    int configured;      /* opcodes known (the running Python's bytecode is recognised) */
    int load_attr, copy, extended_arg;
} State;

static struct PyModuleDef module_def;

static inline uint64_t
load64(const char *base, Py_ssize_t offset)
{
    return __atomic_load_n((const uint64_t *)(base + offset), __ATOMIC_SEQ_CST);
}

/* -- Entry: one remembered value ------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *obj;
    uint64_t commits;   /* the commit counter the object was read at */
    Py_ssize_t pending; /* offsets of the name's WHOLE flag counters */
    Py_ssize_t applied;
} Entry;

static int
entry_traverse(Entry *self, visitproc visit, void *arg)
{
    Py_VISIT(self->obj);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
entry_clear(Entry *self)
{
    Py_CLEAR(self->obj);
    return 0;
}

static void
entry_dealloc(Entry *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    entry_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot entry_slots[] = {
    {Py_tp_dealloc, entry_dealloc},
    {Py_tp_traverse, entry_traverse},
    {Py_tp_clear, entry_clear},
    {0, NULL},
};

static PyType_Spec entry_spec = {
    "accord._core._fastread.Entry",
    sizeof(Entry),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    entry_slots,
};

/* -- Control: a client's view of its control segment ---------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* view.obj NULL once closed */
    PyObject *entries; /* name -> Entry */
    Py_ssize_t heartbeat, commits, pending, applied, nslots;
    Py_ssize_t limit; /* entries kept before starting afresh */
    int64_t stale_ns;
} Control;

static int
control_is_open(Control *self)
{
    return self->view.obj != NULL;
}

static int
control_traverse(Control *self, visitproc visit, void *arg)
{
    Py_VISIT(self->entries);
    Py_VISIT(self->view.obj);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void
control_release(Control *self)
{
    if (self->view.obj != NULL)
        PyBuffer_Release(&self->view); /* sets view.obj to NULL */
}

static int
control_clear(Control *self)
{
    control_release(self);
    Py_CLEAR(self->entries);
    return 0;
}

static void
control_dealloc(Control *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    control_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
control_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"buffer", "heartbeat", "commits", "pending", "applied", "slots",
                            "stale_ns", "limit", NULL};
    PyObject *buffer;
    Py_ssize_t heartbeat, commits, pending, applied, nslots, limit = 10000;
    long long stale_ns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnnnnnL|n:Control", names, &buffer,
                                     &heartbeat, &commits, &pending, &applied, &nslots, &stale_ns,
                                     &limit))
        return NULL;
    Control *self = (Control *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->entries = PyDict_New();
    if (self->entries == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_SIMPLE) < 0) {
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    Py_ssize_t len = self->view.len;
    Py_ssize_t offsets[] = {heartbeat, commits, pending, applied};
    for (int i = 0; i < 4; i++) {
        if (offsets[i] < 0 || offsets[i] % 8 != 0 || offsets[i] + 8 > len) {
            PyErr_Format(PyExc_ValueError, "offset %zd is not an aligned 8-byte slot", offsets[i]);
            Py_DECREF(self);
            return NULL;
        }
    }
    if (nslots < 0 || pending + 8 * nslots > len || applied + 8 * nslots > len) {
        PyErr_SetString(PyExc_ValueError, "the flag arrays do not fit in the buffer");
        Py_DECREF(self);
        return NULL;
    }
    self->heartbeat = heartbeat;
    self->commits = commits;
    self->pending = pending;
    self->applied = applied;
    self->nslots = nslots;
    self->limit = limit < 1 ? 1 : limit;
    self->stale_ns = stale_ns;
    return (PyObject *)self;
}

static PyObject *
control_remember(Control *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "remember(name, obj, commits, slot)");
        return NULL;
    }
    if (!control_is_open(self))
        Py_RETURN_NONE;
    PyObject *name = args[0];
    if (!PyUnicode_CheckExact(name)) {
        PyErr_SetString(PyExc_TypeError, "names are str");
        return NULL;
    }
    unsigned long long commits = PyLong_AsUnsignedLongLong(args[2]);
    Py_ssize_t slot = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (slot < 0 || slot >= self->nslots) {
        PyErr_Format(PyExc_IndexError, "slot %zd out of range", slot);
        return NULL;
    }
    State *state = PyType_GetModuleState(Py_TYPE(self));
    if (state == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(self->entries, name);
    if (found != NULL && Py_IS_TYPE(found, state->entry_type)) {
        /* Updated in place (the slow path remembers after every commit),
         * all fields before the old object goes: its finalizer, if any,
         * may read the share and must see an object and count that agree. */
        Entry *entry = (Entry *)found;
        PyObject *old = entry->obj;
        entry->obj = Py_NewRef(args[1]);
        entry->commits = (uint64_t)commits;
        entry->pending = self->pending + 8 * slot;
        entry->applied = self->applied + 8 * slot;
        Py_XDECREF(old);
        Py_RETURN_NONE;
    }
    if (found == NULL && PyErr_Occurred())
        return NULL;
    if (PyDict_GET_SIZE(self->entries) >= self->limit)
        PyDict_Clear(self->entries); /* names read once each, without end */
    Entry *entry = PyObject_GC_New(Entry, state->entry_type);
    if (entry == NULL)
        return NULL;
    entry->obj = Py_NewRef(args[1]);
    entry->commits = (uint64_t)commits;
    entry->pending = self->pending + 8 * slot;
    entry->applied = self->applied + 8 * slot;
    PyObject_GC_Track(entry);
    int failed = PyDict_SetItem(self->entries, name, (PyObject *)entry);
    Py_DECREF(entry);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
control_forget(Control *self, PyObject *unused)
{
    PyDict_Clear(self->entries);
    Py_RETURN_NONE;
}

static PyObject *
control_close(Control *self, PyObject *unused)
{
    control_release(self);
    PyDict_Clear(self->entries);
    Py_RETURN_NONE;
}

static PyObject *
control_get_open(Control *self, void *unused)
{
    return PyBool_FromLong(control_is_open(self));
}

static Py_ssize_t
control_len(Control *self)
{
    return PyDict_GET_SIZE(self->entries);
}

static PyMethodDef control_methods[] = {
    {"remember", (PyCFunction)(void (*)(void))control_remember, METH_FASTCALL,
     "remember(name, obj, commits, slot): obj (immutable) is `name` as committed at commit "
     "count `commits`; `slot` is its WHOLE flag."},
    {"forget", (PyCFunction)control_forget, METH_NOARGS, "Forget every remembered value."},
    {"close", (PyCFunction)control_close, METH_NOARGS,
     "Stop serving reads and release the buffer (before it is unmapped)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef control_getset[] = {
    {"open", (getter)control_get_open, NULL, "Whether reads may be served.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot control_slots[] = {
    {Py_tp_new, control_new},
    {Py_tp_dealloc, control_dealloc},
    {Py_tp_traverse, control_traverse},
    {Py_tp_clear, control_clear},
    {Py_tp_methods, control_methods},
    {Py_tp_getset, control_getset},
    {Py_mp_length, control_len},
    {Py_tp_doc,
     "Control(buffer, heartbeat, commits, pending, applied, slots, stale_ns, limit=10000): the "
     "flags, heartbeat and commit counter of a client's control segment (u64 offsets into "
     "buffer), and up to `limit` values remembered for the fast read path."},
    {0, NULL},
};

static PyType_Spec control_spec = {
    "accord._core._fastread.Control", sizeof(Control), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, control_slots,
};

/* -- Reader: what a share handle reads through ---------------------------- */

typedef struct {
    PyObject_HEAD
    Control *control; /* NULL while disarmed */
} Reader;

static int
reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->control);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
reader_clear(Reader *self)
{
    Py_CLEAR(self->control);
    return 0;
}

static void
reader_dealloc(Reader *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    reader_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
reader_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || (kwargs && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "Reader() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static PyObject *
reader_arm(Reader *self, PyObject *control)
{
    if (control == Py_None) {
        Py_CLEAR(self->control);
        Py_RETURN_NONE;
    }
    State *state = PyType_GetModuleState(Py_TYPE(self));
    if (state == NULL)
        return NULL;
    if (!PyObject_TypeCheck(control, state->control_type)) {
        PyErr_SetString(PyExc_TypeError, "arm(control): a Control or None");
        return NULL;
    }
    Py_XSETREF(self->control, (Control *)Py_NewRef(control));
    Py_RETURN_NONE;
}

static PyObject *
reader_get_armed(Reader *self, void *unused)
{
    return PyBool_FromLong(self->control != NULL && control_is_open(self->control));
}

static PyMethodDef reader_methods[] = {
    {"arm", (PyCFunction)reader_arm, METH_O,
     "arm(control): serve reads from this Control (None: serve none)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef reader_getset[] = {
    {"armed", (getter)reader_get_armed, NULL, "Whether reads may be served.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot reader_slots[] = {
    {Py_tp_new, reader_new},
    {Py_tp_dealloc, reader_dealloc},
    {Py_tp_traverse, reader_traverse},
    {Py_tp_clear, reader_clear},
    {Py_tp_methods, reader_methods},
    {Py_tp_getset, reader_getset},
    {Py_tp_doc, "Reader(): a share handle's way to its client's Control (see arm)."},
    {0, NULL},
};

static PyType_Spec reader_spec = {
    "accord._core._fastread.Reader", sizeof(Reader), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, reader_slots,
};

/* -- ShareBase: the attribute hook of Share ------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *link;
    Reader *reader;
} ShareBase;

static int
share_traverse(ShareBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->link);
    Py_VISIT(self->reader);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
share_clear(ShareBase *self)
{
    Py_CLEAR(self->link);
    Py_CLEAR(self->reader);
    return 0;
}

static void
share_dealloc(ShareBase *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    share_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Could the running instruction be the read that starts `share.x += y`?
 * 0 only for a LOAD_ATTR whose previous code unit is neither COPY nor
 * EXTENDED_ARG: the Python detector says "no" to every such read. */
static int
maybe_augmented(State *state)
{
    if (!state->configured)
        return 1;
    PyFrameObject *frame = PyEval_GetFrame(); /* borrowed */
    if (frame == NULL)
        return 1;
    int lasti = PyFrame_GetLasti(frame);
    if (lasti < 2)
        return 1;
    PyCodeObject *code = PyFrame_GetCode(frame);
    PyObject *bytes = PyCode_GetCode(code); /* de-specialised; cached by CPython */
    Py_DECREF(code);
    if (bytes == NULL) {
        PyErr_Clear();
        return 1;
    }
    int maybe = 1;
    if (PyBytes_Check(bytes) && lasti + 1 < PyBytes_GET_SIZE(bytes)) {
        const unsigned char *ops = (const unsigned char *)PyBytes_AS_STRING(bytes);
        int before = ops[lasti - 2];
        maybe = ops[lasti] != state->load_attr || before == state->copy ||
                before == state->extended_arg;
    }
    Py_DECREF(bytes);
    return maybe;
}

static PyObject *
share_getattro(ShareBase *self, PyObject *name)
{
    if (!PyUnicode_Check(name) || PyUnicode_GET_LENGTH(name) == 0 ||
        PyUnicode_READ_CHAR(name, 0) == '_')
        return PyObject_GenericGetAttr((PyObject *)self, name);
    State *state = NULL;
    Reader *reader = self->reader;
    if (reader != NULL && reader->control != NULL && control_is_open(reader->control)) {
        Control *control = reader->control;
        /* Only names the slow path read are remembered: never the Share's
         * own API names (it answers those before reading). */
        PyObject *found = PyDict_GetItemWithError(control->entries, name);
        if (found != NULL) {
            /* Held: the frame lookup below may allocate, run the GC, and a
             * finalizer replace the entry. */
            Entry *entry = (Entry *)Py_NewRef(found);
            PyObject *result = NULL;
            const char *base = control->view.buf;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of time.monotonic_ns */
            uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
            /* The order matters: the flags, then the commit counter. */
            if ((int64_t)(now - load64(base, control->heartbeat)) < control->stale_ns &&
                load64(base, entry->applied) >= load64(base, entry->pending) &&
                load64(base, control->commits) == entry->commits) {
                state = PyType_GetModuleState(Py_TYPE(reader));
                if (state != NULL && !maybe_augmented(state))
                    result = Py_NewRef(entry->obj);
            }
            Py_DECREF(entry);
            if (result != NULL)
                return result;
        }
        else if (PyErr_Occurred())
            return NULL;
    }
    if (state == NULL) {
        PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &module_def);
        if (module == NULL)
            return NULL;
        state = PyModule_GetState(module);
    }
    return PyObject_CallMethodOneArg((PyObject *)self, state->slow_name, name);
}

static PyObject *
share_bind(ShareBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_accord_bind(link, reader)");
        return NULL;
    }
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &module_def);
    if (module == NULL)
        return NULL;
    State *state = PyModule_GetState(module);
    if (!PyObject_TypeCheck(args[1], state->reader_type)) {
        PyErr_SetString(PyExc_TypeError, "_accord_bind(link, reader): reader is a Reader");
        return NULL;
    }
    Py_XSETREF(self->link, Py_NewRef(args[0]));
    Py_XSETREF(self->reader, (Reader *)Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMemberDef share_members[] = {
    {"_link", Py_T_OBJECT_EX, offsetof(ShareBase, link), Py_READONLY,
     "The share's Link (set by _accord_bind)."},
    {"_reader", Py_T_OBJECT_EX, offsetof(ShareBase, reader), Py_READONLY,
     "The Link's Reader (set by _accord_bind)."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef share_methods[] = {
    {"_accord_bind", (PyCFunction)(void (*)(void))share_bind, METH_FASTCALL,
     "_accord_bind(link, reader): the handle's link, and the reader of its fast path."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot share_slots[] = {
    {Py_tp_dealloc, share_dealloc},
    {Py_tp_traverse, share_traverse},
    {Py_tp_clear, share_clear},
    {Py_tp_getattro, share_getattro},
    {Py_tp_members, share_members},
    {Py_tp_methods, share_methods},
    {Py_tp_doc,
     "Base of Share: `share.name` served from the remembered value when nothing changed, "
     "else by the subclass's `_accord_slow(name)`."},
    {0, NULL},
};

static PyType_Spec share_spec = {
    "accord._core._fastread.ShareBase", sizeof(ShareBase), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, share_slots,
};

/* -- the module ------------------------------------------------------------ */

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    State *state = PyModule_GetState(module);
    if (nargs == 1 && args[0] == Py_None) {
        state->configured = 0;
        Py_RETURN_NONE;
    }
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "configure(load_attr, copy, extended_arg) or (None)");
        return NULL;
    }
    int ops[3];
    for (int i = 0; i < 3; i++) {
        long op = PyLong_AsLong(args[i]);
        if (op == -1 && PyErr_Occurred())
            return NULL;
        if (op < 0 || op > 255) {
            PyErr_Format(PyExc_ValueError, "opcode %ld out of range", op);
            return NULL;
        }
        ops[i] = (int)op;
    }
    state->load_attr = ops[0];
    state->copy = ops[1];
    state->extended_arg = ops[2];
    state->configured = 1;
    Py_RETURN_NONE;
}

static int
add_type(PyObject *module, PyType_Spec *spec, PyObject *base, PyTypeObject **out)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, spec, base);
    if (tp == NULL)
        return -1;
    *out = (PyTypeObject *)tp;
    const char *dot = strrchr(spec->name, '.');
    return PyModule_AddObjectRef(module, dot + 1, tp);
}

static int
exec_module(PyObject *module)
{
    State *state = PyModule_GetState(module);
    state->configured = 0;
    state->slow_name = PyUnicode_InternFromString("_accord_slow");
    if (state->slow_name == NULL)
        return -1;
    if (add_type(module, &entry_spec, NULL, &state->entry_type) < 0 ||
        add_type(module, &control_spec, NULL, &state->control_type) < 0 ||
        add_type(module, &reader_spec, NULL, &state->reader_type) < 0 ||
        add_type(module, &share_spec, NULL, &state->share_type) < 0)
        return -1;
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    State *state = PyModule_GetState(module);
    Py_VISIT(state->control_type);
    Py_VISIT(state->entry_type);
    Py_VISIT(state->reader_type);
    Py_VISIT(state->share_type);
    Py_VISIT(state->slow_name);
    return 0;
}

static int
module_clear(PyObject *module)
{
    State *state = PyModule_GetState(module);
    Py_CLEAR(state->control_type);
    Py_CLEAR(state->entry_type);
    Py_CLEAR(state->reader_type);
    Py_CLEAR(state->share_type);
    Py_CLEAR(state->slow_name);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(load_attr, copy, extended_arg): the running Python's opcodes, which tell a "
     "plain attribute read from the start of an augmented assignment; configure(None): "
     "send every read to the slow path's detector."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_fastread",
    "The unchanged-read fast path of share attributes.",
    sizeof(State),
    methods,
    slots,
    module_traverse,
    module_clear,
    module_free,
};

PyMODINIT_FUNC
PyInit__fastread(void)
{
    return PyModuleDef_Init(&module_def);
}
