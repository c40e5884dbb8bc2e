"""``aifi edge ...``: run the hospital gateway."""

from __future__ import annotations

import getpass
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aifi.cli import edge_policy
from aifi.errors import AifiError

if TYPE_CHECKING:
    from aifi.core.manifest import Priors
    from aifi.deid import PseudonymMap
    from aifi.edge.config import EdgeSettings
    from aifi.edge.state import EdgeState

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
    from aifi.logs import setup_logging

    try:
        settings = load_edge_settings(config)
        setup_logging(
            settings.logging.format,
            level=settings.logging.level,
            http_requests=settings.logging.http_requests,
        )
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
    state_filter: Annotated[
        list[str] | None,
        typer.Option("--state", help="only tasks in this state (repeatable), e.g. delivered"),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="only tasks created since: 30m, 24h, 7d or a date (2026-12-01)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array, for scripts")] = False,
    limit: Annotated[int | None, typer.Option(help="at most this many, newest first")] = None,
) -> None:
    """List the edge's tasks, newest first: patient, accession, study date, state, times,
    turnaround, results in PACS, RIS notification. The identity is read from the
    encrypted pseudonym map (each lookup recorded); it never leaves the edge."""
    import json

    from aifi.edge.state import DEAD_LETTER
    from aifi.edge.status.views import parse_since, select_tasks, task_view

    _settings, state, pseudonym_map = _open_local(config)
    try:
        wanted = list(state_filter or []) + ([DEAD_LETTER, "failed", "CANCELED"] if failed else [])
        since_at = parse_since(since) if since else None
        rows = select_tasks(state, states=wanted or None, since=since_at, limit=limit)
        views = [task_view(state, pseudonym_map, t, purpose="aifi edge tasks") for t in rows]
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    if as_json:
        typer.echo(json.dumps([v.as_dict() for v in views], indent=2, ensure_ascii=False))
        state.close()
        return
    table = Table(
        "task",
        "patient",
        "accession",
        "study date",
        "algorithm",
        "priority",
        "state",
        "received",
        "delivered",
        "turnaround",
        "in PACS",
        "urgent / RIS",
        "reason",
    )
    for view in views:
        task = view.task
        ident = view.identity
        urgent = ("URGENT: " + view.ris) if task.urgent else ""
        verified = (
            "" if task.verified is None else (" verified" if task.verified else " NOT verified")
        )
        table.add_row(
            task.id[:12],
            escape(f"{ident.patient_name} ({ident.patient_id})" if ident else ""),
            escape(ident.accession_number if ident else ""),
            ident.study_date if ident else "",
            task.algorithm_id,
            ("HIGH", "MEDIUM", "LOW")[min(max(task.priority, 0), 2)],
            task.state + (f" ({task.attempts} attempts)" if task.attempts else "") + verified,
            _local(task.last_instance_at),
            _local(task.delivered_at),
            "" if view.turnaround_s is None else f"{view.turnaround_s:.1f} s",
            " ".join(f"{k} {n}" for k, n in view.stored.items()),
            escape(urgent),
            escape(task.reason or ""),
        )
    Console().print(table)
    paused = state.receiving_paused()
    state.close()
    if paused is not None:
        paused_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(paused["at"]))
        Console(stderr=True).print(
            f"[red]receiving paused since {paused_at}[/red] (C-STOREs answered 0xA700):"
            f" {escape(str(paused['detail']))}"
        )


@app.command(name="task")
def task_events(
    task: Annotated[str, typer.Argument(help="task id (or a unique prefix)")],
    config: ConfigOption = Path("edge.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for scripts")] = False,
) -> None:
    """One task: its patient and study, state, results, and every event recorded for it."""
    import json

    from aifi.edge.status.views import task_view

    _settings, state, pseudonym_map = _open_local(config)
    matches = [t for t in state.tasks() if t.id.startswith(task)]
    if len(matches) != 1:
        state.close()
        raise typer.Exit(
            _fail(
                f"no task {task!r} at this edge"
                if not matches
                else f"{task!r} names {len(matches)} tasks; give more of the id"
            )
        )
    view = task_view(state, pseudonym_map, matches[0], purpose="aifi edge task")
    events = state.task_events(view.task.id)
    state.close()
    if as_json:
        typer.echo(json.dumps({**view.as_dict(), "events": events}, indent=2, ensure_ascii=False))
        return
    console = Console()
    ident = view.identity
    facts = [
        ("task", view.task.id),
        ("patient", f"{ident.patient_name} ({ident.patient_id})" if ident else ""),
        ("accession", ident.accession_number if ident else ""),
        ("study date", ident.study_date if ident else ""),
        ("algorithm", view.task.algorithm_id),
        ("state", view.task.state),
        ("reason", view.task.reason or ""),
        ("received", _local(view.task.last_instance_at)),
        ("delivered", _local(view.task.delivered_at)),
        ("turnaround", "" if view.turnaround_s is None else f"{view.turnaround_s:.1f} s"),
        ("in PACS", " ".join(f"{k} {n}" for k, n in view.stored.items())),
        ("RIS", view.ris),
        ("hub task", view.task.hub_task_id or ""),
    ]
    for name, value in facts:
        if value:
            console.print(f"[bold]{name}:[/bold] {escape(value)}", highlight=False)
    table = Table("when", "step", "detail", title="events")
    for event in events:
        table.add_row(_local(event["at"]), event["kind"], escape(str(event["detail"])))
    console.print(table)


