"""What a method of a shared object reads and writes, and so where it runs.

Every method call on a shared object gets an `Access`:

* LOCAL  — it only reads: run in the caller on the committed snapshot, after
  the writes to what it reads are applied.  No round trip.
* QUEUE  — it writes and returns nothing: queued to the coordinator, the
  call returns at once (fire-and-forget).
* CALL   — it returns a value (or may raise, or is not understood): run on
  the coordinator; the caller waits for the result.

For builtin containers the answer is a table.  For user classes it comes,
in order, from a declaration in the class::

    class Stats:
        _shared_meta = {"record": {"reads": ["n"], "writes": ["n", "items"]}}

from static analysis of the method's source (``self.x = …``,
``self.x.append(…)``, calls to other methods and properties), or else the
safe fallback: CALL, reading and writing the whole object.
"""

from __future__ import annotations

import array
import ast
import collections
import inspect
import linecache
import sys
import textwrap
import types
from dataclasses import dataclass

LOCAL = "local"
QUEUE = "queue"
CALL = "call"


@dataclass(frozen=True, slots=True)
class Access:
    kind: str
    reads: frozenset[str] | None = None  # attribute names; None: the whole object
    writes: frozenset[str] | None = None  # attribute names; None: unknown
    # (attribute, method) calls the analysis took to only read, on the
    # grounds that the attribute holds a builtin whose table says so;
    # `checked` confirms that on the object before this access is used.
    assumes: frozenset[tuple[str, str]] = frozenset()


_WHOLE_CALL = Access(CALL)
_WHOLE_QUEUE = Access(QUEUE)
_WHOLE_LOCAL = Access(LOCAL)

