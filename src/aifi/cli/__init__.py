"""The ``aifi`` command line: one entry point, one sub-command group per program.

Starting it must stay cheap (``bench/cli_start.py``): the modules here import
only typer and rich at module level; each command imports the program it
runs (the hub's database, the edge, pydicom) in its own body, and
``tests/cli/test_start.py`` checks that ``--help`` loads none of them. Help is
click's plain text (``rich_markup_mode=None``): typer's rich panels import
rich's Markdown renderer, as much again as the rest of the start.
"""

from __future__ import annotations

import logging

import typer

from aifi.cli import audit, demo, edge, hub, pseudonymize
from aifi.cli._startup import defer_coercion

__all__ = ["app", "main"]

app = typer.Typer(
    name="aifi",
    help="aifi: hospital edge gateways and a national hub for AI in medical imaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(edge.app, name="edge")
app.add_typer(hub.app, name="hub")
app.add_typer(audit.app, name="audit")
app.command(name="demo")(demo.demo)
app.command(name="pseudonymize")(pseudonymize.pseudonymize)
defer_coercion()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app()
