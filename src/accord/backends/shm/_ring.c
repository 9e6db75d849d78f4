/* Single-producer / single-consumer command rings in shared memory.
 *
 * Why C: an append must cost a copy and two release stores, with no system
 * call, and it must be ordered for another process: Python has no atomics
 * with release/acquire semantics, and a torn or reordered header would let
 * the consumer see half an entry.
 *
 * A ring occupies `RING_DATA + capacity` bytes at offset `base` of a writable
 * buffer (a shared mapping); capacity is a multiple of 8.  Header fields are
 * 64-bit, each on its own cache line so producer and consumer do not share one:
 *
 *   base +   0  magic            RING_MAGIC once ring_init has run
 *   base +   8  capacity         bytes of the data area
 *   base +  64  head             bytes ever published by the producer; its top
 *                                bit (HEAD_CLOSED) closes the ring for good
 *   base + 128  tail             bytes ever committed by the consumer
 *   base + 136  drained          bytes the consumer has read (ring_drain
 *                                stores it; ring_send's lazy wake-up reads it)
 *   base + 192  room bell: a producer waiting for room (u32), its sequence (u32)
 *   base + 224  free for the caller: _rings.py keeps there the doorbell of a
 *               consumer that sleeps on this ring alone (a client's replies)
 *   base + 256  data
 *
 * head and tail only grow; `pos % capacity` is where an entry starts.  An
 * entry is an 8-byte header -- length (low 32 bits) and a marker (high 32
 * bits) -- then the payload, padded to 8 bytes.  It never wraps: when it does
 * not fit before the end of the data area, a WRAP header fills the rest.
 *
 * Durability: the producer writes the payload, then the header with its
 * commit marker, then head, each store with release ordering.  A producer
 * killed at any instant has published either the whole entry or nothing:
 * the consumer reads only below head (acquire).
 *
 * Closing: `ring_close` sets HEAD_CLOSED in head (an atomic or), and the
 * producer publishes with a compare-and-swap of head that fails once it is
 * set.  So after ring_close returns, the ring holds exactly the entries below
 * the head it returned: an append either published before (and the closer
 * sees it) or reports the ring closed (and its caller sends elsewhere).
 * restart() closes a dead coordinator's rings before it collects them.
 *
 * Sleep and wake (a "doorbell", two u32 at an 8-byte aligned offset of any
 * shared buffer: sleeping, then a sequence): the consumer takes the
 * sequence, raises `sleeping`, checks every ring once more, and sleeps on
 * the sequence with a futex only then; a producer that sees `sleeping`
 * after publishing bumps the sequence and wakes it.  Both sides use
 * sequentially consistent operations on those words, so either the consumer
 * sees the new head or the producer sees it sleeping: no lost wake-up, and no
 * system call at all while the consumer is awake.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "_shmargs.h"

#define RING_MAGIC 0x676E6972726F6361ULL /* "acorring" */
#define OFF_MAGIC 0
#define OFF_CAPACITY 8
#define OFF_HEAD 64
#define OFF_TAIL 128
#define OFF_DRAINED 136
#define OFF_SPACE 192
#define RING_DATA 256
#define HEAD_CLOSED (1ULL << 63)

#define MARK_COMMIT 0xACC0DE00u
#define MARK_WRAP 0xACF00D00u
/* An entry's flag (0..255) is OR-ed into the low byte of its marker, which
 * is 0 in both marks. */
#define FLAG_MASK 0xFFu

/* A ring argument: the view of its buffer (held), the ring, its capacity. */
typedef struct {
    Py_buffer view;
    char *ring;
    uint64_t cap;
} Ring;

/* The ring at `base` of view, checked: returns its data pointer and
 * capacity, or NULL with an exception. */
static char *
ring_at(Py_buffer *view, Py_ssize_t base, uint64_t *capacity)
{
    if (base < 0 || base % 64 != 0 || base + RING_DATA > view->len) {
        PyErr_Format(PyExc_IndexError, "no ring at offset %zd", base);
        return NULL;
    }
    char *ring = (char *)view->buf + base;
    if (__atomic_load_n((uint64_t *)(ring + OFF_MAGIC), __ATOMIC_ACQUIRE) != RING_MAGIC) {
        PyErr_Format(PyExc_ValueError, "no initialised ring at offset %zd", base);
        return NULL;
    }
    uint64_t cap = *(uint64_t *)(ring + OFF_CAPACITY);
    if (cap == 0 || cap % 8 != 0 || (uint64_t)base + RING_DATA + cap > (uint64_t)view->len) {
        PyErr_Format(PyExc_ValueError, "corrupt ring header at offset %zd", base);
        return NULL;
    }
    *capacity = cap;
    return ring;
}

/* Take a writable view of `buffer` and find the ring at `base` (an int) in
 * it: 1, or 0 with an exception and no view held. */
static int
ring_open(Ring *r, PyObject *buffer, PyObject *base)
{
    Py_ssize_t at = PyLong_AsSsize_t(base);
    if (at == -1 && PyErr_Occurred())
        return 0;
    if (writable_view(buffer, &r->view) < 0)
        return 0;
    r->ring = ring_at(&r->view, at, &r->cap);
    if (r->ring == NULL) {
        PyBuffer_Release(&r->view);
        return 0;
    }
    return 1;
}

static inline uint64_t *
head_of(char *ring)
{
    return (uint64_t *)(ring + OFF_HEAD);
}

/* The published position (head without its closed bit). */
static inline uint64_t
head_at(char *ring, int order)
{
    return __atomic_load_n(head_of(ring), order) & ~HEAD_CLOSED;
}

static inline uint64_t *
tail_of(char *ring)
{
    return (uint64_t *)(ring + OFF_TAIL);
}

