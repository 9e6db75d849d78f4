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

typedef struct {
    PyTypeObject *control_type;
    PyTypeObject *entry_type;
    PyTypeObject *reader_type;
    PyTypeObject *share_type;
    PyObject *slow_name; /* "_accord_slow": the Python slow path */
    int configured;      /* opcodes known (the running Python's bytecode is recognised) */
    int load_attr, copy, extended_arg;
    int binary_subscr;       /* -1 until configure_items(): every proxy[key] to Python */
    PyTypeObject *held_type; /* reads of items and attributes (ProxyBase) */
    PyTypeObject *proxy_type;
    PyObject *getitem_name; /* "_accord_getitem", "_accord_getattr": ProxyBase's slow paths */
    PyObject *getattr_name;
    PyObject *own_prefix; /* "_accord_" */
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
    self->epoch = new_epoch();
    PyDict_Clear(self->entries);
    Py_RETURN_NONE;
}

static PyObject *
control_close(Control *self, PyObject *unused)
{
    self->epoch = new_epoch();
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

static State *
proxy_state(PyTypeObject *type)
{
    PyObject *module = PyType_GetModuleByDef(type, &module_def);
    return module == NULL ? NULL : PyModule_GetState(module);
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
    State *state = proxy_state(type);
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
    State *state = proxy_state(Py_TYPE(self));
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
        State *state = proxy_state(Py_TYPE(self));
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
    State *state = proxy_state(Py_TYPE(self));
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
    State *state = proxy_state(Py_TYPE(self));
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
    if (state->slow_name == NULL)
        return -1;
    if ((state->getitem_name = PyUnicode_InternFromString("_accord_getitem")) == NULL ||
        (state->getattr_name = PyUnicode_InternFromString("_accord_getattr")) == NULL ||
        (state->own_prefix = PyUnicode_InternFromString("_accord_")) == NULL)
        return -1;
    if (add_type(module, &entry_spec, NULL, &state->entry_type) < 0 ||
        add_type(module, &control_spec, NULL, &state->control_type) < 0 ||
        add_type(module, &reader_spec, NULL, &state->reader_type) < 0 ||
        add_type(module, &share_spec, NULL, &state->share_type) < 0 ||
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
    Py_VISIT(state->slow_name);
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
    Py_CLEAR(state->slow_name);
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
     "configure(load_attr, copy, extended_arg): the running Python's opcodes, which tell a "
     "plain attribute read from the start of an augmented assignment; configure(None): "
     "send every read to the slow path's detector."},
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
