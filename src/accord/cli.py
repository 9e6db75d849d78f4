"""The ``accord`` command.

Subcommands are click commands on the `main` group; a new one (say ``accord
coordinator``) is one more ``@main.command()`` function here.
"""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