static inline uint64_t
padded(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

/* Bytes to skip (a WRAP) before an entry of `need` bytes at `head`. */
static inline uint64_t
wrap_skip(uint64_t head, uint64_t cap, uint64_t need)
{
    uint64_t at = head % cap;
    return cap - at < need ? cap - at : 0;
}

static long
futex(uint32_t *word, int op, uint32_t value, const struct timespec *timeout)
{
    return syscall(SYS_futex, word, op, value, timeout, NULL, 0);
}

/* The doorbell's first word: how the consumer sleeps, if it does. */
#define AWAKE 0
#define SLEEPS_ON_FUTEX 1
#define SLEEPS_ON_SELECT 2 /* in select() on its sockets: the producer wakes it there */

/* Wake whoever sleeps on the doorbell at bell[0..1], if it says it sleeps;
 * returns how it slept.  The first caller to see it asleep marks it awake
 * (compare-and-swap) and wakes it; callers after that, before it has even
 * run, see it awake: one wake-up per sleep, however many producers append. */
static uint32_t
ring_bell(uint32_t *bell)
{
    uint32_t how = __atomic_load_n(&bell[0], __ATOMIC_SEQ_CST);
    if (how == AWAKE)
        return AWAKE;
    if (!__atomic_compare_exchange_n(&bell[0], &how, AWAKE, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST))
        return AWAKE; /* another producer is waking it */
    __atomic_fetch_add(&bell[1], 1, __ATOMIC_SEQ_CST);
    if (how == SLEEPS_ON_FUTEX)
        futex(&bell[1], FUTEX_WAKE, INT_MAX, NULL);
    return how;
}

/* Sleep on `word` while it holds `expected`, at most `seconds` (< 0: no
 * limit).  Returns 0 when woken or the word changed, 1 on timeout. */
static int
sleep_on(uint32_t *word, uint32_t expected, double seconds)
{
    struct timespec ts, *tp = NULL;
    if (seconds >= 0) {
        ts.tv_sec = (time_t)seconds;
        ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
        tp = &ts;
    }
    long rc;
    Py_BEGIN_ALLOW_THREADS
    rc = futex(word, FUTEX_WAIT, expected, tp);
    Py_END_ALLOW_THREADS
    return rc == -1 && errno == ETIMEDOUT;
}

/* ring_init(buffer, base, size): make an empty ring of `size` bytes in all
 * (header included) at base.  Only while nobody else uses that ring. */
static PyObject *
ring_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    if (!nargs_ok(nargs, 3, -1, "ring_init(buffer, base, size)"))
        return NULL;
    Py_ssize_t base = PyLong_AsSsize_t(args[1]);
    Py_ssize_t size = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (writable_view(args[0], &view) < 0)
        return NULL;
    if (base < 0 || base % 64 != 0 || size < RING_DATA + 64 || size % 16 != 0 ||
        base + size > view.len || size - RING_DATA > (Py_ssize_t)UINT32_MAX) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "cannot place a ring of %zd bytes at %zd", size, base);
        return NULL;
    }
    char *ring = (char *)view.buf + base;
    memset(ring, 0, RING_DATA);
    *(uint64_t *)(ring + OFF_CAPACITY) = (uint64_t)(size - RING_DATA);
    __atomic_store_n((uint64_t *)(ring + OFF_MAGIC), RING_MAGIC, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* The largest payload an append takes: half the ring, so that an entry
 * always fits once the consumer has caught up, wherever head is. */
static PyObject *
ring_max_entry(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Ring r;
    if (!nargs_ok(nargs, 2, -1, "ring_max_entry(buffer, base)") || !ring_open(&r, args[0], args[1]))
        return NULL;
    PyBuffer_Release(&r.view);
    return PyLong_FromUnsignedLongLong(r.cap / 2 - 8);
}

/* Stop points of an append, for tests that kill a producer mid-append. */
enum { STOP_NONE = 0, STOP_AFTER_PAYLOAD = 1, STOP_AFTER_HEADER = 2 };

/* Room for an entry of `len` payload bytes in the ring now?  1 yes, 0 no,
 * -1 closed.  Sets *head (without the closed bit), *skip (a WRAP before it)
 * and *need (its size, header included). */
static int
has_room(Ring *r, uint64_t len, uint64_t *head, uint64_t *skip, uint64_t *need)
{
    /* Ours alone but for the closed bit: acquire pairs with ring_close. */
    uint64_t raw = __atomic_load_n(head_of(r->ring), __ATOMIC_ACQUIRE);
    if (raw & HEAD_CLOSED)
        return -1;
    *head = raw;
    uint64_t tail = __atomic_load_n(tail_of(r->ring), __ATOMIC_ACQUIRE);
    *need = 8 + padded(len);
    *skip = wrap_skip(raw, r->cap, *need);
    return raw + *skip + *need - tail <= r->cap;
}

/* Publish an entry for which has_room() said yes: the payload (with the 8
 * bytes at `patch_at`, if >= 0, replaced by `patch` little-endian), then
 * its header, then head -- by compare-and-swap, which fails only if
 * ring_close set the closed bit since: then nothing is published.  Returns
 * the new head; 0 when closed meanwhile, or told to stop half-way (tests:
 * `*stopped` is then set). */
static uint64_t
publish(Ring *r, const char *data, uint64_t len, uint32_t flag, Py_ssize_t patch_at,
        uint64_t patch, uint64_t head, uint64_t skip, uint64_t need, long stop, int *stopped)
{
    char *area = r->ring + RING_DATA;
    uint64_t at = head % r->cap;
    if (skip) {
        /* Visible only once head moves past it, with the entry. */
        __atomic_store_n((uint64_t *)(area + at), (uint64_t)MARK_WRAP << 32, __ATOMIC_RELEASE);
        at = 0;
    }
    memcpy(area + at + 8, data, (size_t)len);
    if (patch_at >= 0) {
        unsigned char *word = (unsigned char *)area + at + 8 + patch_at;
        for (int i = 0; i < 8; i++)
            word[i] = (unsigned char)(patch >> (8 * i));
    }
    *stopped = stop == STOP_AFTER_PAYLOAD;
    if (*stopped)
        return 0;
    __atomic_store_n((uint64_t *)(area + at), len | ((uint64_t)(MARK_COMMIT | flag) << 32),
                     __ATOMIC_RELEASE);
    *stopped = stop == STOP_AFTER_HEADER;
    if (*stopped)
        return 0;
    uint64_t expected = head;
    if (!__atomic_compare_exchange_n(head_of(r->ring), &expected, head + skip + need, 0,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        return 0;
    return head + skip + need;
}

/* ring_append(buffer, base, data, flag, bell_buffer, bell_offset[, stop])
 *   -> 0 when the ring has no room now, 1 when appended, 2 when appended and
 *   the consumer sleeps in select(): the caller wakes it there; -1 when the
 *   ring is closed (nothing appended).
 * Single producer: one process (and one thread at a time) per ring. */
static PyObject *
ring_append(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Ring r;
    Py_buffer data, bell_view;
    if (!nargs_ok(nargs, 6, 7, "ring_append(buffer, base, data, flag, bell_buffer, bell_offset)"))
        return NULL;
    long flag = PyLong_AsLong(args[3]);
    long stop = nargs == 7 ? PyLong_AsLong(args[6]) : STOP_NONE;
    if (PyErr_Occurred())
        return NULL;
    if (flag < 0 || flag > (long)FLAG_MASK) {
        PyErr_SetString(PyExc_ValueError, "flag must be 0..255");
        return NULL;
    }
    if (!ring_open(&r, args[0], args[1]))
        return NULL;
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&r.view);
        return NULL;
    }
    PyObject *result = NULL;
    uint32_t *bell = (uint32_t *)open_word(args[4], args[5], &bell_view);
    if (bell == NULL)
        goto no_bell;
    if ((uint64_t)data.len > r.cap / 2 - 8) {
        PyErr_Format(PyExc_ValueError,
                     "an entry of %zd bytes does not fit a ring of %llu (spill it)", data.len,
                     (unsigned long long)r.cap);
        goto done;
    }
    uint64_t head, skip, need;
    int room = has_room(&r, (uint64_t)data.len, &head, &skip, &need), stopped;
    if (room <= 0)
        result = PyLong_FromLong(room); /* 0: no room, -1: closed */
    else if (publish(&r, data.buf, (uint64_t)data.len, (uint32_t)flag, -1, 0, head, skip, need,
                     stop, &stopped))
        result = PyLong_FromLong(ring_bell(bell) == SLEEPS_ON_SELECT ? 2 : 1);
    else
        result = PyLong_FromLong(stopped ? 1 : -1); /* stopped half-way (tests), or closed */
done:
    PyBuffer_Release(&bell_view);
no_bell:
    PyBuffer_Release(&data);
    PyBuffer_Release(&r.view);
    return result;
}

/* The most write flags one command raises (_core/_slots.MAX_WRITE_SLOTS is
 * smaller; the intent record has room for that many). */
#define MAX_WRITES 64

/* The body of ring_send and Sender.send, arguments checked: record the
 * intent at `record` (seq, mask, count, slots), raise each flag after its
 * mask bit, publish `data` with the first flag's old count patched in at
 * `patch_at`, ring the consumer's bell unless `lazy` says not yet.
 * Returns -1 (no room: nothing done), -2 (closed: nothing published), or 0
 * with *sent = old * 4 + how (how: 1, or 2 when the consumer sleeps in
 * select()). */
static int
send_entry(Ring *r, uint64_t *record, const Py_ssize_t *slots, uint64_t **flags, Py_ssize_t count,
           uint64_t seq, const char *data, uint64_t len, Py_ssize_t patch_at, uint32_t *bell,
           Py_ssize_t lazy, long stop, uint64_t *sent)
{
    uint64_t head, skip, need;
    int room = has_room(r, len, &head, &skip, &need), stopped;
    if (room <= 0)
        return room < 0 ? -2 : -1;
    /* The intent before each flag (see ShmClient.send for why this order). */
    __atomic_store_n(&record[0], seq, __ATOMIC_RELAXED);
    __atomic_store_n(&record[1], 1, __ATOMIC_RELAXED);
    __atomic_store_n(&record[2], (uint64_t)count, __ATOMIC_RELAXED);
    for (Py_ssize_t i = 0; i < count; i++)
        __atomic_store_n(&record[3 + i], (uint64_t)slots[i], __ATOMIC_RELAXED);
    uint64_t old = __atomic_fetch_add(flags[0], 1, __ATOMIC_SEQ_CST);
    for (Py_ssize_t i = 1; i < count; i++) {
        __atomic_store_n(&record[1], ((uint64_t)2 << i) - 1, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(flags[i], 1, __ATOMIC_SEQ_CST);
    }
    uint64_t end = publish(r, data, len, 0, patch_at, old, head, skip, need, stop, &stopped);
    if (!end && !stopped)
        return -2; /* closed meanwhile: not published */
    int how = 1;
    uint64_t drained = __atomic_load_n((uint64_t *)(r->ring + OFF_DRAINED), __ATOMIC_SEQ_CST);
    if (end && !(lazy > 0 && end - drained < (uint64_t)lazy))
        how = ring_bell(bell) == SLEEPS_ON_SELECT ? 2 : 1;
    *sent = old * 4 + (uint64_t)how;
    return 0;
}

/* ring_send(control, intent, pending, seq, writes, payload, patch_at,
 *           buffer, base, bell_buffer, bell_offset, lazy[, stop]) -> int
 *
 * A fire-and-forget write, whole: record the intent (seq, mask, count,
 * slots: 8-byte words at `intent` of `control`), raise each write flag (the
 * 8-byte counter at pending + 8 * slot) after its mask bit, and append
 * `payload` with its 8 bytes at `patch_at` replaced by the first flag's
 * count before this write (the command's wait), in one call: the steps of
 * _client.ShmClient.send, in its order, without a Python call between.
 *
 * Returns -1 without touching anything when the ring has no room (the
 * caller takes the path that waits); -2 when the ring is closed (nothing
 * appended; the flags raised if it closed during the call, as when an
 * append reports it closed); else old * 4 + how: how is 1, or 2 when the
 * consumer sleeps in select() and the caller must wake it there.
 * `lazy` > 0: a sleeping consumer is not woken while the ring holds fewer
 * than `lazy` bytes beyond what it has drained (a fire-and-forget write
 * needs nobody now: a reader that needs it waits for its flag, and that
 * wakes the consumer; it looks at every ring at its heartbeat anyway). */
static PyObject *
ring_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Ring r;
    Py_buffer control, data, bell_view;
    if (!nargs_ok(nargs, 12, 13,
                  "ring_send(control, intent, pending, seq, writes, payload, patch_at, buffer, "
                  "base, bell_buffer, bell_offset, lazy)"))
        return NULL;
    Py_ssize_t intent = PyLong_AsSsize_t(args[1]);
    Py_ssize_t pending = PyLong_AsSsize_t(args[2]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[3]);
    Py_ssize_t patch_at = PyLong_AsSsize_t(args[6]);
    Py_ssize_t lazy = PyLong_AsSsize_t(args[11]);
    long stop = nargs == 13 ? PyLong_AsLong(args[12]) : STOP_NONE;
    if (PyErr_Occurred())
        return NULL;
    PyObject *writes = args[4];
    if (!PyTuple_Check(writes) || PyTuple_GET_SIZE(writes) < 1 ||
        PyTuple_GET_SIZE(writes) > MAX_WRITES) {
        PyErr_SetString(PyExc_ValueError, "writes: a tuple of 1 to 64 flag slots");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(writes);
    Py_ssize_t slots[MAX_WRITES];
    for (Py_ssize_t i = 0; i < count; i++) {
        slots[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(writes, i));
        if (slots[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    if (writable_view(args[0], &control) < 0)
        return NULL;
    PyObject *result = NULL;
    uint64_t *record = word_in(&control, intent);
    if (record == NULL)
        goto no_ring;
    if (intent + 8 * (3 + count) > control.len) {
        PyErr_SetString(PyExc_IndexError, "the intent record does not fit the control buffer");
        goto no_ring;
    }
    uint64_t *flags[MAX_WRITES];
    for (Py_ssize_t i = 0; i < count; i++) {
        if (slots[i] < 0 || (flags[i] = word_in(&control, pending + 8 * slots[i])) == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_IndexError, "no flag slot %zd", slots[i]);
            goto no_ring;
        }
    }
    if (!ring_open(&r, args[7], args[8]))
        goto no_ring;
    if (PyObject_GetBuffer(args[5], &data, PyBUF_SIMPLE) < 0)
        goto no_data;
    uint32_t *bell = (uint32_t *)open_word(args[9], args[10], &bell_view);
    if (bell == NULL)
        goto no_bell;
    if ((uint64_t)data.len > r.cap / 2 - 8 || patch_at < 0 || patch_at + 8 > data.len) {
        PyErr_Format(PyExc_ValueError, "an entry of %zd bytes (patched at %zd) does not fit",
                     data.len, patch_at);
        goto done;
    }
    uint64_t sent = 0;
    int status = send_entry(&r, record, slots, flags, count, seq, data.buf, (uint64_t)data.len,
                            patch_at, bell, lazy, stop, &sent);
    result = status < 0 ? PyLong_FromLong(status) : PyLong_FromUnsignedLongLong(sent);
done:
    PyBuffer_Release(&bell_view);
no_bell:
    PyBuffer_Release(&data);
no_data:
    PyBuffer_Release(&r.view);
no_ring:
    PyBuffer_Release(&control);
    return result;
}

/* ring_drain(buffer, base, position, max_bytes) -> (entries, new position)
 * Entries published from `position` on (at most about max_bytes of them):
 * bytes for an entry of flag 0, (flag, bytes) otherwise.  Consumer only. */
static PyObject *
ring_drain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Ring r;
    if (!nargs_ok(nargs, 4, -1, "ring_drain(buffer, base, position, max_bytes)"))
        return NULL;
    unsigned long long pos = PyLong_AsUnsignedLongLong(args[2]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred() || !ring_open(&r, args[0], args[1]))
        return NULL;
    PyObject *entries = NULL, *item = NULL;
    uint64_t cap = r.cap;
    uint64_t head = head_at(r.ring, __ATOMIC_ACQUIRE);
    uint64_t tail = __atomic_load_n(tail_of(r.ring), __ATOMIC_ACQUIRE);
    if (pos < tail || pos > head || head - tail > cap) {
        PyErr_Format(PyExc_ValueError, "position %llu is outside the ring (%llu..%llu)", pos,
                     (unsigned long long)tail, (unsigned long long)head);
        goto fail;
    }
    entries = PyList_New(0);
    if (entries == NULL)
        goto fail;
    char *area = r.ring + RING_DATA;
    uint64_t taken = 0;
    while (pos < head && (Py_ssize_t)taken < max_bytes) {
        uint64_t at = pos % cap;
        uint64_t header = __atomic_load_n((uint64_t *)(area + at), __ATOMIC_ACQUIRE);
        uint32_t mark = (uint32_t)(header >> 32);
        uint64_t length = header & 0xFFFFFFFFu;
        if (mark == MARK_WRAP) {
            pos += cap - at;
            continue;
        }
        if ((mark & ~FLAG_MASK) != MARK_COMMIT || at + 8 + length > cap ||
            pos + 8 + padded(length) > head) {
            PyErr_Format(PyExc_RuntimeError,
                         "corrupt ring entry at position %llu (header %llu): the ring "
                         "was written by something other than its producer",
                         pos, (unsigned long long)header);
            goto fail;
        }
        item = PyBytes_FromStringAndSize(area + at + 8, (Py_ssize_t)length);
        if (item == NULL)
            goto fail;
        if (mark & FLAG_MASK) {
            PyObject *pair = Py_BuildValue("(IN)", mark & FLAG_MASK, item);
            item = pair;
            if (item == NULL)
                goto fail;
        }
        if (PyList_Append(entries, item) < 0)
            goto fail;
        Py_CLEAR(item);
        pos += 8 + padded(length);
        taken += 8 + length;
    }
    /* For ring_send's lazy wake-up: what the consumer has read. */
    __atomic_store_n((uint64_t *)(r.ring + OFF_DRAINED), (uint64_t)pos, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&r.view);
    return Py_BuildValue("(NK)", entries, pos);
fail:
    Py_XDECREF(item);
    Py_XDECREF(entries);
    PyBuffer_Release(&r.view);
    return NULL;
}

/* ring_commit(buffer, base, position): everything before `position` is
 * applied and may be overwritten; wakes a producer waiting for room. */
static PyObject *
ring_commit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Ring r;
    if (!nargs_ok(nargs, 3, -1, "ring_commit(buffer, base, position)"))
        return NULL;
    unsigned long long pos = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred() || !ring_open(&r, args[0], args[1]))
        return NULL;
    uint64_t head = head_at(r.ring, __ATOMIC_ACQUIRE);
    uint64_t *tailp = tail_of(r.ring);
    if (pos < __atomic_load_n(tailp, __ATOMIC_RELAXED) || pos > head) {
        PyBuffer_Release(&r.view);
        PyErr_Format(PyExc_ValueError, "cannot commit position %llu", pos);
        return NULL;
    }
    __atomic_store_n(tailp, (uint64_t)pos, __ATOMIC_SEQ_CST);
    ring_bell((uint32_t *)(r.ring + OFF_SPACE));
    PyBuffer_Release(&r.view);
    Py_RETURN_NONE;
}

/* ring_state(buffer, base) -> (head, tail, capacity) */
static PyObject *
ring_state(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Ring r;
    if (!nargs_ok(nargs, 2, -1, "ring_state(buffer, base)") || !ring_open(&r, args[0], args[1]))
        return NULL;
    uint64_t head = head_at(r.ring, __ATOMIC_ACQUIRE);
    uint64_t tail = __atomic_load_n(tail_of(r.ring), __ATOMIC_ACQUIRE);
    PyBuffer_Release(&r.view);
    return Py_BuildValue("(KKK)", head, tail, r.cap);
}

/* ring_close(buffer, base) -> head: no append succeeds after this; the
 * ring holds exactly the entries below the returned head.  Wakes a
 * producer waiting for room (it then finds the ring closed). */
static PyObject *
ring_close(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Ring r;
    if (!nargs_ok(nargs, 2, -1, "ring_close(buffer, base)") || !ring_open(&r, args[0], args[1]))
        return NULL;
    uint64_t head = __atomic_fetch_or(head_of(r.ring), HEAD_CLOSED, __ATOMIC_SEQ_CST);
    ring_bell((uint32_t *)(r.ring + OFF_SPACE));
    PyBuffer_Release(&r.view);
    return PyLong_FromUnsignedLongLong(head & ~HEAD_CLOSED);
}

/* ring_wait_space(buffer, base, need, seconds[, bell_buffer, bell_offset])
 * -> True if `need` payload bytes fit now, False after at most `seconds`
 * (the caller checks the consumer's liveness and its deadline between
 * calls).  With a bell: the consumer's doorbell, rung once this producer
 * says it waits for room and before it sleeps -- a consumer woken any
 * earlier could look for waiting producers before this one says so, and
 * sleep on without making room. */
static PyObject *
ring_wait_space(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Ring r;
    Py_buffer bell_view;
    uint32_t *consumer = NULL;
    if (!nargs_ok(nargs, 4, 6, "ring_wait_space(buffer, base, need, seconds)"))
        return NULL;
    Py_ssize_t size = PyLong_AsSsize_t(args[2]);
    double seconds = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred() || !ring_open(&r, args[0], args[1]))
        return NULL;
    if (nargs == 6) {
        consumer = (uint32_t *)open_word(args[4], args[5], &bell_view);
        if (consumer == NULL) {
            PyBuffer_Release(&r.view);
            return NULL;
        }
    }
    uint32_t *bell = (uint32_t *)(r.ring + OFF_SPACE); /* [waiting, sequence] */
    uint32_t *seq = &bell[1];
    uint64_t need = 8 + padded((uint64_t)size);
    uint64_t raw = __atomic_load_n(head_of(r.ring), __ATOMIC_ACQUIRE);
    int fits = 1; /* closed: nothing to wait for, the append says closed */
    if (!(raw & HEAD_CLOSED)) {
        uint64_t head = raw;
        uint64_t skip = wrap_skip(head, r.cap, need);
        uint32_t ticket = __atomic_load_n(seq, __ATOMIC_SEQ_CST);
        __atomic_store_n(&bell[0], SLEEPS_ON_FUTEX, __ATOMIC_SEQ_CST);
        uint64_t tail = __atomic_load_n(tail_of(r.ring), __ATOMIC_SEQ_CST);
        fits = head + skip + need - tail <= r.cap;
        if (!fits) {
            if (consumer != NULL && ring_bell(consumer) == SLEEPS_ON_SELECT)
                fits = -1; /* it sleeps in select(): the caller wakes it there */
            else {
                sleep_on(seq, ticket, seconds);
                tail = __atomic_load_n(tail_of(r.ring), __ATOMIC_SEQ_CST);
                fits = head + skip + need - tail <= r.cap;
            }
        }
        if (fits != -1)
            __atomic_store_n(&bell[0], AWAKE, __ATOMIC_SEQ_CST);
    }
    if (consumer != NULL)
        PyBuffer_Release(&bell_view);
    PyBuffer_Release(&r.view);
    return fits == -1 ? PyLong_FromLong(-1) : PyBool_FromLong(fits);
}

