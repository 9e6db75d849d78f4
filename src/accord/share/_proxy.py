"""Proxies: live handles on objects inside a share.

``share.results`` (a list), ``share.cfg["model"]`` (a dict inside a dict),
``share.stats.items`` — each is a `Proxy` holding the share's link and the
path to the object.  Nothing is cached in it: every use reads the committed
state (after the writes queued before it) or sends a command, so a proxy
kept in a variable stays current.  Operators that only read (``==``,
``len``, ``in``, iteration, ``+``) work on a private copy of the value;
in-place operators (``+=``, ``|=``) are atomic commands.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from .._core import _protocol as P
from .._core._fastread import MethodBase, ProxyBase
from .._core._protocol import describe
from .._core._values import private
from ._augmented import DONE, Augmenting, is_augmented

_get = object.__getattribute__
_OWN = ("_accord_", "__")  # every other name is the shared object's


def read_only(value):
    """`value`, its numpy flags set read-only if it is an array: a committed
    object is shared with later reads, never to be changed in place."""
    flags = getattr(value, "flags", None)
    if flags is not None and getattr(flags, "writeable", False) and hasattr(value, "setflags"):
        value.setflags(write=False)
    return value


def _value(proxy: Proxy):
    """The committed value behind a proxy, after the writes queued before now."""
    return _get(proxy, "_accord_link").value(_get(proxy, "_accord_path"))


def _augment(proxy: Proxy, op: str, other):
    _get(proxy, "_accord_link").augment(_get(proxy, "_accord_path"), op, other)
    return proxy


class Proxy(ProxyBase):
    """A live handle on a mutable object inside a share (see module doc).

    >>> from accord import Share
    >>> with Share() as share:
    ...     share.cfg = {"model": {"lr": 1.0}}
    ...     model = share.cfg["model"]      # a Proxy, not a copy
    ...     model["lr"] = 0.1               # written through to the share
    ...     share.cfg
    {'model': {'lr': 0.1}}
    """

    # `_accord_link` and `_accord_path` are ProxyBase's (C), set by
    # Proxy(link, path).
    __slots__ = ()

    # -- attributes and items ------------------------------------------------

    # `proxy.attr` and `proxy[key]`: ProxyBase's hooks (C) answer the proxy's
    # own names ("_accord_...", dunders) as any object does, and a read
    # this proxy made before when nothing it could miss happened since (see
    # accord/_core/_fastread.c, Link._read_held); everything else comes here.
    def _accord_getattr(self, attr: str):
        link = _get(self, "_accord_link")
        path = _get(self, "_accord_path")
        method = link.known_method(path, attr)
        if method is not None:
            return method  # (a method is never the target of `x.attr += y`)
        if is_augmented():
            place = (*path, P.ATTR, attr)
            return Augmenting(link, place)
        return link.attribute(path, attr, self)

    def __setattr__(self, attr: str, value) -> None:
        if value is DONE:
            return  # the second half of `proxy.attr += x`, already applied
        if attr.startswith(_OWN):
            raise AttributeError(f"cannot set {attr!r} through a proxy")
        _get(self, "_accord_link").assign((*_get(self, "_accord_path"), P.ATTR, attr), value)

    def __delattr__(self, attr: str) -> None:
        _get(self, "_accord_link").delete((*_get(self, "_accord_path"), P.ATTR, attr))

    def _accord_getitem(self, key):
        link, path = _get(self, "_accord_link"), _get(self, "_accord_path")
        if is_augmented():
            place = (*path, P.ITEM, key)
            return Augmenting(link, place)
        return link.item(path, key, self)

    def __setitem__(self, key, value) -> None:
        if value is DONE:
            return
        _get(self, "_accord_link").assign((*_get(self, "_accord_path"), P.ITEM, key), value)

    def __delitem__(self, key) -> None:
        _get(self, "_accord_link").delete((*_get(self, "_accord_path"), P.ITEM, key))

    # -- reading operators ---------------------------------------------------

    def __len__(self) -> int:
        return len(_value(self))

    def __iter__(self):
        return iter(private(list(_value(self))))  # a copy: safe to mutate while iterating

    def __reversed__(self):
        return iter(private(list(reversed(_value(self)))))

    def __contains__(self, item) -> bool:
        return unwrap(item) in _value(self)

    def __bool__(self) -> bool:
        return bool(_value(self))

    def __repr__(self) -> str:
        return repr(_value(self))

    def __str__(self) -> str:
        return str(_value(self))

    def __format__(self, spec: str) -> str:
        return format(_value(self), spec)

    def __dir__(self):
        return dir(_value(self))

    def __array__(self, dtype=None, copy=None):
        # np.asarray(share.arr): the committed array itself, a read-only
        # view of shared memory on the shm backend (no copy unless asked).
        import numpy  # (numpy is asking: it is loaded)

        value = _value(self)
        if type(value) is not numpy.ndarray:  # a list, a DataFrame...: numpy converts
            return numpy.array(value, dtype=dtype)
        value = read_only(value)
        if copy or (dtype is not None and value.dtype != dtype):
            return value.astype(dtype or value.dtype, copy=True)
        return value

    __hash__ = None  # pyright: ignore[reportAssignmentType]  (a live mutable object is not hashable)

    def __call__(self, *args, **kwargs):
        return _get(self, "_accord_link").attribute(_get(self, "_accord_path"), "__call__")(
            *args, **kwargs
        )

    # In-place operators (all of P.INPLACE_OPERATORS, one atomic AUGMENT
    # command each) are set below the class.

    # -- pickling: a proxy travels as (share, path) --------------------------

    def __reduce__(self):
        return _rebuild, (
            attach_share(_get(self, "_accord_link").info),
            _get(self, "_accord_path"),
        )

    def __copy__(self):
        return private(_value(self))

    def __deepcopy__(self, memo):
        return private(_value(self))


def _share_not_imported(info: Any) -> Any:
    raise RuntimeError("accord.share._share sets attach_share when it is imported")


# A `Share` handle for an info: what a pickled proxy travels with.  Set by
# share/_share.py (`Share._attach`), which sits above the proxies: this
# module does not import it.
attach_share: Callable[[Any], Any] = _share_not_imported


def _rebuild(share, path: tuple) -> Proxy:
    return Proxy(share._link, path)


def _reading(op):
    def method(self, *args):
        return private(op(_value(self), *(unwrap(a) for a in args)))

    method.__name__ = f"__{op.__name__.strip('_')}__"
    return method


def _reflected(op):
    def method(self, other):
        return private(op(unwrap(other), _value(self)))

    return method


def _augmenting(name: str):
    def method(self, other):
        return _augment(self, name, other)

    method.__name__ = method.__qualname__ = f"__{name}__"
    return method


for _name, _op in {
    "__eq__": operator.eq,
    "__ne__": operator.ne,
    "__lt__": operator.lt,
    "__le__": operator.le,
    "__gt__": operator.gt,
    "__ge__": operator.ge,
    "__neg__": operator.neg,
    "__pos__": operator.pos,
    "__abs__": operator.abs,
    "__invert__": operator.invert,
}.items():
    setattr(Proxy, _name, _reading(_op))
for _inplace in P.INPLACE_OPERATORS.values():
    # `proxy op= x` is one command on the coordinator; `proxy op x` and
    # `x op proxy` compute on a private copy.
    _binary = _inplace[1:]  # "iadd" -> "add"
    _op = getattr(operator, _binary, None) or getattr(operator, f"{_binary}_")  # and_, or_
    setattr(Proxy, f"__{_inplace}__", _augmenting(_inplace))
    setattr(Proxy, f"__{_binary}__", _reading(_op))
    setattr(Proxy, f"__r{_binary}__", _reflected(_op))


class BoundMethod(MethodBase):
    """``share.lst.append``: calling it runs the method where its kind says
    (LOCAL, QUEUE or CALL, see `_methods`), with the flag slots it reads
    (LOCAL) or writes (QUEUE, CALL) worked out once.

    A call is `_accord_call`, unless `Link.call` has armed the method (a
    fire-and-forget one, called with one plain argument): MethodBase (C)
    then sends a call with one argument itself, and calls `_accord_call`
    when it cannot (see _core/_fastread.c)."""

    __slots__ = ("kind", "link", "name", "path", "slots")

    def __init__(self, link, path: tuple, name: str, kind: str, slots: tuple) -> None:
        self.link = link
        self.path = path
        self.name = name
        self.kind = kind
        self.slots = slots

    def _accord_call(self, args: tuple, kwargs: dict):
        return self.link.call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<shared method {describe(self.path)}.{self.name} ({self.kind})>"


def unwrap(value):
    """A proxy passed as a value stands for a copy of its current value."""
    if isinstance(value, Proxy):
        return private(_value(value))
    return value
