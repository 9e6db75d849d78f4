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
 * after a read), so handing the cached object out is as safe as before -- and
 * the proxies of containers (`Reader.remember`), which read afresh when used.
 * Items and attributes of containers: see ProxyBase below.
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

#define N_INPLACE 13

typedef struct {
    PyTypeObject *control_type;
    PyTypeObject *entry_type;
    PyTypeObject *reader_type;
    PyTypeObject *share_type;
    PyTypeObject *method_type;
    PyTypeObject *augmenting_type;
    PyObject *slow_name; /* "_accord_slow": the Python slow path */
    PyObject *call_name; /* "_accord_call": a method's Python path */
    PyObject *augment_name; /* "augment": Link.augment, the Python path of `+=` */
    PyObject *inplace[N_INPLACE]; /* "iadd", ...: _core/_protocol.INPLACE_OPERATORS */
    int configured;      /* opcodes known (the running Python's bytecode is recognised) */
    int load_attr, copy, extended_arg;
    PyObject *verdicts; /* share/_augmented's {(code, offset): is the read a `+=`} */
    PyObject *done;     /* share/_augmented.DONE */
    int binary_subscr;       /* -1 until configure_items(): every proxy[key] to Python */
    PyTypeObject *held_type; /* reads of items and attributes (ProxyBase) */
    PyTypeObject *proxy_type;
    PyObject *getitem_name; /* "_accord_getitem", "_accord_getattr": ProxyBase's slow paths */
    PyObject *getattr_name;
    PyObject *own_prefix; /* "_accord_" */
} State;

static const char *inplace_names[N_INPLACE] = {
    "iadd", "isub", "imul", "imatmul", "itruediv", "ifloordiv", "imod",
    "ipow", "ilshift", "irshift", "iand", "ixor", "ior",
};

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
    PyObject *send;     /* NULL, or a Sender's send: `share.name += x` in C (see below) */
    PyObject *augments; /* name -> {op name: Sender template} */
    Py_ssize_t heartbeat, commits, pending, applied, nslots;
    Py_ssize_t limit; /* entries kept before starting afresh */
    int64_t stale_ns;
    uint64_t epoch; /* unique; renewed by forget() and close(): ends ProxyBase's Held reads */
} Control;

/* Epochs of every Control of the process, never reused (see Held). */
static uint64_t last_epoch;

static uint64_t
new_epoch(void)
{
    return __atomic_add_fetch(&last_epoch, 1, __ATOMIC_RELAXED);
}

static int
control_is_open(Control *self)
{
    return self->view.obj != NULL;
}

static int
control_traverse(Control *self, visitproc visit, void *arg)
{
    Py_VISIT(self->entries);
    Py_VISIT(self->send);
    Py_VISIT(self->augments);
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
    Py_CLEAR(self->send);
    Py_CLEAR(self->augments);
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
    self->augments = PyDict_New();
    if (self->entries == NULL || self->augments == NULL) {
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
    self->epoch = new_epoch();
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
    self->epoch = new_epoch(); /* (close() comes here too) */
    PyDict_Clear(self->entries);
    PyDict_Clear(self->augments);
    Py_CLEAR(self->send);
    Py_RETURN_NONE;
}

static PyObject *
control_close(Control *self, PyObject *unused)
{
    control_release(self);
    return control_forget(self, NULL);
}

static PyObject *
control_get_send(Control *self, void *unused)
{
    return Py_NewRef(self->send != NULL ? self->send : Py_None);
}

static int
control_set_send(Control *self, PyObject *value, void *unused)
{
    if (value == Py_None)
        value = NULL;
    if (value != NULL && !PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "send: a Sender's send, or None");
        return -1;
    }
    Py_XSETREF(self->send, Py_XNewRef(value));
    return 0;
}