/* The consumer's side of a doorbell call: the doorbell (its view held) and
 * the view of the rings' buffer with `positions`, a dict {ring base:
 * drained position}. */
typedef struct {
    Py_buffer bell_view, view;
    uint32_t *bell;
    PyObject *positions;
} Watch;

/* Parse (bell_buffer, bell_offset, buffer, positions, ...): 1, or 0 with
 * an exception and no view held. */
static int
watch_open(Watch *w, PyObject *const *args)
{
    w->positions = args[3];
    if (!PyDict_Check(w->positions)) {
        PyErr_SetString(PyExc_TypeError, "positions: a dict {ring base: drained position}");
        return 0;
    }
    w->bell = (uint32_t *)open_word(args[0], args[1], &w->bell_view);
    if (w->bell == NULL)
        return 0;
    if (writable_view(args[2], &w->view) < 0) {
        PyBuffer_Release(&w->bell_view);
        return 0;
    }
    return 1;
}

static void
watch_close(Watch *w)
{
    PyBuffer_Release(&w->view);
    PyBuffer_Release(&w->bell_view);
}

/* 1 if a watched ring has an entry beyond its drained position, 0 if none,
 * -1 with an exception. */
static int
watch_pending(Watch *w)
{
    PyObject *key, *value;
    Py_ssize_t i = 0;
    while (PyDict_Next(w->positions, &i, &key, &value)) {
        Py_ssize_t base = PyLong_AsSsize_t(key);
        unsigned long long pos = PyLong_AsUnsignedLongLong(value);
        uint64_t cap;
        if (PyErr_Occurred())
            return -1;
        char *ring = ring_at(&w->view, base, &cap);
        if (ring == NULL)
            return -1;
        if (head_at(ring, __ATOMIC_SEQ_CST) != pos)
            return 1;
    }
    return 0;
}

