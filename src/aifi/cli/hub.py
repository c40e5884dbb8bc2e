"""``aifi hub ...``: run and administer the national hub."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aifi.errors import AifiError

if TYPE_CHECKING:
    from aifi.hub.config import HubSettings

__all__ = ["app"]

app = typer.Typer(help="The national hub.", no_args_is_help=True)
hospital_app = typer.Typer(help="Hospitals (tenants) and their tokens.", no_args_is_help=True)
app.add_typer(hospital_app, name="hospital")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="hub.toml; default: built-in settings and AIFI_HUB_*"),
]


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the hub (HTTP API and workers) on the configured host and port."""
    settings = _settings(config)

    from aifi.hub.server import serve as serve_hub

    serve_hub(settings)


@hospital_app.command("add")
def hospital_add(
    name: Annotated[str, typer.Argument(help="the hospital's name, unique in this hub")],
    config: ConfigOption = None,
) -> None:
    """Register a hospital and print its bearer token (shown only this once)."""
    from aifi.hub.db import make_engine, make_sessions, migrate
    from aifi.hub.hospitals import add_hospital

    settings = _settings(config)
    engine = make_engine(settings.effective_database_url)
    try:
        migrate(engine)
        with make_sessions(engine)() as session:
            hospital, token = add_hospital(session, name)
    except AifiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(f"hospital {hospital.name!r} registered (id {hospital.id}).", err=True)
    typer.echo("Its token, shown only now; put it in the edge's hub.token:", err=True)
    typer.echo(token)


@hospital_app.command("list")
def hospital_list(config: ConfigOption = None) -> None:
    """List registered hospitals (never their tokens)."""
    from aifi.hub.db import make_engine, make_sessions, migrate
    from aifi.hub.hospitals import list_hospitals

    settings = _settings(config)
    engine = make_engine(settings.effective_database_url)
    try:
        migrate(engine)
        with make_sessions(engine)() as session:
            for hospital in list_hospitals(session):
                typer.echo(f"{hospital.id}  {hospital.name}")
    finally:
        engine.dispose()


def _settings(config: Path | None) -> HubSettings:
    from aifi.hub.config import load_hub_settings

    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations are routine here
    try:
        return load_hub_settings(config)
    except AifiError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
