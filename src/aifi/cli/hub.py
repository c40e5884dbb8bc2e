"""``aifi hub ...``: run and administer the national hub.

Every administrative command works on the hub's database directly (the hub
may be running) and is recorded in the audit trail with the actor
``operator:cli``. Tokens are printed once, alone on stdout's last line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from aifi.errors import AifiError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from aifi.algorithms.registry import Installation
    from aifi.hub.config import HubSettings

__all__ = ["app"]

CLI_ACTOR = "operator:cli"

app = typer.Typer(help="The national hub.", no_args_is_help=True)
hospital_app = typer.Typer(help="Hospitals (tenants) and their tokens.", no_args_is_help=True)
operator_app = typer.Typer(help="Operators and auditors.", no_args_is_help=True)
token_app = typer.Typer(help="Rotate, revoke and list tokens.", no_args_is_help=True)
algorithm_app = typer.Typer(help="The algorithm catalog.", no_args_is_help=True)
subscription_app = typer.Typer(help="Subscriptions (contracts).", no_args_is_help=True)
report_app = typer.Typer(help="Reports for governance and procurement.", no_args_is_help=True)
app.add_typer(hospital_app, name="hospital")
app.add_typer(operator_app, name="operator")
app.add_typer(token_app, name="token")
app.add_typer(algorithm_app, name="algorithm")
app.add_typer(subscription_app, name="subscription")
app.add_typer(report_app, name="report")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="hub.toml; default: built-in settings and AIFI_HUB_*"),
]


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the hub (HTTP API and workers) on the configured host and port.

    The algorithms (built-in, the model store's, the remote ones) are loaded
    and the port bound before the hub starts; a problem with either is one
    line naming the setting, exit status 1.
    """
    settings = _settings(config)

    from aifi.hub.bootstrap import installation
    from aifi.hub.server import serve as serve_hub

    try:
        installation(settings)  # configuration errors before the port is bound; kept for the app
        serve_hub(settings)
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def api(
    config: ConfigOption = None,
    processes: Annotated[
        int, typer.Option(min=1, max=256, help="uvicorn worker processes on the one port")
    ] = 1,
) -> None:
    """Run the HTTP API alone (any number of replicas); algorithms run in 'aifi hub worker'.

    Runs no migration (run 'aifi hub migrate' first; an old schema is one
    line saying so), no recovery and no retention purge.
    """
    settings = _settings(config)

    from aifi.hub.bootstrap import installation
    from aifi.hub.server import serve as serve_hub
    from aifi.hub.server import serve_api_processes

    try:
        installation(settings)
        if processes > 1:
            serve_api_processes(settings, processes)
        else:
            serve_hub(settings, role="api")
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def worker(
    config: ConfigOption = None,
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-q",
            help="a resource class (cpu, gpu) or an algorithm id; repeat for several; "
            "default: every installed algorithm",
        ),
    ] = None,
    slots: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="tasks run at once (default: setting 'workers')"),
    ] = None,
) -> None:
    """Run algorithms: take tasks of the queues from the database, each in a child process.

    Stops on SIGTERM/SIGINT: running tasks get a few seconds to finish, then
    go back to the queue.
    """
    settings = _settings(config)

    from aifi.hub.bootstrap import run_worker

    try:
        run_worker(settings, tuple(queue or ()), slots)
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def janitor(config: ConfigOption = None) -> None:
    """Run the lease reaper and the retention purge (one janitor is active per database)."""
    settings = _settings(config)

    from aifi.hub.bootstrap import run_janitor

    try:
        run_janitor(settings)
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Bring the hub database's schema to this version's (run before starting the hub).

    Safe to run from several machines at once: on PostgreSQL the upgrade
    holds an advisory lock, so the others wait and then find nothing to do.
    """
    from aifi.hub.db import engine_for, head_revision
    from aifi.hub.db import migrate as run_migrate

    settings = _settings(config)
    engine = engine_for(settings)
    try:
        run_migrate(engine)
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(f"hub database at schema revision {head_revision()}")


@app.command()
def purge(config: ConfigOption = None) -> None:
    """Apply retention now: delete acknowledged or expired images and expired results."""
    from aifi.hub.retention import purge as run_purge
    from aifi.hub.storage import open_store

    settings = _settings(config)
    try:
        store = open_store(settings)
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    with _session(settings) as session:
        report = run_purge(session, store, settings)
    typer.echo(
        f"deleted {report.images} images ({report.image_bytes} bytes) and "
        f"{report.results} result objects ({report.result_bytes} bytes)"
    )


@hospital_app.command("add")
def hospital_add(
    name: Annotated[str, typer.Argument(help="the hospital's name, unique in this hub")],
    config: ConfigOption = None,
    subscribe: Annotated[
        str,
        typer.Option(
            help="comma-separated algorithm ids for a connection-test subscription "
            "(agreement 'connection-test', open-ended); '' for none",
        ),
    ] = "integrity-check",
) -> None:
    """Register a hospital and print its bearer token (shown only this once).

    By default the hospital is subscribed to integrity-check, the connection
    test an edge runs right after installation.
    """
    from aifi.hub.hospitals import add_hospital

    algorithms = [a.strip() for a in subscribe.split(",") if a.strip()]
    with _session(_settings(config)) as session:
        hospital, token = add_hospital(session, name, subscribe=algorithms, actor=CLI_ACTOR)
    typer.echo(f"hospital {hospital.name!r} registered (id {hospital.id}).", err=True)
    if algorithms:
        typer.echo(f"subscribed for a connection test to: {', '.join(algorithms)}", err=True)
    typer.echo("Its token, shown only now; put it in the edge's hub.token:", err=True)
    typer.echo(token)


@hospital_app.command("list")
def hospital_list(config: ConfigOption = None) -> None:
    """List registered hospitals (never their tokens)."""
    from aifi.hub.hospitals import list_hospitals

    with _session(_settings(config)) as session:
        for hospital in list_hospitals(session):
            typer.echo(f"{hospital.id}  {hospital.name}")


@operator_app.command("add")
def operator_add(
    name: Annotated[str, typer.Argument(help="a unique name for the operator or auditor")],
    config: ConfigOption = None,
    role: Annotated[
        Literal["operator", "auditor", "performer"],
        typer.Option(help="operator, auditor (read-only) or performer (outside UPS performer)"),
    ] = "operator",
) -> None:
    """Add an operator (catalog, hospitals, subscriptions), auditor or performer; its token."""
    from aifi.hub.principals import add_principal, issue_token
    from aifi.protocol.schemas import Role

    with _session(_settings(config)) as session:
        # the principal and its first token, with their events, in one commit
        principal = add_principal(session, name, Role(role), actor=CLI_ACTOR, commit=False)
        _token, secret = issue_token(session, principal, actor=CLI_ACTOR)
    typer.echo(f"{role} {name!r} added (id {principal.id}); its token, shown only now:", err=True)
    typer.echo(secret)


@token_app.command("rotate")
def token_rotate(
    principal: Annotated[str, typer.Argument(help="hospital, operator or auditor: name or id")],
    config: ConfigOption = None,
) -> None:
    """Issue a new token; the old ones stay valid until 'aifi hub token revoke'."""
    from aifi.hub.principals import find_principal, issue_token

    with _session(_settings(config)) as session:
        found = find_principal(session, principal)
        token, secret = issue_token(session, found, actor=CLI_ACTOR)
    typer.echo(
        f"new token {token.id} for {found.name!r}; revoke the old one once the edge uses it:",
        err=True,
    )
    typer.echo(secret)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id (see 'aifi hub token list')")],
    config: ConfigOption = None,
) -> None:
    """Revoke a token now."""
    from aifi.hub.principals import revoke_token

    with _session(_settings(config)) as session:
        token = revoke_token(session, token_id, actor=CLI_ACTOR)
    typer.echo(f"token {token.id} revoked")


@token_app.command("list")
def token_list(config: ConfigOption = None) -> None:
    """Every principal and its tokens' ids (never the tokens)."""
    from sqlalchemy import select

    from aifi.hub.models import Token
    from aifi.hub.principals import list_principals

    with _session(_settings(config)) as session:
        for principal in list_principals(session):
            typer.echo(f"{principal.id}  {principal.role:<8}  {principal.name}")
            for token in session.scalars(
                select(Token).where(Token.principal_id == principal.id).order_by(Token.created_at)
            ):
                state = (
                    f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "valid"
                )
                typer.echo(
                    f"    token {token.id}  issued {token.created_at:%Y-%m-%d %H:%M}  {state}"
                )