/* The most rings a spin watches (a client's replies: one). */
#define SPIN_RINGS 8

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline double
monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Before sleeping: poll the watched rings for at most `seconds`, without
 * the GIL, while the doorbell `other` (the producer's own, if given) says
 * its owner is awake -- a reply from a running coordinator usually comes
 * within tens of microseconds, about what a futex sleep and wake-up cost.
 * Bounded: the caller sleeps with its deadline and liveness checks after.
 * 1 if a ring has input, 0 if not (spun out, the other side sleeps, or
 * more rings than a spin watches), -1 with an exception. */
static int
watch_spin(Watch *w, double seconds, uint32_t *other)
{
    char *rings[SPIN_RINGS];
    uint64_t positions[SPIN_RINGS];
    int count = 0;
    PyObject *key, *value;
    Py_ssize_t i = 0;
    if (seconds <= 0 || PyDict_GET_SIZE(w->positions) > SPIN_RINGS)
        return 0;
    while (PyDict_Next(w->positions, &i, &key, &value)) {
        Py_ssize_t base = PyLong_AsSsize_t(key);
        unsigned long long pos = PyLong_AsUnsignedLongLong(value);
        uint64_t cap;
        if (PyErr_Occurred())
            return -1;
        char *ring = ring_at(&w->view, base, &cap);
        if (ring == NULL)
            return -1;
        rings[count] = ring;
        positions[count++] = pos;
    }
    int found = 0;
    Py_BEGIN_ALLOW_THREADS
    double deadline = monotonic_s() + seconds;
    for (unsigned spins = 0;; spins++) {
        for (int k = 0; k < count && !found; k++)
            found = head_at(rings[k], __ATOMIC_ACQUIRE) != positions[k];
        if (found || (other != NULL && __atomic_load_n(&other[0], __ATOMIC_ACQUIRE) != AWAKE))
            break;
        if (spins % 16 == 15 && monotonic_s() >= deadline)
            break;
        /* The producer may wait for this very CPU (a loaded machine): let it
         * have it.  With nothing else runnable here this returns at once. */
        sched_yield();
    }
    Py_END_ALLOW_THREADS
    return found;
}

/* bell_sleep(bell_buffer, bell_offset, buffer, positions, seconds
 *            [, spin, other_buffer, other_offset]) -> bool
 * The consumer's sleep.  `positions` maps the base of every ring in buffer
 * to the position the consumer has drained it to.  Raises `sleeping`, then
 * sleeps at most `seconds` only if no ring has an entry beyond that
 * position.  Returns True if there may be input, False on timeout.
 * `spin` > 0: first poll for input that long at most, while the doorbell
 * at other_offset of other_buffer says the producer is awake (see
 * watch_spin). */
static PyObject *
bell_sleep(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Watch w;
    Py_buffer other_view;
    uint32_t *other = NULL;
    if (!nargs_ok(nargs, 5, 8, "bell_sleep(bell_buffer, bell_offset, buffer, positions, seconds)"))
        return NULL;
    double seconds = PyFloat_AsDouble(args[4]);
    double spin = nargs == 8 ? PyFloat_AsDouble(args[5]) : 0.0;
    if (PyErr_Occurred() || !watch_open(&w, args))
        return NULL;
    if (spin > 0) {
        other = (uint32_t *)open_word(args[6], args[7], &other_view);
        if (other == NULL) {
            watch_close(&w);
            return NULL;
        }
        int found = watch_spin(&w, spin, other);
        PyBuffer_Release(&other_view);
        if (found != 0) {
            watch_close(&w);
            return found < 0 ? NULL : PyBool_FromLong(1);
        }
    }
    uint32_t ticket = __atomic_load_n(&w.bell[1], __ATOMIC_SEQ_CST);
    __atomic_store_n(&w.bell[0], SLEEPS_ON_FUTEX, __ATOMIC_SEQ_CST);
    int pending = watch_pending(&w);
    if (pending == 0)
        pending = !sleep_on(&w.bell[1], ticket, seconds);
    __atomic_store_n(&w.bell[0], AWAKE, __ATOMIC_SEQ_CST);
    watch_close(&w);
    return pending < 0 ? NULL : PyBool_FromLong(pending);
}

/* bell_ring or bell_disarm (`disarm`) on the doorbell args[0..1]. */
static PyObject *
on_bell(PyObject *const *args, Py_ssize_t nargs, const char *signature, int disarm)
{
    Py_buffer view;
    if (!nargs_ok(nargs, 2, -1, signature))
        return NULL;
    uint32_t *bell = (uint32_t *)open_word(args[0], args[1], &view);
    if (bell == NULL)
        return NULL;
    if (disarm)
        __atomic_store_n(&bell[0], AWAKE, __ATOMIC_SEQ_CST);
    else
        ring_bell(bell);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* bell_ring(bell_buffer, bell_offset): wake the consumer if it sleeps. */
static PyObject *
bell_ring(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return on_bell(args, nargs, "bell_ring(bell_buffer, bell_offset)", 0);
}

/* bell_arm(bell_buffer, bell_offset, buffer, positions) -> bool
 * For a consumer about to sleep in select() on its sockets: says so in the
 * doorbell, then checks the rings as bell_sleep does.  False: armed, every
 * ring drained, sleep (a producer appending now sees the doorbell and wakes
 * you through your sockets); True: there is input, not armed. */
static PyObject *
bell_arm(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Watch w;
    if (!nargs_ok(nargs, 4, -1, "bell_arm(bell_buffer, bell_offset, buffer, positions)") ||
        !watch_open(&w, args))
        return NULL;
    __atomic_store_n(&w.bell[0], SLEEPS_ON_SELECT, __ATOMIC_SEQ_CST);
    int pending = watch_pending(&w);
    if (pending != 0)
        __atomic_store_n(&w.bell[0], AWAKE, __ATOMIC_SEQ_CST);
    watch_close(&w);
    return pending < 0 ? NULL : PyBool_FromLong(pending);
}

/* bell_disarm(bell_buffer, bell_offset): the consumer is awake again. */
static PyObject *
bell_disarm(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return on_bell(args, nargs, "bell_disarm(bell_buffer, bell_offset)", 1);
}


/* -- Sender: a client's fire-and-forget writes of one plain value, whole --
 *
 * `share.counter += 1` and `proxy.append(3)` are the commonest writes: one
 * command whose only varying part is one plain value.  A Sender holds the
 * views, offsets and counters `ring_send` takes as arguments, so that such a
 * write is one C call from the share's C code (_core/_fastread.c) with no
 * Python frame: `send(template, value)` encodes `value` as pickle opcodes
 * between the template's prefix and suffix (see `encode_value`), then does
 * what ring_send does.  It returns None -- nothing done, the caller takes the
 * Python path, which waits, spills, follows a restart or raises -- whenever
 * anything is not the common case: the sender closed, a gate closed (another
 * thread inside the client's send lock, errors waiting to be raised, the
 * client not registered as unsettled: `registry`, None until the share layer
 * sets it), the share closed or replaced, the ring
 * full, a value it does not encode.
 *
 * A template is (prefix, suffix, patch_at, writes): the pickle of the
 * command (op, 0, (writes[0], WAIT_MARK), writes, *fields, (VALUE,)) split
 * around VALUE's opcodes, without FRAME (optional in protocol 5); WAIT_MARK's
 * 8 bytes at `patch_at` get the ticket (see ring_send).  The entry is thus
 * the pickle the Python path sends, with the value encoded as pickle would
 * (no memo entry for it: nothing after it refers back).  WIRE.md: the layout.
 */

#define MAX_ENTRY 2048 /* larger: the Python path */

typedef struct {
    PyObject_HEAD
    Py_buffer control; /* obj NULL once closed */
    Py_buffer rings;
    Ring r;
    uint64_t *record;
    Py_ssize_t pending, closed, replaced, lazy;
    uint32_t *bell;
    uint64_t seq;
    long stop;          /* tests: STOP_AFTER_PAYLOAD or STOP_AFTER_HEADER, as ring_send's */
    PyObject *locked;   /* the send lock's `locked` method: busy, take the Python path */
    PyObject *deferred; /* a list: errors to raise first, take the Python path */
    PyObject *registry; /* None, or (dict, key): only while key is in dict */
    PyObject *wake;     /* called when the consumer sleeps in select() */
} Sender;

static int
sender_is_open(Sender *self)
{
    return self->control.obj != NULL;
}

static void
sender_release(Sender *self)
{
    if (self->control.obj != NULL) {
        PyBuffer_Release(&self->control);
        PyBuffer_Release(&self->rings);
    }
}

static int
sender_traverse(Sender *self, visitproc visit, void *arg)
{
    Py_VISIT(self->locked);
    Py_VISIT(self->deferred);
    Py_VISIT(self->registry);
    Py_VISIT(self->wake);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
sender_clear(Sender *self)
{
    Py_CLEAR(self->locked);
    Py_CLEAR(self->deferred);
    Py_CLEAR(self->registry);
    Py_CLEAR(self->wake);
    return 0;
}

static void
sender_dealloc(Sender *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    sender_release(self);
    sender_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
sender_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"control", "intent", "pending", "closed", "replaced", "buffer",
                            "base", "bell", "lazy", "lock", "deferred", "wake", NULL};
    PyObject *control, *buffer, *base, *lock, *deferred, *wake;
    Py_ssize_t intent, pending, closed, replaced, bell, lazy;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnnnnOOnnOO!O:Sender", names, &control,
                                     &intent, &pending, &closed, &replaced, &buffer, &base, &bell,
                                     &lazy, &lock, &PyList_Type, &deferred, &wake))
        return NULL;
    Sender *self = (Sender *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->locked = PyObject_GetAttrString(lock, "locked");
    if (self->locked == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->deferred = Py_NewRef(deferred);
    self->registry = Py_NewRef(Py_None);
    self->wake = Py_NewRef(wake);
    if (writable_view(control, &self->control) < 0) {
        self->control.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    if (!ring_open(&self->r, buffer, base)) {
        PyBuffer_Release(&self->control);
        Py_DECREF(self);
        return NULL;
    }
    self->rings = self->r.view;
    Py_ssize_t words[] = {intent, closed, replaced, bell};
    Py_buffer *views[] = {&self->control, &self->control, &self->control, &self->rings};
    for (int i = 0; i < 4; i++) {
        if (word_in(views[i], words[i]) == NULL) {
            sender_release(self);
            Py_DECREF(self);
            return NULL;
        }
    }
    if (intent + 8 * (3 + MAX_WRITES) > self->control.len || pending < 0 || pending % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "the intent record or the flags do not fit");
        sender_release(self);
        Py_DECREF(self);
        return NULL;
    }
    self->record = (uint64_t *)((char *)self->control.buf + intent);
    self->pending = pending;
    self->closed = closed;
    self->replaced = replaced;
    self->bell = (uint32_t *)((char *)self->rings.buf + bell);
    self->lazy = lazy;
    return (PyObject *)self;
}

/* Append the pickle opcodes of `value` (exact None, bool, int of 64 bits,
 * float, str, bytes) at out: the bytes written, or -1 for a value this
 * does not encode (no exception set). */
static Py_ssize_t
encode_value(PyObject *value, char *out, Py_ssize_t room)
{
    if (room < 16)
        return -1;
    if (value == Py_None) {
        out[0] = 'N';
        return 1;
    }
    if (value == Py_True || value == Py_False) {
        out[0] = value == Py_True ? '\x88' : '\x89';
        return 1;
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;
        }
        if (v >= 0 && v < 256) {
            out[0] = 'K'; /* BININT1 */
            out[1] = (char)v;
            return 2;
        }
        if (v >= INT32_MIN && v <= INT32_MAX) {
            out[0] = 'J'; /* BININT, little-endian signed */
            uint32_t u = (uint32_t)(int32_t)v;
            for (int i = 0; i < 4; i++)
                out[1 + i] = (char)(u >> (8 * i));
            return 5;
        }
        out[0] = '\x8a'; /* LONG1: 8 bytes, two's complement, little-endian */
        out[1] = 8;
        uint64_t u = (uint64_t)v;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (char)(u >> (8 * i));
        return 10;
    }
    if (PyFloat_CheckExact(value)) {
        out[0] = 'G'; /* BINFLOAT: big-endian double */
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), out + 1, 0) < 0) {
            PyErr_Clear();
            return -1;
        }
        return 9;
    }
    const char *data;
    Py_ssize_t len;
    char op_short, op_long;
    if (PyUnicode_CheckExact(value)) {
        data = PyUnicode_AsUTF8AndSize(value, &len);
        if (data == NULL) { /* lone surrogates: pickle escapes them, the Python path */
            PyErr_Clear();
            return -1;
        }
        op_short = '\x8c'; /* SHORT_BINUNICODE */
        op_long = 'X';     /* BINUNICODE */
    }
    else if (PyBytes_CheckExact(value)) {
        data = PyBytes_AS_STRING(value);
        len = PyBytes_GET_SIZE(value);
        op_short = 'C'; /* SHORT_BINBYTES */
        op_long = 'B';  /* BINBYTES */
    }
    else
        return -1;
    if (len + 5 > room)
        return -1;
    if (len < 256) {
        out[0] = op_short;
        out[1] = (char)len;
        memcpy(out + 2, data, (size_t)len);
        return 2 + len;
    }
    out[0] = op_long;
    for (int i = 0; i < 4; i++)
        out[1 + i] = (char)((uint32_t)len >> (8 * i));
    memcpy(out + 5, data, (size_t)len);
    return 5 + len;
}

