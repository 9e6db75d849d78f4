"""The commands a client sends to the coordinator.

A command is the tuple ``(op, reply_id, waits, writes, *fields)``: `waits`
flattens (slot, target) pairs that must be reached before it runs, `writes`
lists the flag slots it raised.  Paths address an object inside the share:
``(name, kind, key, kind, key, ...)`` with kind ATTR or ITEM.
"""

ASSIGN = 1  # (place, value): set the last step of `place`
DELETE = 2  # (place,)
AUGMENT = 3  # (place, operator name, operand): place = place <op>= operand
CALL = 4  # (path, method, packed args)
APPLY = 5  # (path, packed (fn, args, kwargs), replace): fn(obj) [obj = result]
BARRIER = 6  # (): reply once the waits are applied and committed
FLUSH = 7  # (): reply once everything before it is committed
ACQUIRE = 8  # (lock name, owner token)
RELEASE = 9  # (lock name, owner token)
NAMES = 11  # (): reply with the sorted names in the share

ATTR = 0
ITEM = 1

# Reply statuses
OK = 0
ERROR = 1

# The in-place operators, by the symbol of `x op= y`: the one table the
# proxies, the augmented-assignment detector (`_augmented`) and the
# coordinator use.  The name is the `operator` module's function (``iadd``)
# and, in dunders, the method (``__iadd__``); the binary operator is the name
# without its leading "i" (``add``).  tests/share/test_augmented.py checks it
# against the operators of the running Python.
INPLACE_OPERATORS = {
    "+=": "iadd",
    "-=": "isub",
    "*=": "imul",
    "@=": "imatmul",
    "/=": "itruediv",
    "//=": "ifloordiv",
    "%=": "imod",
    "**=": "ipow",
    "<<=": "ilshift",
    ">>=": "irshift",
    "&=": "iand",
    "^=": "ixor",
    "|=": "ior",
}
INPLACE = frozenset(INPLACE_OPERATORS.values())


def describe(path: tuple) -> str:
    """``share.obj.items[3]`` for the path (obj, ATTR, items, ITEM, 3)."""
    text = f"share.{path[0]}"
    for i in range(1, len(path), 2):
        text += f".{path[i + 1]}" if path[i] == ATTR else f"[{path[i + 1]!r}]"
    return text