@algorithm_app.command("list")
def algorithm_list(config: ConfigOption = None) -> None:
    """The catalog: every version with state, vendor, regulatory status and source.

    The source of the version this hub runs is "built-in", the model
    manifest in the model store, or the vendor's endpoint; a refused model
    says why it is not run. Older versions read "not installed".
    """
    from aifi.hub.catalog import list_catalog

    settings = _settings(config)
    installation = _installation(settings)
    with _session(settings, sync=True, installation=installation) as session:
        for e in list_catalog(session):
            installed = installation.entries.get(e.algorithm_id)
            if installed is None or installed.manifest.version != e.version:
                source = "not installed"
            elif installed.refused is not None:
                source = f"{installed.source}  REFUSED: {installed.refused}"
            else:
                source = installed.source
            typer.echo(
                f"{e.algorithm_id}  {e.version}  {e.state}  {e.vendor}  {e.regulatory_status}"
                f"  {source}"
            )


def _set_state(
    algorithm: str, version: str, state: str, reason: str | None, config: Path | None
) -> None:
    from aifi.hub.catalog import set_state
    from aifi.protocol.schemas import AlgorithmState

    with _session(_settings(config), sync=True) as session:
        entry = set_state(
            session, algorithm, version, AlgorithmState(state), actor=CLI_ACTOR, reason=reason
        )
    typer.echo(f"{entry.algorithm_id} {entry.version} is {entry.state}")


