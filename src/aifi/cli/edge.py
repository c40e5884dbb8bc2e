"""``aifi edge ...``: run the hospital gateway."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aifi.edge.config import load_edge_settings
from aifi.edge.state import EdgeState
from aifi.errors import AifiError

app = typer.Typer(help="The hospital edge gateway.", no_args_is_help=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="edge.toml")]
logger = logging.getLogger(__name__)


@app.command()
def serve(config: ConfigOption = Path("edge.toml")) -> None:
    """Run the DICOM listener, the outbox and result delivery until stopped."""
    from aifi.edge.service import EdgeService

    try:
        service = EdgeService(load_edge_settings(config))
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
def tasks(config: ConfigOption = Path("edge.toml")) -> None:
    """List the edge's tasks and their states."""
    settings = load_edge_settings(config)
    state = EdgeState(settings.data_dir / "edge.db")
    table = Table("task", "algorithm", "state", "verified", "reason")
    for task in state.tasks():
        verified = "" if task.verified is None else ("yes" if task.verified else "NO")
        table.add_row(task.id[:12], task.algorithm_id, task.state, verified, task.reason or "")
    Console().print(table)


def _fail(message: str) -> int:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return 2
