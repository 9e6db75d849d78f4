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

# In-place operators `share.x op= y` may use, by the dunder name sent.
INPLACE = [
    "iadd",
    "isub",
    "imul",
    "imatmul",
    "itruediv",
    "ifloordiv",
    "imod",
    "ipow",
    "ilshift",
    "irshift",
    "iand",
    "ixor",
    "ior",
]
