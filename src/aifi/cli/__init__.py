"""The ``aifi`` command line: one entry point, one sub-command group per program."""

from __future__ import annotations

import logging

import typer

from aifi.cli import audit, demo, edge, hub, pseudonymize

__all__ = ["app", "main"]

app = typer.Typer(
    name="aifi",
    help="aifi: hospital edge gateways and a national hub for AI in medical imaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(edge.app, name="edge")
app.add_typer(hub.app, name="hub")
app.add_typer(audit.app, name="audit")
app.command(name="demo")(demo.demo)
app.command(name="pseudonymize")(pseudonymize.pseudonymize)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app()
