"""``aifi hub ...``: run and administer the national hub."""

from __future__ import annotations

import typer

app = typer.Typer(help="The national hub.", no_args_is_help=True)
