"""The ``aifi`` command line: one entry point, one sub-command group per program.

Starting it must stay cheap (``bench/cli_start.py``): the modules here import
only typer and rich at module level; each command imports the program it
runs (the hub's database, the edge, pydicom) in its own body, and
``tests/cli/test_start.py`` checks that ``--help`` loads none of them. Help is
click's plain text (``rich_markup_mode=None``): typer's rich panels import
rich's Markdown renderer, as much again as the rest of the start.
"""

from __future__ import annotations

from typing import Annotated

import typer

from aifi.cli import audit, demo, edge, hub, pseudonymize
from aifi.cli._startup import defer_coercion
from aifi.logs import setup_logging

__all__ = ["app", "main"]

app = typer.Typer(
    name="aifi",
    help="aifi: hospital edge gateways and a national hub for AI in medical imaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _options(
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help="log lines as 'text' or 'json' (default: $AIFI_LOG_FORMAT, then the"
            " configuration's [logging] format, then text)",
        ),
    ] = None,
) -> None:
    if log_format is not None:
        if log_format not in ("text", "json"):
            raise typer.BadParameter("choose text or json", param_hint="--log-format")
        setup_logging(log_format, command_line=True)  # type: ignore[arg-type]


app.add_typer(edge.app, name="edge")
app.add_typer(hub.app, name="hub")
app.add_typer(audit.app, name="audit")
app.command(name="demo")(demo.demo)
app.command(name="pseudonymize")(pseudonymize.pseudonymize)
defer_coercion()


def main() -> None:
    setup_logging()
    app()
