"""The operations behind a `Share` and its proxies.

`Link` turns "read share.obj.x", "call share.lst.append(3)", "share.c += 1"
into the backend's three verbs: wait for write flags, read a committed
snapshot, send a command.  Every read first makes sure that the writes to
what it reads, queued by any process before it, are applied; every write
raises the flags of what it writes before it is queued.
"""

from __future__ import annotations

import atexit
import collections
import copy
import inspect
import logging
import os
import threading
from typing import Any

from .._core import _protocol as P
from .._core._errors import (
    AccordError,
    CoordinatorLost,
    ShareClosed,
    Unconfirmed,
    UnshareableError,
)
from .._core._fastread import Reader
from .._core._protocol import describe
from .._core._remote import Unreadable, rebuild_error
from .._core._serialize import PLAIN, cloudpickle_dumps, is_plain, pack, pack_call
from .._core._slots import MAX_WRITE_SLOTS, MISSING, UNKNOWN, WHOLE, slot_of
from .._core._values import is_value, private
from ..backends._replies import raise_all
from ._augmented import Augmenting, is_augmented
from ._methods import LOCAL, QUEUE, Access, checked, method_access, property_access
from ._proxy import BoundMethod, Proxy, unwrap

log = logging.getLogger("accord.share")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..backends._protocol import BackendClient, BackendInfo

_MAX_WRITE_SLOTS = MAX_WRITE_SLOTS

# The clients of this process that sent fire-and-forget commands not yet
# confirmed: `settle` (flush, close, the end of an accord.Pool task) waits
# for them and raises their errors; at exit, `_report_at_exit` prints them.
_unsettled: dict[int, object] = {}


def _settle_client(client) -> list[BaseException]:
    """The errors of `client`'s fire-and-forget commands, all of them: if it
    sent any since it was last settled, after a round trip (a reply comes
    after every earlier command of this process ran, and their errors
    before it)."""
    errors = client.replies.take_deferred()
    if _unsettled.pop(id(client), None) is not None:
        try:
            if client.lost is not None:
                raise CoordinatorLost
            client.send(P.BARRIER, (), reply=True)
        except CoordinatorLost:
            # Its coordinator died.  If the owner restarted the share, the
            # new one replayed our queued commands: it has their errors.
            # Else nobody can confirm them now; every later use says why.
            errors += _settle_restarted(client)
        except Exception as exc:  # the backend is unreachable (redis down...)
            errors.append(_unconfirmed(client, f"({type(exc).__name__}: {exc})"))
        errors += client.replies.take_deferred()
    return errors


def _settle_restarted(client) -> list[BaseException]:
    """The errors the coordinator that replaced `client`'s (a restart) has
    kept for this process: those of its replayed commands."""
    old = getattr(client, "info", None)
    if old is None or isinstance(client.lost, ShareClosed):
        return []
    try:
        info = old.reload()
        if info is None or info.pid == old.pid:
            return []
        successor = info.client()
        successor.send(P.BARRIER, (), reply=True)
    except (AccordError, OSError):  # gone again, closed: nobody can tell now
        return []
    return successor.replies.take_deferred()


def _carry_deferred(old, new) -> None:
    """Errors a lost client took from its coordinator (see
    ShmClient.salvage) are raised at the next sync point of the client
    that follows the restart, ahead of that one's own."""
    with old.replies.ready:
        moved, old.replies.deferred[:] = list(old.replies.deferred), []
    with new.replies.ready:
        new.replies.deferred[:0] = moved


def _queued(client) -> None:
    global _exit_hook
    _unsettled[id(client)] = client
    if not _exit_hook:
        # Registered now, after the first Share's finalizer: atexit runs
        # this first, while the coordinator still runs.
        _exit_hook = True
        atexit.register(_report_at_exit)


_exit_hook = False
EXIT_TIMEOUT = 5.0
# A forked child has sent nothing yet: its parent's commands are not its own
# to wait for (a Pool worker would settle them after every call).
os.register_at_fork(after_in_child=_unsettled.clear)


def _report_at_exit() -> None:
    """At interpreter exit: print every fire-and-forget error nothing raised."""
    for client in list(_unsettled.values()):
        for error in settle_within(client, EXIT_TIMEOUT):
            if isinstance(error, Unconfirmed):
                log.error("at exit, %s", error)
                continue
            log.error(
                "a fire-and-forget command of this process failed, and nothing "
                "raised its error before exit:",
                exc_info=error,
            )