static PyObject *
control_get_augments(Control *self, void *unused)
{
    return Py_NewRef(self->augments);
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
    {"forget", (PyCFunction)control_forget, METH_NOARGS,
     "Forget every remembered value and augment template, and the sender."},
    {"close", (PyCFunction)control_close, METH_NOARGS,
     "Stop serving reads and release the buffer (before it is unmapped)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef control_getset[] = {
    {"open", (getter)control_get_open, NULL, "Whether reads may be served.", NULL},
    {"send", (getter)control_get_send, (setter)control_set_send,
     "None, or the client's Sender.send: `share.name op= value` is sent in C.", NULL},
    {"augments", (getter)control_get_augments, NULL,
     "{name: {op name (iadd...): Sender template}}: the `+=` sent in C.", NULL},
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

/* The Control reads are served from, if it is open, else NULL. */
static Control *
reader_control(Reader *self)
{
    Control *control = self->control;
    return control != NULL && control_is_open(control) ? control : NULL;
}

static PyObject *
reader_mark(Reader *self, PyObject *unused)
{
    Control *control = reader_control(self);
    if (control == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(KK)", (unsigned long long)control->epoch,
                         (unsigned long long)load64(control->view.buf, control->commits));
}

/* Reads the commit count of `mark` (a Reader.mark()) into *commits: 1 if the
 * mark was made while `control` was armed (and not forgotten since), 0 if
 * not, -1 on an error. */
static int
mark_of(Control *control, PyObject *mark, uint64_t *commits)
{
    if (!PyTuple_Check(mark) || PyTuple_GET_SIZE(mark) != 2) {
        PyErr_SetString(PyExc_TypeError, "a mark is what Reader.mark() returned");
        return -1;
    }
    unsigned long long epoch = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(mark, 0));
    unsigned long long count = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(mark, 1));
    if (PyErr_Occurred())
        return -1;
    *commits = (uint64_t)count;
    return control != NULL && epoch == control->epoch;
}

static PyObject *
reader_remember(Reader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "remember(name, obj, mark, slot)");
        return NULL;
    }
    Control *control = reader_control(self);
    uint64_t commits;
    int same = mark_of(control, args[2], &commits);
    if (same <= 0)
        return same < 0 ? NULL : Py_NewRef(Py_None); /* re-armed since the mark */
    PyObject *count = PyLong_FromUnsignedLongLong((unsigned long long)commits);
    if (count == NULL)
        return NULL;
    PyObject *forwarded[4] = {args[0], args[1], count, args[3]};
    PyObject *result = control_remember(control, forwarded, 4);
    Py_DECREF(count);
    return result;
}