@app.command()
def retry(
    task: Annotated[
        str | None, typer.Argument(help="task id (or a unique prefix), from 'tasks --failed'")
    ] = None,
    destination: Annotated[
        str | None,
        typer.Option(
            help="retry this destination's dead letters only (pacs, or a [[destinations]] name)"
        ),
    ] = None,
    task_option: Annotated[
        str | None, typer.Option("--task", help="with --destination: only this task")
    ] = None,
    config: ConfigOption = Path("edge.toml"),
    by: Annotated[str, typer.Option(help="who asks, for the audit trail")] = getpass.getuser(),
) -> None:
    """Send a dead-letter, failed or canceled task again; or one destination's dead letters.

    Both are recorded in the edge's events and audit trail with --by.
    """
    from aifi.edge.config import load_edge_settings
    from aifi.edge.requeue import retry_destination, retry_task
    from aifi.edge.state import EdgeState

    if destination is None and task is None:
        raise typer.Exit(_fail("say what to retry: a task id, or --destination NAME [--task ID]"))
    settings = load_edge_settings(config)
    state = EdgeState(settings.data_dir / "edge.db")
    try:
        if destination is not None:
            retried = retry_destination(
                state,
                settings.result_destinations,
                destination,
                task_id=task_option or task,
                by=by,
                default_kinds=settings.result_kinds,
                settings=settings.delivery,
            )
        else:
            assert task is not None
            queued = retry_task(state, task, by=by)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    finally:
        state.close()
    if destination is None:
        typer.echo(f"task {queued} queued again")
        return
    for task_id in retried:
        typer.echo(f"task {task_id}: destination {destination} queued again")
    typer.echo(f"{len(retried)} dead letters of destination {destination} queued again")


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
def lookups(
    config: ConfigOption = Path("edge.toml"),
    last: Annotated[int, typer.Option(help="show the newest N lookups")] = 50,
) -> None:
    """Every use of the pseudonym map: when, who, why, which pseudonym (for the privacy officer)."""
    from rich.console import Console
    from rich.table import Table

    _settings, state, pseudonym_map = _open_local(config)
    state.close()
    if pseudonym_map is None:
        typer.echo("no pseudonym map yet: nothing was looked up")
        return
    try:
        rows = pseudonym_map.lookups()
    finally:
        pseudonym_map.close()
    table = Table("when (UTC)", "actor", "purpose", "kind", "pseudonym", "found")
    for row in rows[-last:]:
        table.add_row(
            row.at[:19],
            row.actor,
            row.purpose,
            row.kind,
            row.pseudonym,
            "yes" if row.found else "no",
        )
    Console().print(table)
    typer.echo(f"{len(rows)} lookups recorded in all")


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