/* Sender.send(template, value) -> None (nothing done: take the Python
 * path), or old * 4 + how as ring_send returns. */
static PyObject *
sender_send(Sender *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(template, value)");
        return NULL;
    }
    if (!sender_is_open(self) || PyList_GET_SIZE(self->deferred) != 0)
        Py_RETURN_NONE;
    const char *ctrl = self->control.buf;
    if (__atomic_load_n((uint64_t *)(ctrl + self->closed), __ATOMIC_SEQ_CST) ||
        __atomic_load_n((uint64_t *)(ctrl + self->replaced), __ATOMIC_SEQ_CST))
        Py_RETURN_NONE; /* the Python path says why */
    if (self->registry == Py_None)
        Py_RETURN_NONE; /* not armed yet */
    int in = PyDict_Contains(PyTuple_GET_ITEM(self->registry, 0),
                             PyTuple_GET_ITEM(self->registry, 1));
    if (in <= 0)
        return in < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *template = args[0];
    if (!PyTuple_CheckExact(template) || PyTuple_GET_SIZE(template) != 4) {
        PyErr_SetString(PyExc_TypeError, "template: (prefix, suffix, patch_at, writes)");
        return NULL;
    }
    PyObject *prefix = PyTuple_GET_ITEM(template, 0), *suffix = PyTuple_GET_ITEM(template, 1);
    PyObject *writes = PyTuple_GET_ITEM(template, 3);
    if (!PyBytes_CheckExact(prefix) || !PyBytes_CheckExact(suffix) || !PyTuple_CheckExact(writes) ||
        PyTuple_GET_SIZE(writes) < 1 || PyTuple_GET_SIZE(writes) > MAX_WRITES) {
        PyErr_SetString(PyExc_TypeError, "template: (bytes, bytes, int, tuple of 1-64 slots)");
        return NULL;
    }
    Py_ssize_t patch_at = PyLong_AsSsize_t(PyTuple_GET_ITEM(template, 2));
    if (patch_at == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t plen = PyBytes_GET_SIZE(prefix), slen = PyBytes_GET_SIZE(suffix);
    if (patch_at < 0 || patch_at + 8 > plen) {
        PyErr_SetString(PyExc_ValueError, "template: the ticket is not in the prefix");
        return NULL;
    }
    char entry[MAX_ENTRY];
    if (plen + slen >= MAX_ENTRY)
        Py_RETURN_NONE;
    memcpy(entry, PyBytes_AS_STRING(prefix), (size_t)plen);
    Py_ssize_t vlen = encode_value(args[1], entry + plen, MAX_ENTRY - plen - slen);
    if (vlen < 0)
        Py_RETURN_NONE;
    memcpy(entry + plen + vlen, PyBytes_AS_STRING(suffix), (size_t)slen);
    Py_ssize_t len = plen + vlen + slen;
    if ((uint64_t)len > self->r.cap / 2 - 8)
        Py_RETURN_NONE;
    Py_ssize_t count = PyTuple_GET_SIZE(writes);
    Py_ssize_t slots[MAX_WRITES];
    uint64_t *flags[MAX_WRITES];
    for (Py_ssize_t i = 0; i < count; i++) {
        slots[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(writes, i));
        if (slots[i] == -1 && PyErr_Occurred())
            return NULL;
        if (slots[i] < 0 || (flags[i] = word_in(&self->control, self->pending + 8 * slots[i])) == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_IndexError, "no flag slot %zd", slots[i]);
            return NULL;
        }
    }
    /* Last, as it calls Python code: nothing after it may run any. */
    PyObject *busy = PyObject_CallNoArgs(self->locked);
    if (busy == NULL)
        return NULL;
    int is_busy = PyObject_IsTrue(busy);
    Py_DECREF(busy);
    if (is_busy)
        return is_busy < 0 ? NULL : Py_NewRef(Py_None);
    uint64_t sent = 0;
    if (send_entry(&self->r, self->record, slots, flags, count, self->seq + 1, entry,
                   (uint64_t)len, patch_at, self->bell, self->lazy, self->stop, &sent) < 0)
        Py_RETURN_NONE; /* full or closed: nothing published, the Python path */
    self->seq += 1;
    if ((sent & 3) == 2) {
        PyObject *done = PyObject_CallNoArgs(self->wake);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
    }
    return PyLong_FromUnsignedLongLong(sent);
}

