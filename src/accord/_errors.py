"""The exceptions accord raises.  All derive from `AccordError`."""

from __future__ import annotations


class AccordError(Exception):
    """Base class of every error accord raises itself."""


class CoordinatorLost(AccordError):
    """The share's coordinator is gone: it died, or the share was closed.

    Raised by every pending and later operation on the share within about a
    second of the coordinator's death.  To recover, the creating process
    calls `Share.restart()`, which starts a new coordinator from the last
    committed state; other processes follow it on their next operation.
    """


class ShareClosed(CoordinatorLost):
    """The share was closed with `close()`; it cannot be used any more."""


class UnshareableError(AccordError, TypeError):
    """A value cannot be shared because it cannot be serialized.

    Raised at assignment time; the message names the attribute (down to the
    nested attribute or item that failed) and the reason.
    """


class RemoteTraceback(Exception):
    """Holds the formatted traceback of an exception raised on the coordinator.

    Attached as ``__cause__`` of the exception re-raised in the caller, so
    tracebacks show where on the coordinator the error happened.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