# Builtin containers: (fire-and-forget writes, blocking writes, reads).
# Every method of these types is named in one of the three (a test checks
# it against the running Python's `dir()`, so a method a new Python adds
# fails there); a name in none of them runs on the coordinator (CALL):
# when in doubt, it is a write.
_TABLES: dict[type, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {}

# What `object` gives every type: `__init__`, `__setattr__`, `__delattr__`
# change the receiver; the rest only read it.
_OBJECT_CALL = "__init__ __setattr__ __delattr__"
_OBJECT_READS = (
    "__dir__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __format__ __getattribute__ "
    "__getstate__ __hash__ __init_subclass__ __new__ __reduce__ __reduce_ex__ __repr__ "
    "__sizeof__ __str__ __subclasshook__ __class_getitem__ __contains__ __getitem__ "
    "__iter__ __len__ __reversed__ __copy__ __deepcopy__"
)
_SEQUENCE_READS = "__add__ __mul__ __rmul__ copy count index"
_MAPPING_READS = "__or__ __ror__ copy fromkeys get items keys values"


def _table(cls: type, queue: str, call: str, reads: str) -> None:
    _TABLES[cls] = (
        frozenset(queue.split()),
        frozenset(f"{call} {_OBJECT_CALL}".split()),
        frozenset(f"{reads} {_OBJECT_READS}".split()) - frozenset(f"{call} {queue}".split()),
    )


_table(
    list,
    "append extend insert clear sort reverse __setitem__ __iadd__ __imul__",
    "pop remove __delitem__",
    _SEQUENCE_READS,
)
_table(
    dict,
    "update clear __setitem__ __ior__",
    "pop popitem setdefault __delitem__",
    _MAPPING_READS,
)
_table(
    set,
    "add discard update difference_update intersection_update "
    "symmetric_difference_update clear __ior__ __iand__ __isub__ __ixor__",
    "pop remove",
    "__and__ __or__ __sub__ __xor__ __rand__ __ror__ __rsub__ __rxor__ copy difference "
    "intersection isdisjoint issubset issuperset symmetric_difference union",
)
# 3.12+: `__buffer__` exports the object's memory, which can be written
# through: a write that returns a value.
_BUFFER_CALLS = "__buffer__ __release_buffer__"
_table(
    bytearray,
    "append extend insert clear reverse __setitem__ __iadd__ __imul__",
    f"pop remove __delitem__ {_BUFFER_CALLS}",
    f"{_SEQUENCE_READS} __alloc__ __mod__ __rmod__ capitalize center decode endswith "
    "expandtabs find fromhex hex isalnum isalpha isascii isdigit islower isspace istitle "
    "isupper join ljust lower lstrip maketrans partition removeprefix removesuffix replace "
    "rfind rindex rjust rpartition rsplit rstrip split splitlines startswith strip swapcase "
    "title translate upper zfill",
)
_table(
    collections.deque,
    "append appendleft extend extendleft insert clear rotate reverse __setitem__ __iadd__ __imul__",
    "pop popleft remove __delitem__",
    _SEQUENCE_READS,
)
_table(
    collections.Counter,
    "update subtract clear __setitem__ __iadd__ __isub__ __iand__ __ior__",
    "pop popitem setdefault __delitem__ _keep_positive",
    f"{_MAPPING_READS} __add__ __sub__ __and__ __neg__ __pos__ __missing__ elements "
    "most_common total",
)
_table(
    collections.OrderedDict,
    "update clear move_to_end __setitem__ __ior__",
    "pop popitem setdefault __delitem__",
    _MAPPING_READS,
)
# defaultdict.__getitem__ (through __missing__) inserts a missing key: the
# coordinator must do it.
_table(
    collections.defaultdict,
    "update clear __setitem__ __ior__",
    "pop popitem setdefault __delitem__ __getitem__ __missing__",
    _MAPPING_READS,
)
_table(
    array.array,
    "append extend insert reverse byteswap clear frombytes fromlist fromunicode __setitem__ "
    "__iadd__ __imul__",
    f"pop remove fromfile __delitem__ {_BUFFER_CALLS}",
    f"{_SEQUENCE_READS} buffer_info tobytes tofile tolist tounicode",
)

# Methods that never mutate their receiver, whatever its type: a call of
# one of these on ``self.x`` is a read of x, not a write.
_READ_ONLY_NAMES = frozenset(
    [
        "get",
        "keys",
        "values",
        "items",
        "copy",
        "count",
        "index",
        "find",
        "rfind",
        "startswith",
        "endswith",
        "split",
        "rsplit",
        "join",
        "strip",
        "lstrip",
        "rstrip",
        "lower",
        "upper",
        "format",
        "encode",
        "decode",
        "issubset",
        "issuperset",
        "isdisjoint",
        "union",
        "intersection",
        "difference",
        "symmetric_difference",
        "most_common",
        "elements",
        "total",
        "tolist",
        "sum",
        "mean",
        "min",
        "max",
        "__len__",
        "__contains__",
        "__getitem__",
        "__iter__",
        "__eq__",
        "__repr__",
        "__str__",
    ]
)

# Builtins that only read their arguments.
_PURE_FUNCTIONS = frozenset(
    [
        "len",
        "sum",
        "min",
        "max",
        "sorted",
        "str",
        "repr",
        "int",
        "float",
        "bool",
        "abs",
        "round",
        "any",
        "all",
        "hash",
        "isinstance",
        "issubclass",
        "list",
        "tuple",
        "set",
        "frozenset",
        "dict",
        "format",
        "id",
        "type",
        "bytes",
        "divmod",
        "pow",
        "ord",
        "chr",
        "hex",
        "oct",
        "bin",
        "callable",
        "print",
    ]
)

_BUILTIN_METHODS = (
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.BuiltinFunctionType,
    types.ClassMethodDescriptorType,
)

_cache: dict[tuple[type, str], Access | None] = {}


def method_access(cls: type, name: str) -> Access | None:
    """How to run `name` on an instance of `cls`; None if it is not a method."""
    key = (cls, name)
    try:
        return _cache[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable class object
        return _lookup(cls, name)
    access = _cache[key] = _lookup(cls, name)
    return access


def _lookup(cls: type, name: str) -> Access | None:
    try:
        attr = inspect.getattr_static(cls, name)
    except AttributeError:
        return None
    declared = _declared(cls, name)
    if declared is not None:
        return declared
    for base in cls.__mro__:
        if name in vars(base):
            if base in _TABLES:
                queue, call, reads = _TABLES[base]
                if name in queue:
                    return _WHOLE_QUEUE
                if name in reads and name not in call:
                    return _WHOLE_LOCAL
                return _WHOLE_CALL  # a write, or a method the table does not know
            break
    if isinstance(attr, staticmethod):
        return _WHOLE_LOCAL
    if isinstance(attr, classmethod):
        return _WHOLE_CALL
    if inspect.isfunction(attr):
        facts = _Analysis(cls).function(attr)
        return facts.access() if facts is not None else _WHOLE_CALL
    if isinstance(attr, _BUILTIN_METHODS):
        return _WHOLE_CALL  # methods of types we know nothing about
    return None  # data, properties and other descriptors: see `property_access`


def property_access(cls: type, name: str) -> Access | None:
    """For a property of `cls`: LOCAL if its getter only reads, else CALL."""
    try:
        attr = inspect.getattr_static(cls, name)
    except AttributeError:
        return None
    if not isinstance(attr, property):
        if hasattr(type(attr), "__get__") and not inspect.isfunction(attr):
            return _WHOLE_CALL  # cached_property and other descriptors may write
        return None
    if attr.fget is None or not inspect.isfunction(attr.fget):
        return _WHOLE_CALL
    facts = _Analysis(cls).function(attr.fget)
    if facts is None or facts.writes != set():
        return _WHOLE_CALL
    reads = frozenset(facts.reads) if facts.reads is not None else None
    return Access(LOCAL, reads, frozenset(), frozenset(facts.assumes))


# Types whose every method only reads (they cannot change).
_IMMUTABLE = frozenset({str, bytes, int, float, complex, bool, tuple, frozenset, range, type(None)})
_absent = object()


def checked(access: Access, obj) -> Access:
    """`access` if the calls it assumed read-only are so on `obj` (each
    attribute holds a builtin whose table lists the method as a read), else
    the safe fallback: a blocking call that may write the whole object."""
    for attr, method in access.assumes:
        value = getattr(obj, attr, _absent)
        if value is _absent or not _reads_only(type(value), method):
            kind = CALL if access.kind == LOCAL else access.kind
            return Access(kind)
    return access


def _reads_only(cls: type, method: str) -> bool:
    for base in cls.__mro__:
        if method in vars(base):
            if base in _IMMUTABLE:
                return True
            table = _TABLES.get(base)
            return table is not None and method in table[2]
    return False


def _declared(cls: type, name: str) -> Access | None:
    meta = getattr(cls, "_shared_meta", None)
    if not isinstance(meta, dict) or name not in meta:
        return None
    spec = meta[name]
    reads = spec.get("reads")
    writes = spec.get("writes")
    reads = frozenset(reads) if reads is not None else None
    writes = frozenset(writes) if writes is not None else None
    if writes == frozenset():
        return Access(LOCAL, reads, writes)
    blocking = spec.get("returns", True) or spec.get("raises", False)
    return Access(CALL if blocking else QUEUE, reads, writes)


class _Facts:
    __slots__ = ("assumes", "raises", "reads", "returns", "writes")

    def __init__(self) -> None:
        self.reads: set[str] | None = set()
        self.writes: set[str] | None = set()
        self.returns = False
        self.raises = False
        self.assumes: set[tuple[str, str]] = set()

    def unknown(self) -> None:
        self.reads = None
        self.writes = None

    def read(self, attr: str) -> None:
        if self.reads is not None:
            self.reads.add(attr)

    def write(self, attr: str) -> None:
        self.read(attr)
        if self.writes is not None:
            self.writes.add(attr)

    def write_all(self, attrs: set[str] | None) -> None:
        """What a value reached through these attributes may change (it was
        returned by a property or a method, then mutated or passed on)."""
        if attrs is None:
            self.unknown()
            return
        for attr in attrs:
            self.write(attr)

    def merge(self, other: _Facts | None) -> None:
        if other is None:
            self.unknown()
            return
        self.assumes |= other.assumes
        if other.reads is None or self.reads is None:
            self.reads = None
        else:
            self.reads |= other.reads
        if other.writes is None or self.writes is None:
            self.writes = None
        else:
            self.writes |= other.writes
        self.raises |= other.raises

    def access(self) -> Access:
        reads = frozenset(self.reads) if self.reads is not None else None
        writes = frozenset(self.writes) if self.writes is not None else None
        assumes = frozenset(self.assumes) if writes is not None else frozenset()
        if writes == frozenset():
            return Access(LOCAL, reads, writes, assumes)
        if self.returns or self.raises:
            return Access(CALL, reads, writes, assumes)
        return Access(QUEUE, reads, writes, assumes)


class _Analysis:
    """Static analysis of the methods of one class (conservative)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.active: set[object] = set()
        overridden = ("__getattr__", "__getattribute__", "__setattr__", "__delattr__")
        self.opaque = any(getattr(cls, n, None) is not getattr(object, n, None) for n in overridden)

    def function(self, fn) -> _Facts | None:
        if self.opaque or fn in self.active:
            return None if self.opaque else _Facts()
        tree = _source_tree(fn)
        node = tree.body[0] if tree is not None and tree.body else None
        if not isinstance(node, ast.FunctionDef) or not node.args.args:
            return None
        self.active.add(fn)
        try:
            return self._facts(node)
        finally:
            self.active.discard(fn)

    def _facts(self, fdef: ast.FunctionDef) -> _Facts:
        facts = _Facts()
        me = fdef.args.args[0].arg
        parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(fdef):
            for child in ast.iter_child_nodes(parent):
                parents[child] = parent
        for node in ast.walk(fdef):
            if isinstance(node, ast.Return) and node.value is not None:
                if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                    facts.returns = True
            elif isinstance(node, ast.Yield | ast.YieldFrom | ast.Await):
                facts.returns = True
            elif isinstance(node, ast.Raise | ast.Assert):
                facts.raises = True
            elif isinstance(node, ast.Name) and node.id == me and node is not fdef:
                self._use_of_self(node, parents, facts)
            elif isinstance(node, ast.Call) and _is_super_call(node):
                facts.unknown()
        return facts

    def _use_of_self(self, node: ast.Name, parents, facts: _Facts) -> None:
        parent = parents.get(node)
        if not isinstance(node.ctx, ast.Load):
            facts.unknown()  # rebinding `self`
            return
        if not isinstance(parent, ast.Attribute):
            call = parent
            if isinstance(call, ast.Call) and node in call.args:
                fname = call.func.id if isinstance(call.func, ast.Name) else None
                if fname in ("isinstance", "type", "id", "repr", "str", "hash", "print"):
                    return
            facts.unknown()  # `self` escapes: anything may happen to it
            return
        attr = parent.attr
        if attr.startswith("__") and attr.endswith("__"):
            # self.__dict__, self.__class__...: whatever is done with them
            # may read or write any attribute.
            facts.unknown()
            return
        member = _static(self.cls, attr)
        if inspect.isfunction(member) or isinstance(member, staticmethod | classmethod):
            call = parents.get(parent)
            if isinstance(call, ast.Call) and call.func is parent:
                if inspect.isfunction(member):
                    helper = self.function(member)
                    facts.merge(helper)
                    if helper is not None and _mutating_use(call, parents):
                        # self._bucket().append(x): what the helper returns
                        # may be internal state; changing it writes what the
                        # helper could reach.
                        facts.write_all(helper.reads)
                elif isinstance(member, classmethod):
                    facts.unknown()
                return
            facts.unknown()  # a bound method escapes
            return
        if isinstance(member, property):
            if not isinstance(parent.ctx, ast.Load):
                facts.unknown()  # a setter or deleter
            elif member.fget is not None and inspect.isfunction(member.fget):
                getter = self.function(member.fget)
                facts.merge(getter)
                if getter is not None and _mutating_use(parent, parents):
                    # self.items.append(x), `items` returning self._items.
                    facts.write_all(getter.reads)
            else:
                facts.unknown()
            return
        if member is not None and hasattr(type(member), "__get__") and not _is_data(member):
            facts.unknown()  # some other descriptor
            return

        def assume(method: str) -> bool:
            facts.assumes.add((attr, method))
            return True

        if _mutating_use(parent, parents, assume):
            facts.write(attr)
        else:
            facts.read(attr)


def _source_tree(fn) -> ast.Module | None:
    """The parsed source of `fn`, or None if it cannot be found for sure.

    cloudpickle ships functions of classes defined in ``__main__`` by value
    and drops their file name; their source is then looked up in the main
    module's file at the function's first line, and accepted only if it
    compiles to the very same bytecode.
    """
    code = fn.__code__
    if code.co_filename != "<dynamic-code>":
        try:
            return ast.parse(textwrap.dedent(inspect.getsource(fn)))
        except (OSError, TypeError, SyntaxError, IndentationError):
            return None
    files = []
    for module_name in (fn.__module__, "__main__", "__mp_main__"):
        path = getattr(sys.modules.get(module_name), "__file__", None)
        if path and path not in files:
            files.append(path)
    for path in files:
        lines = linecache.getlines(path)
        if len(lines) < code.co_firstlineno:
            continue
        try:
            block = textwrap.dedent("".join(inspect.getblock(lines[code.co_firstlineno - 1 :])))
            tree = ast.parse(block)
            compiled = compile(block, path, "exec")
        except (SyntaxError, IndentationError, ValueError, TypeError):
            continue
        for const in compiled.co_consts:
            if (
                isinstance(const, types.CodeType)
                and const.co_name == code.co_name
                and const.co_code == code.co_code
                and const.co_names == code.co_names
            ):
                return tree
    return None


def _static(cls: type, name: str):
    try:
        return inspect.getattr_static(cls, name)
    except AttributeError:
        return None


def _is_data(member) -> bool:
    # Plain class attributes (numbers, strings, containers) shadowed per instance.
    return not callable(member) or isinstance(member, type)


def _is_super_call(node: ast.Call) -> bool:
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "super"
    )


def _mutating_use(expr: ast.expr, parents, assume=None) -> bool:
    """Does this use of ``self.x`` (or of what a call returned) possibly
    change what it refers to?  When in doubt, yes.

    A call of a method named in `_READ_ONLY_NAMES` directly on ``self.x``
    counts as a read only if `assume(method)` records it, to be confirmed on
    the object (`checked`); on anything else it may be a user method that
    writes, so it is a write."""
    if not isinstance(getattr(expr, "ctx", _LOAD), ast.Load):
        return True  # self.x = … / del self.x
    # Climb the chain self.x.y[k].z to its top.
    top = expr
    while True:
        parent = parents.get(top)
        if isinstance(parent, ast.Attribute | ast.Subscript) and parent.value is top:
            if not isinstance(parent.ctx, ast.Load):
                return True  # self.x[k] = … / self.x.y = …
            top = parent
            continue
        break
    parent = parents.get(top)
    if isinstance(parent, ast.Call) and parent.func is top:
        # A method called on the chain: self.x.append(…) writes x.
        if not (isinstance(top, ast.Attribute) and top.attr in _READ_ONLY_NAMES):
            return True
        if assume is None or top.value is not expr or not assume(top.attr):
            return True
        # self.x.get(k): a read of x, if what it returns is only read too
        # (self.x.get(k).append(v) writes x).
        return _mutating_use(parent, parents)
    if isinstance(parent, ast.AugAssign) and parent.target is top:
        return True
    if isinstance(
        parent,
        ast.Compare
        | ast.BinOp
        | ast.UnaryOp
        | ast.BoolOp
        | ast.FormattedValue
        | ast.If
        | ast.While
        | ast.IfExp
        | ast.Assert
        | ast.Return
        | ast.Expr,
    ):
        return False
    if isinstance(parent, ast.Subscript) and parent.slice is top:
        return False
    if isinstance(parent, ast.Call) and top in parent.args:
        func = parent.func
        return not (isinstance(func, ast.Name) and func.id in _PURE_FUNCTIONS)
    if isinstance(parent, ast.For) and parent.iter is top:
        return _loop_mutates(parent.target, parent.body)
    if isinstance(parent, ast.comprehension) and parent.iter is top:
        return _loop_mutates(parent.target, [parents.get(parent)])
    return True  # bound to a name, passed on, stored: it may be changed later


_LOAD = ast.Load()


def _loop_mutates(target: ast.AST, body) -> bool:
    """Does a loop body (possibly) change the elements it iterates over?"""
    names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Attribute | ast.Subscript) and not isinstance(
                node.ctx, ast.Load
            ):
                root = node.value
                while isinstance(root, ast.Attribute | ast.Subscript):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in names:
                    return True
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                root = node.func.value
                while isinstance(root, ast.Attribute | ast.Subscript):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in names:
                    # A method of an element: the element's type is unknown
                    # here, and its `get` may be an LRU cache's.  A write.
                    return True
            if isinstance(node, ast.Call):
                pure = isinstance(node.func, ast.Name) and node.func.id in _PURE_FUNCTIONS
                passed = [*node.args, *(k.value for k in node.keywords)]
                if not pure and any(isinstance(a, ast.Name) and a.id in names for a in passed):
                    return True  # handed to code that may change it
    return False
