"""``aifi demo``: hub, edge and a small PACS on loopback, with sample studies."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from aifi.edge.state import TaskRow

logger = logging.getLogger(__name__)


def _task_table(
    tasks: list[TaskRow],
    labels: dict[str, str],
    in_pacs: dict[str, list[str]] | None = None,
    summaries: dict[str, str] | None = None,
) -> Table:
    table = Table(title="tasks")
    for column in (
        "study",
        "algorithm",
        "state",
        "verified",
        "results in PACS",
        "seconds",
        "finding / reason",
    ):
        table.add_column(column)
    for task in tasks:
        verified = "" if task.verified is None else ("yes" if task.verified else "NO")
        seconds = f"{task.delivered_at - task.last_instance_at:.2f}" if task.delivered_at else ""
        results = "" if in_pacs is None else str(len(in_pacs.get(task.id, [])))
        table.add_row(
            labels.get(task.study_instance_uid, task.study_instance_uid[:16]),
            task.algorithm_id,
            task.state,
            verified,
            results,
            seconds,
            (summaries or {}).get(task.id) or task.reason or "",
        )
    return table


def demo(
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="exit when done: 0 if every result is in the demo PACS, 1 otherwise"
        ),
    ] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="keep all data here (default: a temporary folder)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for results")] = 180.0,
) -> None:
    """Run hub, edge and a demo PACS on loopback and send sample studies through them."""
    from rich.live import Live
    from rich.progress import Progress

    from aifi.demo.run import DEMO_STATUS_PASSWORD, DemoSystem, demo_studies

    logging.getLogger().setLevel(logging.WARNING)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    with tempfile.TemporaryDirectory(prefix="aifi-demo-") as tmp:
        root = workdir or Path(tmp)
        console.print(f"[bold]aifi demo[/bold] — data in {root}")
        studies = demo_studies()
        with DemoSystem(root) as system:
            assert system.edge is not None
            console.print(
                f"hub {system.hub_url} · edge DICOM {system.edge.settings.listener.ae_title}"
                f"@127.0.0.1:{system.edge.dicom_port} · demo PACS "
                f"{system.pacs.ae_title}@127.0.0.1:{system.pacs.port}"
            )
            if system.edge.status_url:
                console.print(
                    f"edge status page {system.edge.status_url} (password"
                    f" '{DEMO_STATUS_PASSWORD}') · metrics {system.edge.status_url}metrics"
                )
            labels = {str(s.datasets[0].StudyInstanceUID): s.label for s in studies}
            total = sum(len(s.datasets) for s in studies)
            failures = 0
            with Progress(console=console) as progress:
                bar = progress.add_task("PACS → edge (C-STORE)", total=total)
                for study in studies:
                    for outcome in system.send(study.datasets, lambda _r: progress.advance(bar)):
                        failures += not outcome.ok
            if failures:
                console.print(f"[red]{failures} instances were not accepted by the edge[/red]")
            started = time.monotonic()
            with Live(console=console, refresh_per_second=4, transient=True) as live:
                done = system.wait(
                    timeout,
                    lambda: live.update(_task_table(system.tasks(), labels)),
                )
            in_pacs = system.results_in_pacs()
            tasks = system.tasks()
            console.print(_task_table(tasks, labels, in_pacs, system.summaries()))
            for message in system.ris.messages:
                pid, obr = message.segment("PID"), message.segment("OBR")
                critical = [obx for obx in message.segments("OBX") if str(obx[8]) == "AA"]
                console.print(
                    f"[bold red]urgent[/bold red] ORU^R01 received by the demo RIS for patient "
                    f"{pid[5]} ({pid[3][0][0]}), accession {obr[18]}: "
                    + ", ".join(str(obx[5][0][1]) for obx in critical)
                )
            problems = system.problems()
            ok = done and not problems
            elapsed = time.monotonic() - started
            if ok:
                console.print(
                    f"[green]every result is in the demo PACS, every urgent one at the RIS[/green] "
                    f"({elapsed:.1f} s after the last instance was sent)"
                )
            else:
                console.print("[red]the demo's promises did not all hold:[/red]")
                for problem in problems or ["timed out waiting for the tasks"]:
                    console.print(f"[red]  {problem}[/red]")
            if once:
                raise typer.Exit(0 if ok else 1)
            console.print("running; send studies to the edge's DICOM port. Ctrl-C stops.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
