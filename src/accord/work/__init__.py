"""Work distribution: independent workers share one list or graph of work.

Any number of processes — started by hand, by a scheduler such as SLURM, on
several machines — iterate over the same `WorkQueue` or `TaskGraph` (same
``name``, same ``db``), and each item is done once.

    >>> from accord.work import Task, TaskGraph
    >>> db = "sqlite:///run.sqlite"  # a file in the current directory
    >>> tasks = [Task("fetch"), Task("clean", deps=["fetch"]), Task("train", deps=["clean"])]
    >>> [task.name for task in TaskGraph(tasks, db=db, name="pipeline", progress=False)]
    ['fetch', 'clean', 'train']
"""

from ._errors import DatabaseUnavailable, InvalidWork, WorkError, WorkFailed
from ._graph import Task, TaskGraph
from ._history import HistoryEntry
from ._lock import WorkLock
from ._queue import WorkQueue

__all__ = [
    "DatabaseUnavailable",
    "HistoryEntry",
    "InvalidWork",
    "Task",
    "TaskGraph",
    "WorkError",
    "WorkFailed",
    "WorkLock",
    "WorkQueue",
]

# Tracebacks, reprs and pickles name the public path, as the user imports it.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