@app.command()
def request(
    algorithm: Annotated[str, typer.Option(help="the algorithm to run, e.g. bone-age")],
    accession: Annotated[str | None, typer.Option(help="the study's Accession Number")] = None,
    study_uid: Annotated[str | None, typer.Option(help="the study's Study Instance UID")] = None,
    peer: Annotated[
        str | None, typer.Option(help="the [[query_retrieve]] peer (name or AE title)")
    ] = None,
    priority: Annotated[
        str, typer.Option(help="LOW, MEDIUM or HIGH (UPS priority, PS3.4 CC.1.1); STAT is HIGH")
    ] = "MEDIUM",
    priors_years: Annotated[
        float | None,
        typer.Option(help="also pull this patient's priors of the last N years (same body part)"),
    ] = None,
    config: ConfigOption = Path("edge.toml"),
) -> None:
    """Pull a study from the PACS (C-FIND, then C-MOVE or C-GET) and run an algorithm on it.

    The running edge makes the task when the study is stable, whatever the
    routing rules say; `aifi edge tasks` shows it.
    """
    from aifi.edge.pull import peer_named, pull_study

    if bool(accession) == bool(study_uid):
        raise typer.Exit(_fail("give exactly one of --accession and --study-uid"))
    priority = {"STAT": "HIGH", "URGENT": "HIGH", "ROUTINE": "MEDIUM"}.get(
        priority.upper(), priority.upper()
    )
    if priority not in ("LOW", "MEDIUM", "HIGH"):
        raise typer.Exit(_fail(f"--priority {priority!r}: use LOW, MEDIUM, HIGH or STAT"))
    settings, state, _map = _open_local(config)
    try:
        chosen = peer_named(settings, peer)
        outcome = pull_study(
            settings,
            chosen,
            accession=accession,
            study_uid=study_uid,
            algorithm_id=algorithm,
            priority=priority,
            priors=_priors_for(settings, algorithm, priors_years),
            state=state,
        )
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    finally:
        state.close()
    if not outcome.ok:
        raise typer.Exit(_fail(outcome.detail))
    typer.echo(f"requested {algorithm} on study {outcome.study_instance_uid}: {outcome.detail}")


@app.command()
def orders(
    config: ConfigOption = Path("edge.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array, for scripts")] = False,
) -> None:
    """List the orders the RIS sent (HL7 ORM/OMI, FHIR ServiceRequest), newest first:
    order number, accession, algorithm, priority and where each stands (waiting for
    its images, requested, completed, canceled or expired, with the reason)."""
    import json

    from aifi.edge.orders import order_views

    _settings, state, _map = _open_local(config)
    try:
        views = order_views(state)
    finally:
        state.close()
    if as_json:
        typer.echo(json.dumps([v.as_dict() for v in views], indent=2, ensure_ascii=False))
        return
    table = Table(
        "received", "from", "order", "accession", "algorithm", "priority", "status", "detail"
    )
    for view in views:
        table.add_row(
            _local(view.received_at),
            escape(view.source),
            escape(view.order_number),
            escape(view.accession),
            view.algorithm_id,
            view.priority,
            view.status,
            escape(view.detail),
        )
    Console().print(table)


def _priors_for(settings: EdgeSettings, algorithm: str, years: float | None) -> Priors | None:
    """Priors from --priors-years, else as the hub's catalog says the algorithm asks.

    Only where no hub answers (an edge tried before its hub is up) does the
    algorithm installed here say, when it is installed here.
    """
    from aifi.core.manifest import Priors
    from aifi.edge.catalog import HubCatalog
    from aifi.errors import HubRefused, HubUnavailable
    from aifi.protocol.client import HubClient

    if years is not None:
        return Priors(years=years)
    hub = HubClient(settings.hub)
    try:
        return HubCatalog(hub).priors(algorithm)
    except HubRefused:
        return None  # the hub offers no such algorithm: the pull goes ahead without priors
    except HubUnavailable:
        pass
    finally:
        hub.close()
    try:
        from aifi.algorithms.registry import get

        return get(algorithm).manifest.priors
    except AifiError:
        return None


def _open_local(config: Path) -> tuple[EdgeSettings, EdgeState, PseudonymMap | None]:
    """The edge's settings, state and pseudonym map (None when there is no key or map yet)."""
    import os

    from aifi.deid import PseudonymMap
    from aifi.edge.at_rest import edge_key
    from aifi.edge.config import KEY_ENV, load_edge_settings
    from aifi.edge.state import EdgeState

    try:
        settings = load_edge_settings(config)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    map_path = settings.data_dir / "pseudonyms.db"
    has_key = bool(os.environ.get(KEY_ENV, "").strip()) or settings.secret_key_path.exists()
    key = edge_key(settings) if has_key and map_path.exists() else None
    state = EdgeState(settings.data_dir / "edge.db", key=key)
    return settings, state, PseudonymMap(map_path, key) if key is not None else None


def _local(moment: float | None) -> str:
    if not moment:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _fail(message: str) -> int:
    Console(stderr=True, soft_wrap=True).print(
        f"[red]error:[/red] {escape(message)}", highlight=False
    )
    return 2
