"""`Task` and `TaskGraph`: work handed out in dependency order."""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Sequence
from typing import Any, Unpack

from ._errors import InvalidWork
from ._queue import WorkOptions, _Work
from ._store import Entry


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a `TaskGraph`.

    ``deps`` names the tasks that must be completed before this one is
    handed out.  ``fingerprint`` is anything that changes when the task's
    result would (a hash of its code, parameters and inputs): a completed
    task whose fingerprint changed is done again, and so is everything
    downstream of it.  ``requirements`` are labels a worker must have to
    take the task (``TaskGraph(..., labels={"gpu"})``).  ``data`` is yours.

        >>> from accord.work import Task
        >>> task = Task("train", deps=["clean"], fingerprint="v2", requirements={"gpu"})
        >>> task.deps, task.requirements
        (('clean',), frozenset({'gpu'}))
    """

    name: str
    deps: Sequence[str] = ()
    fingerprint: str | None = None
    requirements: Iterable[str] = frozenset()
    data: Any = None

    def __post_init__(self) -> None:
        for field in ("deps", "requirements"):
            value = getattr(self, field)
            if isinstance(value, str):
                # tuple("fetch") would be five one-letter deps; frozenset("gpu")
                # requirements no worker has, silently.
                raise InvalidWork(
                    f"task {self.name!r}: {field} must be a collection of names, "
                    f"not the string {value!r} (write [{value!r}])"
                )
        object.__setattr__(self, "deps", tuple(self.deps))
        object.__setattr__(self, "requirements", frozenset(self.requirements))
        if not isinstance(self.name, str) or not self.name:
            raise InvalidWork(f"a task's name must be a non-empty string, not {self.name!r}")
        for label in self.requirements:
            if not isinstance(label, str) or not label or "," in label:
                raise InvalidWork(
                    f"task {self.name!r}: requirement {label!r} must be a "
                    "non-empty string without ','"
                )


class TaskGraph(_Work[Task]):
    """Tasks handed out to independent workers once their dependencies are done.

    Every worker builds the same graph and iterates; a task is handed out
    when all its ``deps`` are completed, to one worker, and completed when
    the loop body finishes.  Completed tasks are skipped by later runs
    unless their fingerprint changed: then they and everything downstream
    are done again (``graph.invalidated`` lists them).

        >>> from accord.work import Task, TaskGraph
        >>> db = "sqlite:///run.sqlite"  # a file in the current directory
        >>> def pipeline(version):
        ...     return [Task("fetch"), Task("clean", deps=["fetch"], fingerprint=version),
        ...             Task("train", deps=["clean"]), Task("report")]
        >>> [t.name for t in TaskGraph(pipeline("v1"), db=db, name="ml", progress=False)]
        ['fetch', 'clean', 'train', 'report']
        >>> graph = TaskGraph(pipeline("v2"), db=db, name="ml", progress=False)
        >>> graph.invalidated, [t.name for t in graph]
        (['clean', 'train'], ['clean', 'train'])

    ``labels`` are what this worker offers: it takes only tasks whose
    ``requirements`` are among them.  The other parameters are those of
    `WorkQueue`.  A graph with an unknown dependency, a cycle or a duplicate
    name raises `InvalidWork` before anything is handed out.
    """

    _kind = "graph"

    def __init__(
        self,
        tasks: Iterable[Task],
        db: str = "sqlite:///run.sqlite",
        name: str = "default",
        *,
        labels: Iterable[str] = (),
        **options: Unpack[WorkOptions],
    ) -> None:
        tasks = list(tasks)
        order = topological_order(tasks)
        entries = [
            Entry(
                t.name,
                position,
                ",".join(sorted(t.requirements)),
                t.fingerprint,
                tuple(t.deps),
            )
            for position, t in enumerate(order)
        ]
        objects = {t.name: t for t in tasks}
        super().__init__(entries, objects, db=db, name=name, labels=labels, **options)


def topological_order(tasks: Sequence[Task]) -> list[Task]:
    """The tasks with every task after its deps, otherwise in the given order.

    Raises `InvalidWork` for a duplicate name, an unknown dependency or a cycle.
    """
    index: dict[str, int] = {}
    for i, task in enumerate(tasks):
        if not isinstance(task, Task):
            raise InvalidWork(f"a TaskGraph takes Task objects, not {task!r}")
        if task.name in index:
            raise InvalidWork(f"duplicate task name {task.name!r}")
        index[task.name] = i
    waiting = [0] * len(tasks)
    children: list[list[int]] = [[] for _ in tasks]
    for i, task in enumerate(tasks):
        for dep in task.deps:
            if dep not in index:
                raise InvalidWork(
                    f"task {task.name!r} depends on {dep!r}, which is not in the graph"
                )
            waiting[i] += 1
            children[index[dep]].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(tasks[i])
        for child in children[i]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    if len(order) < len(tasks):
        raise InvalidWork(
            f"the task graph has a cycle: {' -> '.join(_cycle(tasks, index, waiting))}"
        )
    return order


def _cycle(tasks: Sequence[Task], index: dict[str, int], waiting: list[int]) -> list[str]:
    """One cycle among the tasks Kahn's algorithm could not order."""
    start = next(i for i, n in enumerate(waiting) if n)
    path, seen = [start], {start: 0}
    while True:
        here = tasks[path[-1]]
        nxt = next(index[d] for d in here.deps if waiting[index[d]])
        if nxt in seen:
            return [tasks[i].name for i in path[seen[nxt] :]] + [tasks[nxt].name]
        seen[nxt] = len(path)
        path.append(nxt)