static PyMethodDef reader_methods[] = {
    {"mark", (PyCFunction)reader_mark, METH_NOARGS,
     "mark(): (the armed Control's epoch, its commit count now), None if unarmed. Taken "
     "before a read, it says what the read is at least as recent as."},
    {"remember", (PyCFunction)(void (*)(void))reader_remember, METH_FASTCALL,
     "remember(name, obj, mark, slot): Control.remember(name, obj, commits of mark, slot), "
     "if the Control armed at mark() is still armed; for `share.name` of a container, obj "
     "is its proxy."},
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

/* -- the writer's C paths: `share.name op= value` and `proxy.method(value)` --
 *
 * Both end in a Sender's `send(template, value)` (backends/shm/_ring.c): one
 * C call that records the intent, raises the flags and appends the command,
 * or returns None, and then the Python path runs, as it would have without
 * this.  The templates are made by the Python path (share/_link.py) the
 * first time it sends the same command; they hold the command's bytes but
 * the value's, and its write flags.
 *
 * `share.name op= value`: the attribute hook serves the read that starts it
 * (a LOAD_ATTR that share/_augmented.py's detector has found to be one, its
 * verdict cached per code object and offset) with an Augmenting marker when
 * the client is connected, the coordinator's heartbeat fresh and the Python
 * path has sent `op=` on that name before.  Its in-place operator sends the
 * AUGMENT (or calls Link.augment, the Python path), and returns DONE, which
 * the store that ends the statement ignores: the same command, in the same
 * order, as share/_augmented.Augmenting sends. */

typedef struct {
    PyObject_HEAD
    PyObject *link;  /* the Python path: link.augment((name,), op, value) */
    PyObject *name;
    PyObject *templates; /* {op name: template} */
    PyObject *send;
} Augmenting;

static int
augmenting_traverse(Augmenting *self, visitproc visit, void *arg)
{
    Py_VISIT(self->link);
    Py_VISIT(self->name);
    Py_VISIT(self->templates);
    Py_VISIT(self->send);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
augmenting_clear(Augmenting *self)
{
    Py_CLEAR(self->link);
    Py_CLEAR(self->name);
    Py_CLEAR(self->templates);
    Py_CLEAR(self->send);
    return 0;
}

static void
augmenting_dealloc(Augmenting *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    augmenting_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static State *
state_of_type(PyTypeObject *type)
{
    PyObject *module = PyType_GetModuleByDef(type, &module_def);
    return module == NULL ? NULL : PyModule_GetState(module);
}

static PyObject *
augmenting_apply(PyObject *obj, int op, PyObject *value)
{
    Augmenting *self = (Augmenting *)obj;
    State *state = state_of_type(Py_TYPE(obj));
    if (state == NULL)
        return NULL;
    PyObject *opname = state->inplace[op];
    PyObject *template = PyDict_GetItemWithError(self->templates, opname); /* borrowed */
    if (template != NULL) {
        PyObject *argv[2] = {template, value};
        Py_INCREF(template); /* (send may run the wake-up, Python code) */
        PyObject *sent = PyObject_Vectorcall(self->send, argv, 2, NULL);
        Py_DECREF(template);
        if (sent == NULL)
            return NULL;
        int done = sent != Py_None;
        Py_DECREF(sent);
        if (done)
            return Py_NewRef(state->done);
    }
    else if (PyErr_Occurred())
        return NULL;
    PyObject *place = PyTuple_Pack(1, self->name);
    if (place == NULL)
        return NULL;
    PyObject *argv[4] = {self->link, place, opname, value};
    PyObject *result = PyObject_VectorcallMethod(state->augment_name, argv,
                                                 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(place);
    if (result == NULL)
        return NULL;
    Py_DECREF(result);
    return Py_NewRef(state->done);
}

#define INPLACE(fn, index)                                                                     \
    static PyObject *fn(PyObject *self, PyObject *value)                                       \
    {                                                                                          \
        return augmenting_apply(self, index, value);                                           \
    }
INPLACE(aug_iadd, 0)
INPLACE(aug_isub, 1)
INPLACE(aug_imul, 2)
INPLACE(aug_imatmul, 3)
INPLACE(aug_itruediv, 4)
INPLACE(aug_ifloordiv, 5)
INPLACE(aug_imod, 6)
INPLACE(aug_ilshift, 8)
INPLACE(aug_irshift, 9)
INPLACE(aug_iand, 10)
INPLACE(aug_ixor, 11)
INPLACE(aug_ior, 12)

static PyObject *
aug_ipow(PyObject *self, PyObject *value, PyObject *modulo)
{
    return augmenting_apply(self, 7, value);
}

static PyType_Slot augmenting_slots[] = {
    {Py_tp_dealloc, augmenting_dealloc},
    {Py_tp_traverse, augmenting_traverse},
    {Py_tp_clear, augmenting_clear},
    {Py_nb_inplace_add, aug_iadd},
    {Py_nb_inplace_subtract, aug_isub},
    {Py_nb_inplace_multiply, aug_imul},
    {Py_nb_inplace_matrix_multiply, aug_imatmul},
    {Py_nb_inplace_true_divide, aug_itruediv},
    {Py_nb_inplace_floor_divide, aug_ifloordiv},
    {Py_nb_inplace_remainder, aug_imod},
    {Py_nb_inplace_power, aug_ipow},
    {Py_nb_inplace_lshift, aug_ilshift},
    {Py_nb_inplace_rshift, aug_irshift},
    {Py_nb_inplace_and, aug_iand},
    {Py_nb_inplace_xor, aug_ixor},
    {Py_nb_inplace_or, aug_ior},
    {Py_tp_doc, "What the read that starts `share.name op= value` returns (see above)."},
    {0, NULL},
};

static PyType_Spec augmenting_spec = {
    "accord._core._fastread.Augmenting",
    sizeof(Augmenting),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    augmenting_slots,
};

/* The marker for `share.name op= value` (new reference), if the C path
 * serves this read; NULL without an exception if not; NULL with one on error. */
static PyObject *
augmenting_for(ShareBase *share, State *state, Control *control, PyObject *name)
{
    if (control->send == NULL || state->verdicts == NULL)
        return NULL;
    /* The Share's own API (share.close, ...): the Python path answers it. */
    if (_PyType_Lookup(Py_TYPE(share), name) != NULL)
        return NULL;
    PyFrameObject *frame = PyEval_GetFrame(); /* borrowed */
    if (frame == NULL)
        return NULL;
    PyObject *code = (PyObject *)PyFrame_GetCode(frame);
    PyObject *lasti = PyLong_FromLong(PyFrame_GetLasti(frame));
    PyObject *key = lasti == NULL ? NULL : PyTuple_Pack(2, code, lasti);
    Py_DECREF(code);
    Py_XDECREF(lasti);
    if (key == NULL)
        return NULL;
    PyObject *verdict = PyDict_GetItemWithError(state->verdicts, key); /* borrowed */
    Py_DECREF(key);
    if (verdict != Py_True)
        return NULL; /* (unknown yet: the Python detector decides and caches it) */
    const char *base = control->view.buf;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    if ((int64_t)(now - load64(base, control->heartbeat)) >= control->stale_ns)
        return NULL; /* the Python path checks that the coordinator lives */
    PyObject *templates = PyDict_GetItemWithError(control->augments, name);
    if (templates == NULL || control->send == NULL)
        return NULL;
    /* Held before anything that may run a finalizer (which may change them). */
    PyObject *send = Py_NewRef(control->send);
    Py_INCREF(templates);
    Augmenting *marker = PyObject_GC_New(Augmenting, state->augmenting_type);
    if (marker == NULL) {
        Py_DECREF(send);
        Py_DECREF(templates);
        return NULL;
    }
    marker->link = Py_NewRef(share->link);
    marker->name = Py_NewRef(name);
    marker->templates = templates;
    marker->send = send;
    PyObject_GC_Track(marker);
    return (PyObject *)marker;
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
        if (control->send != NULL) {
            if (state == NULL)
                state = PyType_GetModuleState(Py_TYPE(reader));
            if (state == NULL)
                return NULL;
            PyObject *marker = augmenting_for(self, state, control, name);
            if (marker != NULL || PyErr_Occurred())
                return marker;
        }
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

/* -- MethodBase: the base of share/_proxy.BoundMethod ------------------------
 *
 * `proxy.append(3)`: calling a bound method whose Python path has armed it
 * (`_accord_arm(send, template)`: a fire-and-forget method, one plain
 * argument) sends the command in C; anything else, and any None from send,
 * goes to the subclass's `_accord_call(args, kwargs)`, the Python path. */

typedef struct {
    PyObject_HEAD
    PyObject *send;     /* NULL, or a Sender's send */
    PyObject *template; /* NULL, or its template for this method's command */
} MethodBase;

static int
method_traverse(MethodBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->send);
    Py_VISIT(self->template);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
method_clear(MethodBase *self)
{
    Py_CLEAR(self->send);
    Py_CLEAR(self->template);
    return 0;
}

static void
method_dealloc(MethodBase *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    method_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
method_call(MethodBase *self, PyObject *args, PyObject *kwargs)
{
    if (self->send != NULL && PyTuple_GET_SIZE(args) == 1 &&
        (kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0)) {
        PyObject *send = Py_NewRef(self->send), *template = Py_NewRef(self->template);
        PyObject *argv[2] = {template, PyTuple_GET_ITEM(args, 0)};
        PyObject *sent = PyObject_Vectorcall(send, argv, 2, NULL);
        Py_DECREF(send);
        Py_DECREF(template);
        if (sent == NULL)
            return NULL;
        int done = sent != Py_None;
        Py_DECREF(sent);
        if (done)
            Py_RETURN_NONE; /* (what a fire-and-forget call returns) */
    }
    State *state = state_of_type(Py_TYPE(self));
    if (state == NULL)
        return NULL;
    PyObject *empty = NULL;
    if (kwargs == NULL && (kwargs = empty = PyDict_New()) == NULL)
        return NULL;
    PyObject *argv[3] = {(PyObject *)self, args, kwargs};
    PyObject *result = PyObject_VectorcallMethod(state->call_name, argv,
                                                 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(empty);
    return result;
}

static PyObject *
method_arm(MethodBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || (args[0] == Py_None) != (args[1] == Py_None) ||
        (args[0] != Py_None && !PyCallable_Check(args[0]))) {
        PyErr_SetString(PyExc_TypeError, "_accord_arm(send, template), or (None, None)");
        return NULL;
    }
    PyObject *send = args[0] == Py_None ? NULL : Py_NewRef(args[0]);
    PyObject *template = args[1] == Py_None ? NULL : Py_NewRef(args[1]);
    PyObject *old_send = self->send, *old_template = self->template;
    self->send = send;
    self->template = template;
    Py_XDECREF(old_send);
    Py_XDECREF(old_template);
    Py_RETURN_NONE;
}

static PyObject *
method_get_template(MethodBase *self, void *unused)
{
    return Py_NewRef(self->template != NULL ? self->template : Py_None);
}

static PyObject *
method_get_send(MethodBase *self, void *unused)
{
    return Py_NewRef(self->send != NULL ? self->send : Py_None);
}

static PyMethodDef method_methods[] = {
    {"_accord_arm", (PyCFunction)(void (*)(void))method_arm, METH_FASTCALL,
     "_accord_arm(send, template): calls with one argument go to send(template, arg) first; "
     "(None, None): none do."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef method_getset[] = {
    {"_accord_template", (getter)method_get_template, NULL, "The armed template, or None.", NULL},
    {"_accord_send", (getter)method_get_send, NULL, "The armed send, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot method_slots[] = {
    {Py_tp_dealloc, method_dealloc},
    {Py_tp_traverse, method_traverse},
    {Py_tp_clear, method_clear},
    {Py_tp_call, method_call},
    {Py_tp_methods, method_methods},
    {Py_tp_getset, method_getset},
    {Py_tp_doc, "Base of BoundMethod: an armed call is sent in C (see _accord_arm)."},
    {0, NULL},
};

static PyType_Spec method_spec = {
    "accord._core._fastread.MethodBase", sizeof(MethodBase), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, method_slots,
};

/* -- ProxyBase: `proxy[key]` and `proxy.attr` of a shared object ---------- *
 *
 * `share.d["k"]`, `share.lst[3]`, `share.obj.attr`, `share.cfg["m"]["lr"]`:
 * the proxy's slow path (Python: Proxy._accord_getitem/_accord_getattr, then
 * Link.item/attribute) reads the item after the writes queued before it and,
 * when the read is one that may be repeated as it is (a str or int key of a
 * dict/list/tuple, an instance attribute of a plain object; see
 * Link._read_held), hands it here with the flag slots it waited on and the
 * commit count taken before it read (Reader.mark).  The next read of the same
 * key is served from here when, as for `share.name`:
 *
 *   - the mark's Control is still the armed, open one, not forgotten since
 *     (its epoch: a fork, a restart, a lost coordinator each end it);
 *   - the coordinator's heartbeat is fresh;
 *   - applied >= pending on every slot the slow path waited on;
 *   - the commit counter is the mark's (flags first, then the counter);
 *   - the caller's instruction is a plain read: BINARY_SUBSCR (for items)
 *     or LOAD_ATTR (attributes) whose previous code unit is neither COPY nor
 *     EXTENDED_ARG, never the first step of `proxy[k] += x` (share/_augmented.py).
 *
 * What is held is an immutable value or the proxy of a mutable item (which
 * reads afresh when used): never a mutable object itself. */

typedef struct {
    PyObject_HEAD
    PyObject *obj;
    uint64_t epoch;   /* the Control's, at the mark */
    uint64_t commits; /* the commit count the read is at least as recent as */
    int nslots;       /* 1 or 2 flag slots waited on */
    Py_ssize_t pending[2], applied[2];
} Held;

static int
held_traverse(Held *self, visitproc visit, void *arg)
{
    Py_VISIT(self->obj);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
held_clear(Held *self)
{
    Py_CLEAR(self->obj);
    return 0;
}

static void
held_dealloc(Held *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    held_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot held_slots[] = {
    {Py_tp_dealloc, held_dealloc},
    {Py_tp_traverse, held_traverse},
    {Py_tp_clear, held_clear},
    {0, NULL},
};

static PyType_Spec held_spec = {
    "accord._core._fastread.Held",
    sizeof(Held),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    held_slots,
};

typedef struct {
    PyObject_HEAD
    PyObject *link;
    PyObject *path;
    Reader *reader;  /* the link's Reader; NULL: every read goes to Python */
    PyObject *items; /* key -> Held, NULL until the first */
    PyObject *attrs; /* attribute name -> Held */
} ProxyBase;

static int
proxy_traverse(ProxyBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->link);
    Py_VISIT(self->path);
    Py_VISIT(self->reader);
    Py_VISIT(self->items);
    Py_VISIT(self->attrs);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
proxy_clear(ProxyBase *self)
{
    Py_CLEAR(self->link);
    Py_CLEAR(self->path);
    Py_CLEAR(self->reader);
    Py_CLEAR(self->items);
    Py_CLEAR(self->attrs);
    return 0;
}

static void
proxy_dealloc(ProxyBase *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    proxy_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
proxy_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *link, *path;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "Proxy(link, path) takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Proxy", 2, 2, &link, &path))
        return NULL;
    if (!PyTuple_Check(path)) {
        PyErr_SetString(PyExc_TypeError, "Proxy(link, path): path is a tuple");
        return NULL;
    }
    State *state = state_of_type(type);
    if (state == NULL)
        return NULL;
    PyObject *reader = PyObject_GetAttrString(link, "reader");
    if (reader == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear();
    }
    if (reader != NULL && !PyObject_TypeCheck(reader, state->reader_type))
        Py_CLEAR(reader); /* (not a Link: no fast path) */
    ProxyBase *self = (ProxyBase *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_XDECREF(reader);
        return NULL;
    }
    self->link = Py_NewRef(link);
    self->path = Py_NewRef(path);
    self->reader = (Reader *)reader;
    return (PyObject *)self;
}

/* Is the Held read still what the slow path would return (all but the
 * caller's instruction, see plain_read)? */
static int
held_current(Held *held, Control *control)
{
    if (held->epoch != control->epoch)
        return 0;
    const char *base = control->view.buf;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of time.monotonic_ns */
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    if ((int64_t)(now - load64(base, control->heartbeat)) >= control->stale_ns)
        return 0;
    /* The order matters: the flags, then the commit counter. */
    for (int i = 0; i < held->nslots; i++)
        if (load64(base, held->applied[i]) < load64(base, held->pending[i]))
            return 0;
    return load64(base, control->commits) == held->commits;
}

/* Is the running instruction a plain read of an item (`item`) or attribute,
 * never the first step of an augmented assignment?  Anything unsure: no. */
static int
plain_read(State *state, int item)
{
    int expected = item ? state->binary_subscr : state->load_attr;
    if (!state->configured || expected < 0)
        return 0;
    PyFrameObject *frame = PyEval_GetFrame(); /* borrowed */
    if (frame == NULL)
        return 0;
    int lasti = PyFrame_GetLasti(frame);
    if (lasti < 2)
        return 0;
    PyCodeObject *code = PyFrame_GetCode(frame);
    PyObject *bytes = PyCode_GetCode(code); /* de-specialised; cached by CPython */
    Py_DECREF(code);
    if (bytes == NULL) {
        PyErr_Clear();
        return 0;
    }
    int plain = 0;
    if (PyBytes_Check(bytes) && lasti + 1 < PyBytes_GET_SIZE(bytes)) {
        const unsigned char *ops = (const unsigned char *)PyBytes_AS_STRING(bytes);
        int before = ops[lasti - 2];
        plain = ops[lasti] == expected && before != state->copy &&
                before != state->extended_arg;
    }
    Py_DECREF(bytes);
    return plain;
}

/* The held object for `key` in `held` (a dict or NULL), if it may be served
 * now; NULL without an error otherwise. */
static PyObject *
serve(ProxyBase *self, PyObject *held, PyObject *key, int item)
{
    Reader *reader = self->reader;
    Control *control;
    if (held == NULL || reader == NULL || (control = reader_control(reader)) == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(held, key);
    if (found == NULL)
        return NULL; /* (an error, if any, stays set) */
    /* Held: the frame lookup below may allocate, run the GC, and a finalizer
     * replace the entry. */
    Held *entry = (Held *)Py_NewRef(found);
    PyObject *result = NULL;
    if (held_current(entry, control)) {
        State *state = PyType_GetModuleState(Py_TYPE(reader));
        if (state == NULL)
            PyErr_Clear();
        else if (plain_read(state, item))
            result = Py_NewRef(entry->obj);
    }
    Py_DECREF(entry);
    return result;
}

/* self.<name>(arg): the Python slow path, looked up as any attribute of
 * the proxy's own (its class's method). */
static PyObject *
proxy_slow(ProxyBase *self, PyObject *name, PyObject *arg)
{
    PyObject *method = PyObject_GenericGetAttr((PyObject *)self, name);
    if (method == NULL)
        return NULL;
    PyObject *result = PyObject_CallOneArg(method, arg);
    Py_DECREF(method);
    return result;
}

static PyObject *
proxy_subscript(ProxyBase *self, PyObject *key)
{
    if (PyUnicode_CheckExact(key) || PyLong_CheckExact(key)) {
        PyObject *result = serve(self, self->items, key, 1);
        if (result != NULL || PyErr_Occurred())
            return result;
    }
    State *state = state_of_type(Py_TYPE(self));
    if (state == NULL)
        return NULL;
    return proxy_slow(self, state->getitem_name, key);
}

static PyObject *
proxy_getattro(ProxyBase *self, PyObject *name)
{
    /* The proxy's own names ("_accord_..." and dunders) are the proxy's;
     * every other name is the shared object's. */
    if (!PyUnicode_Check(name) || (PyUnicode_GET_LENGTH(name) > 0 &&
                                   PyUnicode_READ_CHAR(name, 0) == '_')) {
        if (!PyUnicode_Check(name) || (PyUnicode_GET_LENGTH(name) > 1 &&
                                       PyUnicode_READ_CHAR(name, 1) == '_'))
            return PyObject_GenericGetAttr((PyObject *)self, name);
        State *state = state_of_type(Py_TYPE(self));
        if (state == NULL)
            return NULL;
        Py_ssize_t own = PyUnicode_Tailmatch(name, state->own_prefix, 0, PY_SSIZE_T_MAX, -1);
        if (own < 0)
            return NULL;
        if (own)
            return PyObject_GenericGetAttr((PyObject *)self, name);
        return proxy_slow(self, state->getattr_name, name);
    }
    if (PyUnicode_CheckExact(name)) {
        PyObject *result = serve(self, self->attrs, name, 0);
        if (result != NULL || PyErr_Occurred())
            return result;
    }
    State *state = state_of_type(Py_TYPE(self));
    if (state == NULL)
        return NULL;
    return proxy_slow(self, state->getattr_name, name);
}

static void
held_set(Held *held, Control *control, uint64_t commits, int nslots, const Py_ssize_t *index)
{
    held->epoch = control->epoch;
    held->commits = commits;
    held->nslots = nslots;
    for (int i = 0; i < nslots; i++) {
        held->pending[i] = control->pending + 8 * index[i];
        held->applied[i] = control->applied + 8 * index[i];
    }
}

static PyObject *
proxy_hold(ProxyBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_accord_hold(key, obj, mark, slots, attribute)");
        return NULL;
    }
    PyObject *key = args[0], *slots = args[3];
    int attribute = PyObject_IsTrue(args[4]);
    if (attribute < 0)
        return NULL;
    if (attribute ? !PyUnicode_CheckExact(key)
                  : !(PyUnicode_CheckExact(key) || PyLong_CheckExact(key))) {
        PyErr_SetString(PyExc_TypeError, "held keys are str (or int, for items)");
        return NULL;
    }
    if (!PyTuple_Check(slots) || PyTuple_GET_SIZE(slots) < 1 || PyTuple_GET_SIZE(slots) > 2) {
        PyErr_SetString(PyExc_ValueError, "one or two flag slots");
        return NULL;
    }
    Control *control = self->reader == NULL ? NULL : reader_control(self->reader);
    uint64_t commits;
    int same = mark_of(control, args[2], &commits);
    if (same <= 0)
        return same < 0 ? NULL : Py_NewRef(Py_None); /* re-armed since the mark */
    Py_ssize_t index[2];
    int nslots = (int)PyTuple_GET_SIZE(slots);
    for (int i = 0; i < nslots; i++) {
        index[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(slots, i));
        if (index[i] == -1 && PyErr_Occurred())
            return NULL;
        if (index[i] < 0 || index[i] >= control->nslots) {
            PyErr_Format(PyExc_IndexError, "slot %zd out of range", index[i]);
            return NULL;
        }
    }
    State *state = state_of_type(Py_TYPE(self));
    if (state == NULL)
        return NULL;
    PyObject **where = attribute ? &self->attrs : &self->items;
    if (*where == NULL && (*where = PyDict_New()) == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(*where, key);
    if (found == NULL && PyErr_Occurred())
        return NULL;
    if (found != NULL && Py_IS_TYPE(found, state->held_type)) {
        /* Updated in place (a read after every commit comes here), every
         * field before the old object goes: its finalizer, if any, may read
         * through this proxy and must see an object and fields that agree. */
        Held *held = (Held *)found;
        PyObject *old = held->obj;
        held->obj = Py_NewRef(args[1]);
        held_set(held, control, commits, nslots, index);
        Py_XDECREF(old);
        Py_RETURN_NONE;
    }
    if (PyDict_GET_SIZE(*where) >= control->limit)
        PyDict_Clear(*where); /* keys read once each, without end */
    Held *held = PyObject_GC_New(Held, state->held_type);
    if (held == NULL)
        return NULL;
    held->obj = Py_NewRef(args[1]);
    held_set(held, control, commits, nslots, index);
    PyObject_GC_Track(held);
    int failed = PyDict_SetItem(*where, key, (PyObject *)held);
    Py_DECREF(held);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
proxy_held(ProxyBase *self, PyObject *unused)
{
    Py_ssize_t items = self->items == NULL ? 0 : PyDict_GET_SIZE(self->items);
    Py_ssize_t attrs = self->attrs == NULL ? 0 : PyDict_GET_SIZE(self->attrs);
    return Py_BuildValue("(nn)", items, attrs);
}

static PyMemberDef proxy_members[] = {
    {"_accord_link", Py_T_OBJECT_EX, offsetof(ProxyBase, link), Py_READONLY,
     "The share's Link."},
    {"_accord_path", Py_T_OBJECT_EX, offsetof(ProxyBase, path), Py_READONLY,
     "The path of the object in the share: (name, ATTR|ITEM, key, ...)."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef proxy_methods[] = {
    {"_accord_hold", (PyCFunction)(void (*)(void))proxy_hold, METH_FASTCALL,
     "_accord_hold(key, obj, mark, slots, attribute): serve self[key] (self.key with "
     "`attribute`) as obj while the flags of `slots` are clear and nothing is committed "
     "since `mark` (Reader.mark(), taken before the read). obj: an immutable value or a "
     "proxy."},
    {"_accord_held", (PyCFunction)proxy_held, METH_NOARGS,
     "_accord_held(): how many (items, attributes) are held."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot proxy_slots[] = {
    {Py_tp_new, proxy_new},
    {Py_tp_dealloc, proxy_dealloc},
    {Py_tp_traverse, proxy_traverse},
    {Py_tp_clear, proxy_clear},
    {Py_tp_getattro, proxy_getattro},
    {Py_mp_subscript, proxy_subscript},
    {Py_tp_members, proxy_members},
    {Py_tp_methods, proxy_methods},
    {Py_tp_doc,
     "ProxyBase(link, path): base of Proxy. `proxy[key]` and `proxy.attr` served from what "
     "the slow path held when nothing changed, else by the subclass's "
     "`_accord_getitem(key)` / `_accord_getattr(name)`."},
    {0, NULL},
};

static PyType_Spec proxy_spec = {
    "accord._core._fastread.ProxyBase", sizeof(ProxyBase), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, proxy_slots,
};

/* -- the module ------------------------------------------------------------ */

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    State *state = PyModule_GetState(module);
    if (nargs == 1 && args[0] == Py_None) {
        state->configured = 0;
        Py_CLEAR(state->verdicts);
        Py_CLEAR(state->done);
        Py_RETURN_NONE;
    }
    if (nargs != 5 || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(load_attr, copy, extended_arg, verdicts, done) or (None)");
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
    Py_XSETREF(state->verdicts, Py_NewRef(args[3]));
    Py_XSETREF(state->done, Py_NewRef(args[4]));
    state->configured = 1;
    Py_RETURN_NONE;
}

static PyObject *
configure_items(PyObject *module, PyObject *arg)
{
    State *state = PyModule_GetState(module);
    if (arg == Py_None) {
        state->binary_subscr = -1;
        Py_RETURN_NONE;
    }
    long op = PyLong_AsLong(arg);
    if (op == -1 && PyErr_Occurred())
        return NULL;
    if (op < 0 || op > 255) {
        PyErr_Format(PyExc_ValueError, "opcode %ld out of range", op);
        return NULL;
    }
    state->binary_subscr = (int)op;
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
    state->binary_subscr = -1;
    state->slow_name = PyUnicode_InternFromString("_accord_slow");
    state->call_name = PyUnicode_InternFromString("_accord_call");
    state->augment_name = PyUnicode_InternFromString("augment");
    if (state->slow_name == NULL || state->call_name == NULL || state->augment_name == NULL)
        return -1;
    for (int i = 0; i < N_INPLACE; i++)
        if ((state->inplace[i] = PyUnicode_InternFromString(inplace_names[i])) == NULL)
            return -1;
    if ((state->getitem_name = PyUnicode_InternFromString("_accord_getitem")) == NULL ||
        (state->getattr_name = PyUnicode_InternFromString("_accord_getattr")) == NULL ||
        (state->own_prefix = PyUnicode_InternFromString("_accord_")) == NULL)
        return -1;
    if (add_type(module, &entry_spec, NULL, &state->entry_type) < 0 ||
        add_type(module, &control_spec, NULL, &state->control_type) < 0 ||
        add_type(module, &reader_spec, NULL, &state->reader_type) < 0 ||
        add_type(module, &share_spec, NULL, &state->share_type) < 0 ||
        add_type(module, &method_spec, NULL, &state->method_type) < 0 ||
        add_type(module, &augmenting_spec, NULL, &state->augmenting_type) < 0 ||
        add_type(module, &held_spec, NULL, &state->held_type) < 0 ||
        add_type(module, &proxy_spec, NULL, &state->proxy_type) < 0)
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
    Py_VISIT(state->method_type);
    Py_VISIT(state->augmenting_type);
    Py_VISIT(state->slow_name);
    Py_VISIT(state->call_name);
    Py_VISIT(state->augment_name);
    for (int i = 0; i < N_INPLACE; i++)
        Py_VISIT(state->inplace[i]);
    Py_VISIT(state->verdicts);
    Py_VISIT(state->done);
    Py_VISIT(state->held_type);
    Py_VISIT(state->proxy_type);
    Py_VISIT(state->getitem_name);
    Py_VISIT(state->getattr_name);
    Py_VISIT(state->own_prefix);
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
    Py_CLEAR(state->method_type);
    Py_CLEAR(state->augmenting_type);
    Py_CLEAR(state->slow_name);
    Py_CLEAR(state->call_name);
    Py_CLEAR(state->augment_name);
    for (int i = 0; i < N_INPLACE; i++)
        Py_CLEAR(state->inplace[i]);
    Py_CLEAR(state->verdicts);
    Py_CLEAR(state->done);
    Py_CLEAR(state->held_type);
    Py_CLEAR(state->proxy_type);
    Py_CLEAR(state->getitem_name);
    Py_CLEAR(state->getattr_name);
    Py_CLEAR(state->own_prefix);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(load_attr, copy, extended_arg, verdicts, done): the running Python's opcodes, "
     "which tell a plain attribute read from the start of an augmented assignment, the "
     "detector's cache of verdicts and the marker of an applied one; configure(None): send "
     "every read to the slow path's detector."},
    {"configure_items", (PyCFunction)configure_items, METH_O,
     "configure_items(binary_subscr): the running Python's opcode of `x[k]`, for the reads "
     "of proxy items (with configure's); configure_items(None): every proxy[key] to Python."},
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
