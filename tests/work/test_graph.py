"""TaskGraph: dependency order, labels, fingerprints, history and pruning."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from work_helpers import SURVIVOR, barrier, wait_until

from accord.work import InvalidWork, Task, TaskGraph
from accord.work._schema import workers as workers_table

# Two chains that join, a wide middle, and a task with no deps at the end.
GRAPH = (
    [["root", []]]
    + [[f"a{i}", ["root"] if i == 0 else [f"a{i - 1}"]] for i in range(6)]
    + [[f"b{i}", ["root"]] for i in range(10)]
    + [["join", ["a5"] + [f"b{i}" for i in range(10)]], ["last", ["join"]], ["alone", []]]
)


def _tasks(graph=GRAPH, **fingerprints):
    return [Task(name, deps=deps, fingerprint=fingerprints.get(name)) for name, deps in graph]


def test_two_workers_respect_dependency_order(db, workers, tmp_path):
    config = {
        "db": db,
        "name": "g",
        "graph": GRAPH,
        "barrier": [str(barrier(tmp_path)), 2],
        "work_s": 0.02,
    }
    done = workers.run([config] * 2)
    assert sorted(done[0] + done[1]) == sorted(name for name, _ in GRAPH)
    graph = TaskGraph(_tasks(), db=db, name="g", progress=False)
    # History ids follow commit order: each start comes after its deps completed.
    rows = graph.history()
    started = {h.key: i for i, h in enumerate(rows) if h.status == "running"}
    completed = {h.key: i for i, h in enumerate(rows) if h.status == "completed"}
    for name, deps in GRAPH:
        for dep in deps:
            assert completed[dep] < started[name], (dep, name)
    assert len({h.worker for h in rows}) == 2, "the work was not shared"


def test_changed_fingerprint_reruns_the_task_and_exactly_its_downstream(sqlite_db):
    graph = [
        ["fetch", []],
        ["clean", ["fetch"]],
        ["train", ["clean"]],
        ["eval", ["train"]],
        ["docs", ["fetch"]],
    ]
    first = TaskGraph(_tasks(graph, clean="v1"), db=sqlite_db, name="ml", progress=False)
    assert [t.name for t in first] == ["fetch", "clean", "train", "eval", "docs"]
    same = TaskGraph(_tasks(graph, clean="v1"), db=sqlite_db, name="ml", progress=False)
    assert same.invalidated == [] and list(same) == []
    changed = TaskGraph(_tasks(graph, clean="v2"), db=sqlite_db, name="ml", progress=False)
    assert sorted(changed.invalidated) == ["clean", "eval", "train"]
    assert [t.name for t in changed] == ["clean", "train", "eval"]
    history = changed.history("clean")
    assert [(h.status, h.fingerprint) for h in history] == [
        ("running", "v1"),
        ("completed", "v1"),
        ("invalidated", "v2"),
        ("running", "v2"),
        ("completed", "v2"),
    ]
    assert [h.status for h in changed.history("fetch")] == ["running", "completed"]


def test_labels_decide_who_takes_which_task(sqlite_db):
    tasks = [
        Task("prep"),
        Task("train", deps=["prep"], requirements={"gpu"}),
        Task("plot", deps=["train"]),
        Task("other"),
    ]
    cpu = TaskGraph(tasks, db=sqlite_db, name="g", progress=False)
    assert [t.name for t in cpu] == ["prep", "other"]  # train needs a gpu; nothing runs
    gpu = TaskGraph(tasks, db=sqlite_db, name="g", labels={"gpu", "cpu"}, progress=False)
    assert [t.name for t in gpu] == ["train", "plot"]


def test_history_is_pruned_without_breaking_references(sqlite_db):
    graph = [["a", []], ["b", ["a"]]]
    for version in ("1", "2", "3"):
        assert (
            len(list(TaskGraph(_tasks(graph, a=version), db=sqlite_db, name="g", progress=False)))
            == 2
        )
    graph_now = TaskGraph(_tasks(graph, a="3"), db=sqlite_db, name="g", progress=False)
    assert len(graph_now.history("a")) == 8  # 3 x (running, completed) + 2 invalidated
    assert graph_now.prune_history(keep_latest=2) == 12
    assert [h.status for h in graph_now.history("a")] == ["running", "completed"]
    assert all(h.worker for h in graph_now.history())
    # The workers of the first two runs are referenced by nothing any more.
    with graph_now._engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(workers_table)).scalar() == 1
    graph_now.prune_history(keep_latest=1)
    assert [h.status for h in graph_now.history()] == ["completed", "completed"]
    with pytest.raises(InvalidWork):
        graph_now.prune_history(keep_latest=0)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([Task("a"), Task("a")], "duplicate task name 'a'"),
        ([Task("a", deps=["nope"])], "depends on 'nope', which is not in the graph"),
        (
            [Task("a", deps=["c"]), Task("b", deps=["a"]), Task("c", deps=["b"])],
            "cycle: a -> c -> b -> a",
        ),
        (["a"], "takes Task objects"),
    ],
)
def test_bad_graphs_are_refused_before_any_work(sqlite_db, tasks, message):
    with pytest.raises(InvalidWork, match=message):
        TaskGraph(tasks, db=sqlite_db)


def test_a_string_where_names_are_expected_is_refused(sqlite_db):
    # Not one dependency per letter, nor requirements/labels {"g", "p", "u"}.
    with pytest.raises(InvalidWork, match="deps must be a collection of names"):
        Task("clean", deps="fetch")
    with pytest.raises(InvalidWork, match="requirements must be a collection of names"):
        Task("train", requirements="gpu")
    with pytest.raises(InvalidWork, match="labels must be a collection"):
        TaskGraph([Task("train", requirements={"gpu"})], db=sqlite_db, labels="gpu")


def test_a_name_is_either_a_queue_or_a_graph(sqlite_db):
    from accord.work import WorkQueue

    WorkQueue([1], db=sqlite_db, name="x", progress=False)
    with pytest.raises(InvalidWork, match="already used by a WorkQueue"):
        TaskGraph([Task("a")], db=sqlite_db, name="x")


def test_deps_changed_since_an_earlier_run_are_the_ones_respected(sqlite_db):
    def run(*tasks):
        graph = TaskGraph(tasks, db=sqlite_db, name="g", progress=False)
        return [t.name for t in graph]

    assert run(Task("x"), Task("y", fingerprint="1")) == ["x", "y"]
    # y now depends on a new task: it must wait for it, not keep its old edges.
    assert run(Task("x"), Task("z"), Task("y", deps=["z"], fingerprint="2")) == ["z", "y"]
    # y waits for w, which this worker cannot do...
    assert run(Task("w", requirements={"gpu"}), Task("y", deps=["w"], fingerprint="3")) == []
    # ... until a graph without that dependency no longer waits for it.
    assert run(Task("y", fingerprint="4")) == ["y"]


def test_a_fingerprint_changed_while_the_task_runs_gets_it_done_again(db):
    def graph(version):
        tasks = [Task("clean", fingerprint=version), Task("train", deps=["clean"])]
        return TaskGraph(tasks, db=db, name="ml", progress=False)

    old = iter(graph("v1"))
    assert next(old).name == "clean"  # an old worker runs clean...
    new = graph("v2")  # ... when the code changes and a new worker starts
    assert new.invalidated == []
    # The old worker's result is not what v2 describes, and clean as v2 is
    # not the old worker's to do: train does not run on top of a v1 clean.
    assert list(old) == []
    assert [t.name for t in new] == ["clean", "train"]
    assert [(h.status, h.fingerprint) for h in new.history("clean")] == [
        ("running", "v1"),
        ("completed", "v1"),
        ("invalidated", "v2"),
        ("running", "v2"),
        ("completed", "v2"),
    ]
    assert list(graph("v2")) == []


def test_a_task_running_downstream_of_an_invalidated_one_is_done_again(db):
    def graph(version):
        tasks = [Task("fetch"), Task("clean", fingerprint=version), Task("train", deps=["clean"])]
        return TaskGraph(tasks, db=db, name="ml", progress=False)

    old = iter(graph("v1"))
    assert [next(old).name for _ in range(3)] == ["fetch", "clean", "train"]
    new = graph("v2")  # while train runs on the v1 clean
    assert sorted(new.invalidated) == ["clean", "train"]
    assert list(old) == []  # its train is not recorded; clean as v2 is not its to do
    assert [t.name for t in new] == ["clean", "train"]
    assert [h.status for h in new.history("train")] == [
        "running",
        "invalidated",
        "running",
        "completed",
    ]


def test_an_invalidated_task_gets_its_retries_back(sqlite_db, workers):
    options = {"heartbeat_timeout": 0.5, "heartbeat_interval": 0.1, "max_retries": 1}

    def killed_once_then_done(version):
        config = {
            "db": sqlite_db,
            "name": "g",
            "graph": [["t", []]],
            "fingerprints": {"t": version},
            "options": options,
        }
        victim = workers.start(**config, hang_on=["t"])
        wait_until(lambda: victim.stdout.readline().startswith("start t"), what="t to start")
        victim.kill()
        victim.wait()
        survivor = {**config, "options": {**SURVIVOR, "max_retries": 1}}
        return workers.finish(workers.start(**survivor))

    assert killed_once_then_done("v1") == ["t"]
    # Done again for v2: one death of this run is within max_retries=1.
    assert killed_once_then_done("v2") == ["t"]


def test_a_task_that_failed_downstream_of_an_invalidated_one_is_tried_again(db):
    def graph(version):
        tasks = [Task("clean", fingerprint=version), Task("train", deps=["clean"])]
        return TaskGraph(tasks, db=db, name="ml", progress=False, failure_policy="stop")

    with pytest.raises(ValueError):
        for task in graph("v1"):
            if task.name == "train":
                raise ValueError("clean's output is wrong")
    # clean is fixed: a new fingerprint re-runs it, and train with it,
    # instead of every worker stopping on train's old failure.
    fixed = graph("v2")
    assert sorted(fixed.invalidated) == ["clean", "train"]
    assert [t.name for t in fixed] == ["clean", "train"]