AlgorithmArg = Annotated[str, typer.Argument(help="algorithm id")]
VersionArg = Annotated[str, typer.Argument(help="the catalog version")]
ReasonOption = Annotated[str | None, typer.Option(help="why, for the audit trail")]


@algorithm_app.command("suspend")
def algorithm_suspend(
    algorithm: AlgorithmArg,
    version: VersionArg,
    reason: ReasonOption = None,
    config: ConfigOption = None,
) -> None:
    """Suspend a version: it takes no new tasks until re-activated."""
    _set_state(algorithm, version, "suspended", reason, config)


@algorithm_app.command("retire")
def algorithm_retire(
    algorithm: AlgorithmArg,
    version: VersionArg,
    reason: ReasonOption = None,
    config: ConfigOption = None,
) -> None:
    """Retire a version for good."""
    _set_state(algorithm, version, "retired", reason, config)


@algorithm_app.command("activate")
def algorithm_activate(
    algorithm: AlgorithmArg,
    version: VersionArg,
    reason: ReasonOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-activate a suspended version."""
    _set_state(algorithm, version, "active", reason, config)


@subscription_app.command("add")
def subscription_add(
    hospital: Annotated[str, typer.Option(help="hospital name or id")],
    algorithm: Annotated[str, typer.Option(help="algorithm id")],
    agreement: Annotated[str, typer.Option(help="reference of the processing agreement")],
    controller: Annotated[str, typer.Option(help="the controller under the agreement")],
    processor: Annotated[str, typer.Option(help="the processor under the agreement")],
    sub_processor: Annotated[str | None, typer.Option(help="a sub-processor, if any")] = None,
    version: Annotated[
        str | None, typer.Option(help="pin a version; default: latest active")
    ] = None,
    valid_from: Annotated[
        datetime | None, typer.Option("--from", help="default: now (UTC)")
    ] = None,
    valid_until: Annotated[
        datetime | None, typer.Option("--until", help="default: open-ended")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Record a hospital's agreement to use an algorithm; prints the subscription id."""
    from aifi.hub.hospitals import find_hospital
    from aifi.hub.subscriptions import add_subscription

    with _session(_settings(config)) as session:
        found = find_hospital(session, hospital)
        created = add_subscription(
            session,
            hospital_id=found.id,
            algorithm_id=algorithm,
            algorithm_version=version,
            agreement_reference=agreement,
            controller=controller,
            processor=processor,
            sub_processor=sub_processor,
            valid_from=_utc(valid_from),
            valid_until=_utc(valid_until),
            actor=CLI_ACTOR,
        )
    typer.echo(created.id)


@subscription_app.command("list")
def subscription_list(
    config: ConfigOption = None,
    hospital: Annotated[str | None, typer.Option(help="only this hospital (name or id)")] = None,
) -> None:
    """Subscriptions with period, agreement and roles."""
    from aifi.hub.hospitals import find_hospital
    from aifi.hub.subscriptions import list_subscriptions

    with _session(_settings(config)) as session:
        hospital_id = find_hospital(session, hospital).id if hospital else None
        for s in list_subscriptions(session, hospital_id):
            until = f"{s.valid_until:%Y-%m-%d %H:%M}" if s.valid_until else "open"
            typer.echo(
                f"{s.id}  {s.hospital_id}  {s.algorithm_id} {s.algorithm_version or 'latest'}  "
                f"{s.valid_from:%Y-%m-%d %H:%M} to {until}  {s.agreement_reference}  "
                f"controller={s.controller} processor={s.processor}"
                + (f" sub-processor={s.sub_processor}" if s.sub_processor else "")
            )


@subscription_app.command("end")
def subscription_end(
    subscription_id: Annotated[str, typer.Argument(help="the subscription's id")],
    config: ConfigOption = None,
) -> None:
    """End a subscription now; tasks under it are refused from then on."""
    from aifi.hub.subscriptions import end_subscription

    with _session(_settings(config)) as session:
        ended = end_subscription(session, subscription_id, actor=CLI_ACTOR)
    typer.echo(f"subscription {ended.id} ends {ended.valid_until:%Y-%m-%d %H:%M:%S} UTC")


@report_app.command("usage")
def report_usage(
    month: Annotated[str, typer.Option(help="YYYY-MM")],
    config: ConfigOption = None,
    format: Annotated[Literal["csv", "json"], typer.Option(help="csv or json")] = "csv",
) -> None:
    """Usage per hospital by algorithm for one month (for joint procurement)."""
    from aifi.hub.usage import usage, usage_csv

    with _session(_settings(config)) as session:
        rows = usage(session, month)
    if format == "csv":
        typer.echo(usage_csv(rows), nl=False)
    else:
        typer.echo(json.dumps([r.model_dump() for r in rows], indent=2))


@contextmanager
def _session(
    settings: HubSettings, *, sync: bool = False, installation: Installation | None = None
) -> Iterator[Session]:
    """A migrated database session; an :class:`AifiError` becomes exit status 1.

    With ``sync`` the catalog first gets the manifests of the algorithms the
    settings install (``installation``, made here when not given).
    """
    from aifi.hub.db import engine_for, make_sessions, prepare_schema

    engine = engine_for(settings)
    try:
        prepare_schema(engine)  # SQLite: migrated in place; a shared database: checked only
        with make_sessions(engine)() as session:
            if sync:
                from aifi.hub.catalog import sync_catalog

                installed = installation or _installation(settings)
                sync_catalog(session, installed.manifests())
            yield session
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()


def _utc(value: datetime | None) -> datetime | None:
    from datetime import UTC

    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _installation(settings: HubSettings) -> Installation:
    """The algorithms ``settings`` configure; a configuration error becomes exit status 1."""
    from aifi.algorithms.registry import install

    try:
        return install(settings.model_dir, settings.remote_algorithms_dir)
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _settings(config: Path | None) -> HubSettings:
    from aifi.hub.config import load_hub_settings

    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations are routine here
    try:
        return load_hub_settings(config)
    except AifiError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
