"""The ``accord`` command.

``accord status DB`` and ``accord reset DB --failed`` (work queues),
``accord coordinator URL --name NAME`` (redis shares).  Each subcommand is
a click command on the `main` group and imports its layer only when run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._errors import AccordError


@click.group()
@click.version_option(package_name="accord")
def main() -> None:
    """accord: shared Python objects and work distribution."""


def _engine(db: str):
    from .work._db import open_engine

    try:
        return open_engine(db, must_exist=True)
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

    DB is the URL the workers use, e.g. sqlite:///run.sqlite.
    """
    from .work._status import report

    engine = _engine(db)
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
def reset(db: str, name: str | None, failed: bool) -> None:
    """Put items of the queues in DB back in the queue, to be done again."""
    from .work._status import reset as reset_items

    if not failed:
        raise click.UsageError("say which items to re-queue: --failed")
    engine = _engine(db)
    try:
        for queue, n in reset_items(engine, name).items():
            click.echo(f"{queue}: {n} failed items re-queued")
    except AccordError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()


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
