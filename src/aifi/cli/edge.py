"""``aifi edge ...``: run the hospital gateway."""

from __future__ import annotations

import typer

app = typer.Typer(help="The hospital edge gateway.", no_args_is_help=True)
