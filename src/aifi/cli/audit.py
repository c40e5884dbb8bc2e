"""``aifi audit ...``: verify and export the hash-chained audit trail of a hub or an edge.

``verify`` exits 0 when every chain is intact and 1 with one line per
problem, each naming the chain (the hub keeps one per hospital, one for
itself, and ``main`` for events from before that) and the sequence number
where it breaks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aifi.errors import AifiError

if TYPE_CHECKING:
    from aifi.audit.store import SqlAuditLog

__all__ = ["app"]

app = typer.Typer(help="The audit trail: verify and export.", no_args_is_help=True)

HubConfig = Annotated[
    Path | None, typer.Option("--hub-config", help="the hub's hub.toml: its database's trail")
]
EdgeDb = Annotated[
    Path | None, typer.Option("--edge-db", help="the edge's SQLite file holding its trail")
]


@app.command()
def verify(
    hub_config: HubConfig = None,
    edge_db: EdgeDb = None,
    jsonl: Annotated[
        Path | None, typer.Option("--jsonl", help="an export made by 'aifi audit export'")
    ] = None,
) -> None:
    """Check the chain: a changed, deleted, reordered or cut-off event is found and named."""
    try:
        if jsonl is not None:
            from aifi.audit.jsonl import verify_jsonl

            with jsonl.open(encoding="utf-8") as fp:
                problems = verify_jsonl(fp)
            count, chains = None, 0
        else:
            with _log(hub_config, edge_db) as log:
                problems = log.verify()
                count, chains = log.count(), len(log.heads())
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if problems:
        for problem in problems:
            typer.echo(problem)
        typer.echo(f"the audit trail is NOT intact: {len(problems)} problems", err=True)
        raise typer.Exit(1)
    if count is None:
        typer.echo("the audit trail is intact")
    elif chains > 1:
        typer.echo(f"the audit trail is intact ({count} events in {chains} chains)")
    else:
        typer.echo(f"the audit trail is intact ({count} events)")


@app.command()
def export(
    hub_config: HubConfig = None,
    edge_db: EdgeDb = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file to write; default stdout")
    ] = None,
    hospital: Annotated[str | None, typer.Option(help="only this hospital's events (id)")] = None,
    chain: Annotated[
        str | None, typer.Option(help="only this chain (hospital:<id>, hub, main); verifiable")
    ] = None,
) -> None:
    """Write the trail as JSON lines, one event per line, chain after chain in chain order."""
    try:
        with _log(hub_config, edge_db) as log:
            if output is None:
                count = log.export_jsonl(sys.stdout, hospital=hospital, chain=chain)
            else:
                with output.open("w", encoding="utf-8") as fp:
                    count = log.export_jsonl(fp, hospital=hospital, chain=chain)
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{count} events exported", err=True)


@contextmanager
def _log(hub_config: Path | None, edge_db: Path | None) -> Iterator[SqlAuditLog]:
    from aifi.errors import ConfigError

    if (hub_config is None) == (edge_db is None):
        raise ConfigError("name exactly one of --hub-config or --edge-db")
    if edge_db is not None:
        if not edge_db.is_file():
            raise ConfigError(f"{edge_db} does not exist")
        from aifi.audit.sqlite import SqliteAuditLog

        edge_log = SqliteAuditLog(edge_db)
        try:
            yield edge_log
        finally:
            edge_log.close()
        return
    assert hub_config is not None
    from aifi.hub.auditing import audit_log
    from aifi.hub.config import load_hub_settings
    from aifi.hub.db import make_engine

    engine = make_engine(load_hub_settings(hub_config).effective_database_url)
    try:
        yield audit_log(engine)
    finally:
        engine.dispose()
