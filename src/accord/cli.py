"""The ``accord`` command.

``accord status DB``, ``accord reset DB --failed|--all`` and ``accord drop DB
--name NAME`` (work queues),
``accord coordinator URL --name NAME`` (redis shares).  Each subcommand is
a click command on the `main` group and imports its layer only when run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._core._errors import AccordError


@click.group()
@click.version_option(package_name="accord")
def main() -> None:
    """accord: shared Python objects and work distribution."""


def _engine(db: str, read_only: bool = False):
    from .work._db import open_engine

    try:
        return open_engine(db, must_exist=True, read_only=read_only)
    except AccordError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("db")
@click.option("--name", help="Only this queue or graph (default: all in DB).")
@click.option(
    "--failures", default=20, show_default=True, help="How many failures to list per queue."
)
def status(db: str, name: str | None, failures: int) -> None:
    """Where the work queues in DB stand: items per status, active workers, failures.

    DB is the URL the workers use, e.g. sqlite:///run.sqlite.  It is only
    read: no lock is taken that would hold a worker up, and a read-only copy
    of a SQLite file (or one on a read-only mount) works.
    """
    from .work._status import report

    engine = _engine(db, read_only=True)
    try:
        click.echo(report(engine, name, failures))
    except AccordError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()


@main.command()
@click.argument("db")
@click.option("--name", help="Only this queue or graph (default: all in DB).")
@click.option("--failed", is_flag=True, help="Re-queue failed items.")
@click.option(
    "--all", "everything", is_flag=True, help="Re-queue every item: completed, failed, running."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (--all).")
def reset(db: str, name: str | None, failed: bool, everything: bool, yes: bool) -> None:
    """Put items of the queues in DB back in the queue, to be done again.

    --all starts the queues over: completed items are done again, and
    running ones are handed out again (their workers' outcomes are not
    recorded).
    """
    from .work._status import reset as reset_items
    from .work._store import COMPLETED, FAILED, RUNNING

    if failed == everything:
        raise click.UsageError("say which items to re-queue: --failed or --all")
    if everything and not yes:
        where = f"queue {name!r}" if name else "every queue"
        click.confirm(f"Re-queue every item of {where} in {db}?", abort=True, err=True)
    statuses = (COMPLETED, FAILED, RUNNING) if everything else (FAILED,)
    engine = _engine(db)
    try:
        for queue, n in reset_items(engine, name, statuses).items():
            click.echo(f"{queue}: {n} {'' if everything else 'failed '}items re-queued")
    except AccordError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()


@main.command()
@click.argument("db")
@click.option("--name", required=True, help="The queue or graph to delete.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def drop(db: str, name: str, yes: bool) -> None:
    """Delete the queue or graph NAME from DB, with its items and history.

    Refused while workers of it are running.  The next worker that builds
    a queue of that name starts it afresh.
    """
    from .work._status import drop as drop_queue

    if not yes:
        click.confirm(f"Delete {name!r} and all its history from {db}?", abort=True, err=True)
    engine = _engine(db)
    try:
        n = drop_queue(engine, name)
    except AccordError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    click.echo(f"{name}: dropped ({n} items)")


@main.command()
@click.argument("url")
@click.option("--name", required=True, help="The share's name.")
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding the share's key (default: $ACCORD_KEY).",
)
@click.option(
    "--wait",
    type=float,
    default=None,
    help="Give up if another coordinator still holds the share after this many "
    "seconds (default: wait for ever, as a standby).",
)
@click.option("--commit-window", type=float, default=0.002, show_default=True, help="Seconds.")
def coordinator(
    url: str, name: str, key_file: Path | None, wait: float | None, commit_window: float
) -> None:
    """Run the coordinator of the redis share NAME at URL, as a service.

    It waits until no other coordinator holds the share (a hot standby), takes
    it over from the last committed state and runs until the share is closed.
    """
    from ._cli_coordinator import run

    sys.exit(run(url, name, key_file, wait, commit_window))


if __name__ == "__main__":
    main()