static PyObject *
sender_close(Sender *self, PyObject *unused)
{
    sender_release(self);
    Py_RETURN_NONE;
}

static PyObject *
sender_get_open(Sender *self, void *unused)
{
    return PyBool_FromLong(sender_is_open(self));
}

static PyObject *
sender_get_seq(Sender *self, void *unused)
{
    return PyLong_FromUnsignedLongLong(self->seq);
}

static int
sender_set_seq(Sender *self, PyObject *value, void *unused)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "seq cannot be deleted");
        return -1;
    }
    unsigned long long seq = PyLong_AsUnsignedLongLong(value);
    if (seq == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    self->seq = seq;
    return 0;
}

static PyObject *
sender_get_stop(Sender *self, void *unused)
{
    return PyLong_FromLong(self->stop);
}

static int
sender_set_stop(Sender *self, PyObject *value, void *unused)
{
    long stop = value == NULL ? -1 : PyLong_AsLong(value);
    if (stop < STOP_NONE || stop > STOP_AFTER_HEADER) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "stop: STOP_AFTER_PAYLOAD or STOP_AFTER_HEADER");
        return -1;
    }
    self->stop = stop;
    return 0;
}

static PyObject *
sender_get_registry(Sender *self, void *unused)
{
    return Py_NewRef(self->registry);
}