def settle_within(client, timeout: float) -> list[BaseException]:
    """`_settle_client(client)`, waiting at most `timeout` seconds (closing
    or exiting must not wait without bound for a coordinator busy with a
    long method)."""
    if client is None or (id(client) not in _unsettled and not client.replies.deferred):
        return []  # nothing to wait for
    done: list = []

    def run():
        try:
            done.append(_settle_client(client))
        except BaseException as exc:
            done.append([exc])

    thread = threading.Thread(target=run, name="accord-settle", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # Python 3.12.0-3.12.1 start no thread at interpreter exit
        run()
    else:
        thread.join(timeout)
    if done:
        return done[0]
    return [_unconfirmed(client, f"within {timeout} s (its coordinator or backend did not answer)")]


def _unconfirmed(client, why: str) -> Unconfirmed:
    name = getattr(getattr(client, "info", None), "name", "?")
    return Unconfirmed(
        f"the fire-and-forget commands this process sent to share {name!r} could not be "
        f"confirmed {why}: whether they succeeded is unknown"
    )


def settle_all() -> None:
    """Settle every share this process sent fire-and-forget commands to
    (the end of an accord.Pool task: it fails with their errors)."""
    errors = []
    for client in list(_unsettled.values()):
        errors += _settle_client(client)
    raise_all(errors)


_MEMO_LIMIT = 10_000


def _remember(memo: dict, key, value):
    """memo[key] = value, forgetting everything once the memo is full (paths
    with item keys are unbounded: `share.d[i]` for a million i)."""
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


_setters: dict[tuple[type, str], bool] = {}


def _setting_runs_code(cls: type, attr: str) -> bool:
    key = (cls, attr)
    found = _setters.get(key)
    if found is None:
        try:
            member = inspect.getattr_static(cls, attr)
        except AttributeError:
            member = None
        found = _remember(
            _setters,
            key,
            hasattr(type(member), "__set__")
            or hasattr(type(member), "__delete__")
            or getattr(cls, "__setattr__", object.__setattr__) is not object.__setattr__,
        )
    return found


def _is_item_of(mapping: dict, args: tuple, result) -> bool:
    """Did d.get(key) return the (mutable) item itself, to be handed out live?"""
    return bool(args) and is_plain(args[0]) and args[0] in mapping and not is_value(result)


def is_selector(key) -> bool:
    """A slice, mask or index array (unhashable): it picks a part of the
    object, never names one item of it."""
    if type(key) in _NAME_KEYS:
        return False
    if type(key) is slice:
        return True  # hashable since Python 3.12, a selector all the same
    try:
        hash(key)
    except TypeError:
        return True
    return False


_NAME_KEYS = frozenset({int, str, bytes, float, bool})


def _selection(result):
    result = private(result)
    flags = getattr(result, "flags", None)
    if flags is not None and getattr(flags, "writeable", False) and hasattr(result, "setflags"):
        result.setflags(write=False)  # pyright: ignore[reportAttributeAccessIssue]  (numpy)
    return result


def _attr_of(path: tuple) -> str | None:
    # The first attribute step decides which attribute flag a path uses; an
    # indexer (share.df.loc[...]) reads and writes the whole object.
    if len(path) >= 3 and path[1] == P.ATTR and path[2] not in INDEXERS:
        return path[2]
    return None


# pandas' indexers: `share.df.loc[i, "c"] = v` is one command on the
# coordinator's frame (an indexer fetched and used here would change a copy).
INDEXERS = frozenset({"loc", "iloc", "at", "iat"})


# Containers whose `c[key]` only reads (a defaultdict's missing keys never
# come this far: see Link.item).
_HELD_CONTAINERS = frozenset({dict, list, tuple, collections.defaultdict, collections.OrderedDict})
_ABSENT = object()


def _holdable(container, step: int, key) -> bool:
    """May the read of `key` (an item or attribute) of `container` be
    served again, as it is, while nothing is committed?  Only where reading
    runs no user code: a str or int key of a builtin container, or an
    instance attribute of an object whose class neither defines the name
    nor customises attribute reads."""
    if step == P.ITEM:
        return type(container) in _HELD_CONTAINERS and type(key) in (str, int)
    cls = type(container)
    return (
        type(key) is str
        and cls.__getattribute__ is object.__getattribute__
        and key in getattr(container, "__dict__", ())
        and getattr(cls, key, _ABSENT) is _ABSENT
    )


def _is_pandas(obj) -> bool:
    return type(obj).__module__.startswith("pandas")


class Link:
    __slots__ = (
        "_client",
        "_methods",
        "_names",
        "_proxies",
        "_read_slots",
        "_replaced",
        "_write_slots",
        "closed",
        "info",
        "reader",
    )

    def __init__(self, info: BackendInfo) -> None:
        self.info = info
        self._client: BackendClient | None = None
        self._replaced: BackendClient | None = None  # the client of before a restart
        self.closed = False
        # Memos of pure functions of a path (and the object's class).
        self._read_slots: dict = {}
        self._write_slots: dict = {}
        self._methods: dict = {}
        self._proxies: dict = {}
        self._names: dict = {}  # name -> (path, read slots)
        # The fast read path of the Share holding this link (C, see
        # _core/_fastread.c): armed with the client's Control, if it has one.
        self.reader = Reader()

    def proxy(self, path: tuple) -> Proxy:
        proxy = self._proxies.get(path)
        if proxy is None:
            proxy = _remember(self._proxies, path, Proxy(self, path))
        return proxy

    @property
    def client(self) -> BackendClient:
        if self.closed:
            raise ShareClosed("this share handle was closed")
        client = self._client
        if client is None or client.lost is not None:
            old = client or self._replaced
            self._replaced = None
            if client is not None:
                self._follow_restart()
            try:
                client = self._client = self.info.client()
            except CoordinatorLost:
                # This incarnation is gone (a process that had not used the
                # share yet, or one that raced with restart()): follow the
                # owner's restart if there is one, else it is still lost.
                if not self._follow_restart():
                    raise
                client = self._client = self.info.client()
            if old is not None and old is not client and old.replies.deferred:
                _carry_deferred(old, client)
            self.reader.arm(getattr(client, "fast", None))
        return client

    def rebind(self, info: BackendInfo) -> None:
        """Point at a new incarnation of the share (after a restart)."""
        self.info = info
        if self._client is not None:
            self._replaced = self._client
        self._client = None
        self.reader.arm(None)
        self._methods.clear()

    def _follow_restart(self) -> bool:
        """If the owner restarted the share, its key file names the new
        coordinator: attach to that one (True).  Else keep failing (False)."""
        info = self.info.reload()
        if info is None or info.pid == self.info.pid:
            return False
        self.rebind(info)
        return True

    def _read(self, name: str, kind: bool = False):
        """The client's read(name), or with `kind` its kind(name), following
        the owner's restart.  A read sends nothing: when the coordinator it
        asked is gone and the owner has restarted the share, it is asked
        again of the new one.  (This process may not have used the share
        since the old one died: its first check then finds it gone, however
        long ago the restart was.)"""
        followed = False
        while True:
            client = self.client
            try:
                return client.kind(name) if kind else client.read(name)
            except CoordinatorLost:
                if followed or not self._follow_restart():
                    raise
                followed = True

    # -- flags -----------------------------------------------------------------

    def read_slots(self, path: tuple, access: Access | None = None) -> tuple[int, ...]:
        key = (path, access)
        try:
            slots = self._read_slots.get(key)
        except TypeError:  # a slice or an array in the path: not memoised
            return self._compute_read_slots(path, access)
        if slots is None:
            slots = _remember(self._read_slots, key, self._compute_read_slots(path, access))
        return slots

    def write_slots(self, path: tuple, access: Access | None = None) -> tuple[int, ...]:
        key = (path, access)
        try:
            slots = self._write_slots.get(key)
        except TypeError:  # a slice or an array in the path: not memoised
            return self._compute_write_slots(path, access)
        if slots is None:
            slots = _remember(self._write_slots, key, self._compute_write_slots(path, access))
        return slots

    @staticmethod
    def _compute_read_slots(path: tuple, access: Access | None) -> tuple[int, ...]:
        name = path[0]
        attr = _attr_of(path)
        if attr is not None:
            return (slot_of(name, attr), slot_of(name, UNKNOWN))
        if access is not None and access.reads is not None and len(path) == 1:
            return (*(slot_of(name, a) for a in access.reads), slot_of(name, UNKNOWN))
        return (slot_of(name, WHOLE),)

    @staticmethod
    def _compute_write_slots(path: tuple, access: Access | None) -> tuple[int, ...]:
        name = path[0]
        attr = _attr_of(path)
        if attr is not None:
            return (slot_of(name, WHOLE), slot_of(name, attr))
        if (
            access is not None
            and access.writes is not None
            and len(path) == 1
            and len(access.writes) < _MAX_WRITE_SLOTS
        ):
            return (slot_of(name, WHOLE), *(slot_of(name, a) for a in sorted(access.writes)))
        return (slot_of(name, WHOLE), slot_of(name, UNKNOWN))

    def wait_for(self, slots: tuple[int, ...]) -> None:
        """Return once every write to `slots` queued before now is committed."""
        client = self.client
        if client.applied_all(slots):
            return
        self.request(P.BARRIER, (), reads=slots)

    def names(self) -> list[str]:
        """The names in the share, sorted, including every name whose write
        was queued (by any process) before this call, as a read would."""
        pending = getattr(self.client, "pending_slots", None)  # ordered backends need none
        return self.request(P.NAMES, (), reads=pending() if pending is not None else ())

    # -- commands --------------------------------------------------------------

    def send(self, op: int, fields: tuple, writes: tuple = ()) -> None:
        """Queue a fire-and-forget command (its error: see `settle`)."""
        client = self.client
        try:
            client.send(op, fields, writes)
        except CoordinatorLost as exc:
            if not (getattr(exc, "undelivered", False) and self._follow_restart()):
                raise
            client = self.client
            client.send(op, fields, writes)  # to the restarted coordinator
        if id(client) not in _unsettled:
            _queued(client)
        sender = getattr(client, "sender", None)
        if sender is not None and sender.registry is None:
            # The C paths (see `_arm`) send only while this client is
            # unsettled: once settled, its next write comes here first.
            sender.registry = (_unsettled, id(client))

    def request(self, op: int, fields: tuple, writes: tuple = (), reads: tuple = ()):
        try:
            reply = self.client.send(op, fields, writes, reads, reply=True)
        except CoordinatorLost as exc:
            if not (getattr(exc, "undelivered", False) and self._follow_restart()):
                raise
            reply = self.client.send(op, fields, writes, reads, reply=True)
        if reply.status == P.OK:
            if op == P.BARRIER:
                # A read that waited: every earlier command of this process
                # has run, and the errors of those that failed came first.
                client = self.client
                if client.replies.deferred:
                    client.raise_deferred()
            return reply.value
        raise rebuild_error(reply.value, reply.traceback)

    def settle(self, report: bool = False) -> list[BaseException]:
        """Wait until every command this process sent has run; raise the
        errors of those sent fire-and-forget (an ExceptionGroup if several)
        — or, with `report`, return them."""
        client = self._client
        errors = _settle_client(client) if client is not None else []
        if report:
            return errors
        raise_all(errors)
        return []

    # -- reading ---------------------------------------------------------------

    def peek(self, path: tuple):
        """The object at `path` in the latest commit, without waiting; MISSING
        if there is none (it may be pending)."""
        obj = self._read(path[0])
        if obj is MISSING or type(obj) is Unreadable:
            return MISSING
        try:
            for i in range(1, len(path), 2):
                key = path[i + 1]
                obj = getattr(obj, key) if path[i] == P.ATTR else obj[key]
        except Exception:
            return MISSING
        return obj

    def value_at(self, path: tuple):
        """The committed object at `path` (call `wait_for` first). Shared with
        the snapshot cache: do not mutate it."""
        obj = self._read(path[0])
        if obj is MISSING:
            raise AttributeError(f"share has no attribute {path[0]!r}")
        if type(obj) is Unreadable:
            raise UnshareableError(obj.message)
        for i in range(1, len(path), 2):
            key = path[i + 1]
            obj = getattr(obj, key) if path[i] == P.ATTR else obj[key]
        return obj

    def value(self, path: tuple):
        """The current value at `path`, committed, after waiting for writes."""
        self.wait_for(self.read_slots(path))
        return self.value_at(path)

    def get_name(self, name: str, _depth: int = 3):
        """``share.name``: a proxy for a container, else the value — or, for
        the read that starts ``share.name += x``, the marker that turns it
        into one AUGMENT command.

        `_depth` counts the frames up to the user's code, for `is_augmented`:
        one more in the call that follows a restart, or that read would see
        no `+=` and the user's line would become a read and an ASSIGN,
        overwriting what other processes added in between."""
        client = self.client
        named = self._names.get(name)
        if named is None:
            named = _remember(self._names, name, ((name,), self.read_slots((name,))))
        path, slots = named
        if not client.remote:
            # Local snapshots: the kind is a few loads away.
            mark = self.reader.mark()  # (before the kind: it is at least this recent)
            try:
                typed = client.kind(name)  # (and a check that the coordinator lives)
            except CoordinatorLost:
                if not self._follow_restart():
                    raise
                return self.get_name(name, _depth + 1)  # of the restarted coordinator
            if typed is not MISSING and not typed.kind.is_value:
                # A container: its proxy's own += is atomic; no bytecode check.
                proxy = self.proxy(path)
                if mark is not None:  # the next `share.name`: in C while nothing changes
                    self.reader.remember(name, proxy, mark)
                return proxy
            if is_augmented(_depth):
                # `share.name += x`: one AUGMENT whatever the value is now
                # (none yet: the coordinator reports it).  Nothing to wait
                # for: the command runs after every earlier write.
                return Augmenting(self, path)
            # No write pending (checked first), and nothing committed since
            # our last read (checked after): then what we hold is current.
            cached, clear = client.lookup(name, slots)
        else:
            try:
                client.check_alive()
            except CoordinatorLost:
                if not self._follow_restart():
                    raise
                return self.get_name(name, _depth + 1)
            # Over a network, `share.x += 1` should cost the one round trip
            # that sends it: decide from what we last read (an AUGMENT is
            # right even if `x` has since become a container).
            known = client.known(name)
            if known is not None and known.kind.is_value and is_augmented(_depth):
                return Augmenting(self, path)
            cached, clear = client.lookup(name, slots)
            if cached is not None:
                is_plain_value = cached.kind.is_value
            elif known is not None:
                # Saves a round trip; if it has become a container since,
                # the value read below turns into a proxy all the same.
                is_plain_value = known.kind.is_value
            else:
                typed = client.kind(name)
                is_plain_value = typed is MISSING or typed.kind.is_value
            if not is_plain_value:
                return self.proxy(path)
            if is_augmented(_depth):
                return Augmenting(self, path)
        if clear:
            if cached is not None and type(cached.obj) is not Unreadable:
                if self.reader.armed:  # (armed: a client with a fast path, shm)
                    client.remember(name, slots[0], cached)  # pyright: ignore[reportAttributeAccessIssue]
                return cached.obj
        else:
            self.request(P.BARRIER, (), reads=slots)  # the flags were just read
        obj = self.value_at(path)
        if not is_value(obj):
            return self._not_value(path, obj)
        if self.reader.armed:  # the next read of it: in C while nothing changes
            client.remember(name, slots[0])  # pyright: ignore[reportAttributeAccessIssue]
        return obj

    def get(self, path: tuple):
        """What reading `path` gives the user: a value, or a proxy."""
        if len(path) == 1:
            typed = self._read(path[0], kind=True)
            if typed is not MISSING and not typed.kind.is_value:
                # A shared container: its proxy waits for writes when used,
                # so `share.lst.append(x)` never waits for other writers.
                return self.proxy(path)
        # A value, or something inside an object: wait for the writes queued
        # before now (an item may be gone), then read.
        obj = self.value(path)
        return obj if is_value(obj) else self._not_value(path, obj)

    def _not_value(self, path: tuple, obj):
        # A tuple holding mutable things is handed out as a copy; anything
        # else mutable as a proxy, so that writes through it are shared.
        return copy.deepcopy(obj) if isinstance(obj, tuple) else self.proxy(path)

    def attribute(self, path: tuple, attr: str, holder: Proxy | None = None):
        """``proxy.attr``: a bound method, a property's value, or get()
        (`holder`: the proxy, told about a read it may serve again)."""
        typed: Any = self._read(path[0], kind=True) if len(path) == 1 else MISSING
        if typed is not MISSING:
            cls = typed.cls
            memo = self._methods.get((path, attr))
            if memo is not None and memo[0] is cls:
                return memo[1]
        obj = self.peek(path)
        if obj is MISSING:
            obj = self.value(path)
        if attr in INDEXERS and _is_pandas(obj):
            return self.proxy((*path, P.ATTR, attr))
        cls = type(obj)
        memo = self._methods.get((path, attr))
        if memo is not None and memo[0] is cls:
            return memo[1]
        access = method_access(cls, attr)
        if access is not None and attr not in getattr(obj, "__dict__", ()):
            access = checked(access, obj)
            slots = (
                self.read_slots(path, access)
                if access.kind == LOCAL
                else self.write_slots(path, access)
            )
            method = BoundMethod(self, path, attr, access.kind, slots)
            _remember(self._methods, (path, attr), (cls, method))
            return method
        prop = property_access(cls, attr)
        if prop is not None:
            prop = checked(prop, obj)
            if prop.kind == LOCAL:
                self.wait_for(self.read_slots(path, prop))
                return private(getattr(self.value_at(path), attr))
            return self.request(P.CALL, (path, "__getattribute__", (attr,)), self.write_slots(path))
        if holder is not None and self.reader.armed:
            return self._read_held(path, P.ATTR, attr, holder)
        return self.get((*path, P.ATTR, attr))

    def item(self, path: tuple, key, holder: Proxy | None = None):
        """``proxy[key]``: a value or a proxy.  For a selector (a slice, a
        mask, an index array: an unhashable key), a copy; a numpy array
        copy is read-only, so that a write meant for the share (locally a
        view would take it) raises instead of changing the copy alone.
        (`holder`: the proxy, told about a read it may serve again.)"""
        if is_selector(key):
            return _selection(self.value(path)[key])
        typed: Any = self._read(path[0], kind=True) if len(path) == 1 else MISSING
        obj = self.peek(path) if typed is MISSING or typed.cls is collections.defaultdict else None
        if isinstance(obj, collections.defaultdict) and key not in obj:
            # Reading a missing key inserts it: only the coordinator may.
            packed = pack_call((key,), {}, lambda: f"key of {describe(path)}")
            value = self.request(P.CALL, (path, "__getitem__", packed), self.write_slots(path))
            return value if is_value(value) else self.proxy((*path, P.ITEM, key))
        if holder is not None and self.reader.armed:
            return self._read_held(path, P.ITEM, key, holder)
        return self.get((*path, P.ITEM, key))

    def _read_held(self, path: tuple, step: int, key, holder: Proxy):
        """``get((*path, step, key))``, and `holder` (the proxy at `path`)
        told about the read when it is one its C hook may serve again while
        nothing changes (see _core/_fastread.c, ProxyBase): a str or int key
        of a builtin dict, list or tuple, or an instance attribute of a
        plain object; what is held is an immutable value or the proxy of a
        mutable item, never a mutable object."""
        place = (*path, step, key)
        slots = self.read_slots(place)
        self.wait_for(slots)
        mark = self.reader.mark()  # before the read: it is at least this recent
        container = self.value_at(path)
        obj = getattr(container, key) if step == P.ATTR else container[key]
        if not is_value(obj):
            obj = self._not_value(place, obj)
            if type(obj) is not Proxy:
                return obj  # a private copy: made afresh for every read
        if mark is not None and _holdable(container, step, key) and len(slots) <= 2:
            holder._accord_hold(key, obj, mark, slots, step == P.ATTR)
        return obj

    # -- writing ---------------------------------------------------------------

    def place_slots(self, place: tuple) -> tuple[int, ...]:
        """The flags a write to `place` raises.  Assigning to a property (or
        to any attribute of a class with its own __setattr__) runs code that
        may write other attributes: that counts as a write to the whole."""
        attr = _attr_of(place)
        if attr is not None:
            typed = self._read(place[0], kind=True)
            if typed is not MISSING and _setting_runs_code(typed.cls, attr):
                return self.write_slots(place[:1])
        return self.write_slots(place)

    def assign(self, place: tuple, value) -> None:
        value = unwrap(value)
        packed = pack(value, lambda: describe(place))
        self.send(P.ASSIGN, (place, packed), self.place_slots(place))

    def delete(self, place: tuple) -> None:
        self.request(P.DELETE, (place,), self.place_slots(place))

    def augment(self, place: tuple, op: str, operand) -> None:
        if type(operand) in PLAIN:  # (`+= 1`: the common case, at once)
            packed = (operand,)
        else:
            operand = unwrap(operand)
            packed = pack(operand, lambda: f"operand of {describe(place)} {op}")
        slots = self._write_slots.get((place, None)) if len(place) == 1 else None
        if slots is None:
            slots = self.place_slots(place)
        self.send(P.AUGMENT, (place, op, packed), slots)
        if len(place) == 1 and type(operand) in PLAIN:
            self._arm_augment(place, op, slots)

    # -- the writer's C paths (_core/_fastread.c) -------------------------------

    def _arm_augment(self, place: tuple, op: str, slots: tuple) -> None:
        """Let the share's attribute hook send the next ``share.name op= v``
        (v plain) in C: the template of the AUGMENT just sent, but its value.
        The command is the one this method sends; its flags, `slots`, depend
        on the name alone."""
        client = self._client
        fast = getattr(client, "fast", None)
        if fast is None or fast.send is None:
            return
        augments = fast.augments
        templates = augments.get(place[0])
        if templates is None:
            if len(augments) >= _MEMO_LIMIT:
                augments.clear()  # names written once each, without end
            templates = augments[place[0]] = {}
        if op not in templates:
            made = client.template(P.AUGMENT, (place, op), slots)  # pyright: ignore[reportOptionalMemberAccess, reportAttributeAccessIssue]  (shm)
            if made is not None:
                templates[op] = made

    def _arm_method(self, method: BoundMethod) -> None:
        """Let `method` send its next call with one plain argument in C (see
        MethodBase): the template of the CALL just sent, but its argument."""
        sender = getattr(self._client, "sender", None)
        if sender is None or not sender.open:
            return
        made = method._accord_template
        if made is None:
            made = self._client.template(P.CALL, (method.path, method.name), method.slots)  # pyright: ignore[reportOptionalMemberAccess, reportAttributeAccessIssue]  (shm)
            if made is None:
                return
        method._accord_arm(sender.send, made)

    def call(self, method: BoundMethod, args: tuple, kwargs: dict):
        path, name, kind = method.path, method.name, method.kind
        if kind == QUEUE and not kwargs and len(args) == 1 and type(args[0]) in PLAIN:
            # `lst.append(3)`: the commonest write, without the general steps
            # below (plain arguments travel as they are, see pack_call).
            # Through send(): one that restart() turned away is sent again.
            self.send(P.CALL, (path, name, args), method.slots)
            self._arm_method(method)
            return None
        if kind == LOCAL:
            self.wait_for(method.slots)
            obj = self.value_at(path)
            result = getattr(obj, name)(*args, **kwargs)
            if name == "get" and isinstance(obj, dict) and _is_item_of(obj, args, result):
                return self.proxy((*path, P.ITEM, args[0]))
            return private(result)
        if kwargs or Proxy in map(type, args):
            args = tuple(unwrap(a) for a in args)
            kwargs = {k: unwrap(v) for k, v in kwargs.items()}
        packed = pack_call(args, kwargs, lambda: f"arguments of {describe(path)}.{name}()")
        if kind == QUEUE:
            # Through send(): one that restart() turned away is sent again.
            self.send(P.CALL, (path, name, packed), method.slots)
            return None
        result = self.request(P.CALL, (path, name, packed), method.slots)
        if name == "setdefault" and args and is_plain(args[0]) and not is_value(result):
            # d.setdefault(k, []).append(x): the result must be the live item.
            return self.proxy((*path, P.ITEM, args[0]))
        return result

    def known_method(self, path: tuple, attr: str) -> BoundMethod | None:
        """The bound method `attr` of the object at `path` if we made it
        before and the object's type has not changed since."""
        memo = self._methods.get((path, attr))
        if memo is None or len(path) != 1:
            return None
        typed = self._read(path[0], kind=True)
        return memo[1] if typed is not MISSING and typed.cls is memo[0] else None

    def apply(self, path: tuple, fn, args: tuple, kwargs: dict, replace: bool):
        try:
            packed = cloudpickle_dumps((fn, args, kwargs))
        except Exception as exc:
            raise UnshareableError(f"cannot send {fn!r} to the coordinator: {exc}") from exc
        return self.request(P.APPLY, (path, packed, replace), self.write_slots(path))
