"""``aifi edge ...``: run the hospital gateway."""

from __future__ import annotations

import getpass
import logging
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aifi.cli import edge_policy
from aifi.errors import AifiError

app = typer.Typer(help="The hospital edge gateway.", no_args_is_help=True)
app.add_typer(edge_policy.app, name="policy")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="edge.toml")]
logger = logging.getLogger(__name__)


@app.command()
def serve(config: ConfigOption = Path("edge.toml")) -> None:
    """Run the DICOM listener, the outbox and result delivery until stopped."""
    from aifi.edge.checks import check_listener
    from aifi.edge.config import load_edge_settings
    from aifi.edge.service import EdgeService

    try:
        settings = load_edge_settings(config)
        if settings.listener.port and not (port := check_listener(settings.listener)).ok:
            raise typer.Exit(_fail(port.detail))  # one line, before anything else is logged
        service = EdgeService(settings)
        service.start()
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
    try:
        service.wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()


@app.command()
def tasks(
    config: ConfigOption = Path("edge.toml"),
    failed: Annotated[
        bool, typer.Option("--failed", help="only dead letters, failed and canceled tasks")
    ] = False,
) -> None:
    """List the edge's tasks: state, attempts, results in PACS, urgent notification."""
    from aifi.edge.config import load_edge_settings
    from aifi.edge.state import DEAD_LETTER, EdgeState

    settings = load_edge_settings(config)
    state = EdgeState(settings.data_dir / "edge.db")
    table = Table(
        "task",
        "algorithm",
        "state",
        "attempts",
        "verified",
        "in PACS",
        "urgent / RIS",
        "updated",
        "reason",
    )
    wanted = (DEAD_LETTER, "failed", "CANCELED") if failed else None
    for task in state.tasks(wanted):
        verified = "" if task.verified is None else ("yes" if task.verified else "NO")
        stored = sum(1 for s in state.deliveries(task.id).values() if s == "stored")
        urgent = ("URGENT: " + (task.notification or "pending")) if task.urgent else ""
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task.updated_at))
        table.add_row(
            task.id[:12],
            task.algorithm_id,
            task.state,
            str(task.attempts),
            verified,
            str(stored),
            escape(urgent),
            updated,
            escape(task.reason or ""),
        )
    Console().print(table)
    paused = state.receiving_paused()
    if paused is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(paused["at"]))
        Console(stderr=True).print(
            f"[red]receiving paused since {since}[/red] (C-STOREs answered 0xA700):"
            f" {escape(str(paused['detail']))}"
        )


@app.command()
def retry(
    task: Annotated[
        str, typer.Argument(help="task id (or a unique prefix), from 'tasks --failed'")
    ],
    config: ConfigOption = Path("edge.toml"),
    by: Annotated[str, typer.Option(help="who asks, for the audit trail")] = getpass.getuser(),
) -> None:
    """Send a dead-letter, failed or canceled task again (audited)."""
    from aifi.edge.config import load_edge_settings
    from aifi.edge.requeue import retry_task
    from aifi.edge.state import EdgeState

    state = EdgeState(load_edge_settings(config).data_dir / "edge.db")
    try:
        queued = retry_task(state, task, by=by)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    finally:
        state.close()
    typer.echo(f"task {queued} queued again")


@app.command()
def discard(
    task: Annotated[str, typer.Argument(help="task id (or a unique prefix)")],
    config: ConfigOption = Path("edge.toml"),
    by: Annotated[str, typer.Option(help="who asks, for the audit trail")] = getpass.getuser(),
) -> None:
    """End a task for good without delivering it (audited)."""
    from aifi.edge.config import load_edge_settings
    from aifi.edge.requeue import discard_task
    from aifi.edge.state import EdgeState

    state = EdgeState(load_edge_settings(config).data_dir / "edge.db")
    try:
        discard_task(state, task, by=by)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    finally:
        state.close()
    typer.echo(f"task {task} discarded")


@app.command()
def check(config: ConfigOption = Path("edge.toml")) -> None:
    """Check edge.toml against the peers: data folder, listener port, hub token, catalog,
    subscriptions, PACS C-ECHO. Exits 1 when any check fails."""
    from aifi.edge.checks import run_checks
    from aifi.edge.config import load_edge_settings

    try:
        settings = load_edge_settings(config)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    results = run_checks(settings, listener=True)
    table = Table("check", "result", "detail")
    for result in results:
        verdict = "[green]ok[/green]" if result.ok else "[red]FAILED[/red]"
        table.add_row(result.name, verdict, escape(result.detail))
    Console().print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def purge(config: ConfigOption = Path("edge.toml")) -> None:
    """Delete received instances and outbox copies past retention now (audited)."""
    from aifi.edge.config import load_edge_settings
    from aifi.edge.retention import Purger
    from aifi.edge.state import EdgeState

    try:
        settings = load_edge_settings(config)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    state = EdgeState(settings.data_dir / "edge.db", hospital=settings.hospital)
    try:
        report = Purger(
            state,
            settings.retention,
            settings.data_dir / "outbox",
            settings.data_dir / "received",
        ).tick()
    finally:
        state.close()
    typer.echo(
        f"purged {report.instances} received instances ({report.bytes} bytes) and"
        f" {report.outbox_folders} outbox folders of {report.tasks} tasks"
    )


def _fail(message: str) -> int:
    Console(stderr=True, soft_wrap=True).print(
        f"[red]error:[/red] {escape(message)}", highlight=False
    )
    return 2