static int
sender_set_registry(Sender *self, PyObject *value, void *unused)
{
    if (value == NULL)
        value = Py_None;
    if (value != Py_None && !(PyTuple_CheckExact(value) && PyTuple_GET_SIZE(value) == 2 &&
                              PyDict_Check(PyTuple_GET_ITEM(value, 0)))) {
        PyErr_SetString(PyExc_TypeError, "registry: None or (dict, key)");
        return -1;
    }
    Py_XSETREF(self->registry, Py_NewRef(value));
    return 0;
}

static PyMethodDef sender_methods[] = {
    {"send", (PyCFunction)(void (*)(void))sender_send, METH_FASTCALL,
     "send(template, value) -> None (take the Python path), or old flag count * 4 + how."},
    {"close", (PyCFunction)sender_close, METH_NOARGS,
     "Send nothing more, and release the buffers (before they are unmapped)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sender_getset[] = {
    {"open", (getter)sender_get_open, NULL, "Whether send may append.", NULL},
    {"seq", (getter)sender_get_seq, (setter)sender_set_seq,
     "The sequence number of the client's last command (its intent records).", NULL},
    {"stop", (getter)sender_get_stop, (setter)sender_set_stop,
     "Tests: leave every entry unpublished at this point, as a producer killed there would.",
     NULL},
    {"registry", (getter)sender_get_registry, (setter)sender_set_registry,
     "None (send appends nothing), or (dict, key): send appends only while key is in dict.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot sender_slots[] = {
    {Py_tp_new, sender_new},
    {Py_tp_dealloc, sender_dealloc},
    {Py_tp_traverse, sender_traverse},
    {Py_tp_clear, sender_clear},
    {Py_tp_methods, sender_methods},
    {Py_tp_getset, sender_getset},
    {Py_tp_doc,
     "Sender(control, intent, pending, closed, replaced, buffer, base, bell, lazy, lock, "
     "deferred, wake): one client's fire-and-forget writes of one plain value (see send)."},
    {0, NULL},
};

static PyType_Spec sender_spec = {
    "accord.backends.shm._ring.Sender", sizeof(Sender), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, sender_slots,
};

static PyMethodDef methods[] = {
    {"ring_init", (PyCFunction)(void (*)(void))ring_init, METH_FASTCALL,
     "ring_init(buffer, base, size): an empty ring of size bytes at base."},
    {"ring_max_entry", (PyCFunction)(void (*)(void))ring_max_entry, METH_FASTCALL,
     "ring_max_entry(buffer, base) -> the largest payload an append takes."},
    {"ring_append", (PyCFunction)(void (*)(void))ring_append, METH_FASTCALL,
     "ring_append(buffer, base, data, flag, bell_buffer, bell_offset) -> 0 full, 1 appended, "
     "2 appended and the consumer sleeps in select(), -1 closed."},
    {"ring_send", (PyCFunction)(void (*)(void))ring_send, METH_FASTCALL,
     "ring_send(control, intent, pending, seq, writes, payload, patch_at, buffer, base, "
     "bell_buffer, bell_offset, lazy) -> -1 full, -2 closed, else old flag count * 4 + (1, "
     "or 2: wake the consumer in select())."},
    {"ring_drain", (PyCFunction)(void (*)(void))ring_drain, METH_FASTCALL,
     "ring_drain(buffer, base, position, max_bytes) -> (entries, new position)."},
    {"ring_commit", (PyCFunction)(void (*)(void))ring_commit, METH_FASTCALL,
     "ring_commit(buffer, base, position): entries before position are applied."},
    {"ring_state", (PyCFunction)(void (*)(void))ring_state, METH_FASTCALL,
     "ring_state(buffer, base) -> (head, tail, capacity)."},
    {"ring_close", (PyCFunction)(void (*)(void))ring_close, METH_FASTCALL,
     "ring_close(buffer, base) -> head: no append succeeds after this."},
    {"ring_wait_space", (PyCFunction)(void (*)(void))ring_wait_space, METH_FASTCALL,
     "ring_wait_space(buffer, base, size, seconds) -> whether size bytes fit now."},
    {"bell_sleep", (PyCFunction)(void (*)(void))bell_sleep, METH_FASTCALL,
     "bell_sleep(bell_buffer, bell_offset, buffer, positions, seconds[, spin, other_buffer, "
     "other_offset]) -> may have input."},
    {"bell_ring", (PyCFunction)(void (*)(void))bell_ring, METH_FASTCALL,
     "bell_ring(bell_buffer, bell_offset): wake the consumer if it sleeps."},
    {"bell_arm", (PyCFunction)(void (*)(void))bell_arm, METH_FASTCALL,
     "bell_arm(bell_buffer, bell_offset, buffer, positions) -> input pending (not armed)."},
    {"bell_disarm", (PyCFunction)(void (*)(void))bell_disarm, METH_FASTCALL,
     "bell_disarm(bell_buffer, bell_offset): the consumer is awake."},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "RING_DATA", RING_DATA) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "STOP_AFTER_PAYLOAD", STOP_AFTER_PAYLOAD) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "STOP_AFTER_HEADER", STOP_AFTER_HEADER) < 0)
        return -1;
    PyObject *sender = PyType_FromModuleAndSpec(module, &sender_spec, NULL);
    if (sender == NULL)
        return -1;
    int failed = PyModule_AddObjectRef(module, "Sender", sender);
    Py_DECREF(sender);
    return failed;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    ACCORD_SUBINTERPRETER_SLOT{0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ring", "Single-producer command rings in shared memory.", 0,
    methods, slots,
};

PyMODINIT_FUNC
PyInit__ring(void)
{
    return PyModuleDef_Init(&module);
}
