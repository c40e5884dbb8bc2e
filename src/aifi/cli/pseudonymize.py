"""``aifi pseudonymize SRC DST --key-file KEY``: batch pseudonymization for research exports.

The same engine as the edge (:class:`aifi.deid.Pseudonymizer`). Output files
are named by their pseudonymous UIDs (``DST/<study>/<series>/<instance>.dcm``)
because source file names often carry names or IDs. Instances that must not
leave (burned-in text, not DICOM, ...) are counted and listed by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from aifi.deid import DeidOptions, Pseudonymizer, load_or_create_key
from aifi.errors import AifiError, DicomInputError, PseudonymizationError

__all__ = ["pseudonymize"]

logger = logging.getLogger(__name__)


def _files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))


def _reason(exc: AifiError) -> str:
    """The reason without the per-instance pseudonymous UID, so equal reasons group."""
    text = str(exc)
    return text.split(" is not sent: ", 1)[1] if " is not sent: " in text else text


def _export(pseudonymizer: Pseudonymizer, path: Path, dst: Path, slot: int) -> str | None:
    """Pseudonymize one file into ``dst``, named by its pseudonymous UIDs; why not, or None."""
    staging = dst / f".incoming-{slot}.dcm"
    try:
        result = pseudonymizer.pseudonymize_file(path, staging, atomic=False)
    except PseudonymizationError as exc:
        return _reason(exc)
    except DicomInputError as exc:
        return f"not usable DICOM: {exc}"
    final = (
        dst
        / result.study_instance_uid
        / result.series_instance_uid
        / f"{result.sop_instance_uid}.dcm"
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(final)
    return None


def _count(outcome: str | None, written: int, refused: Counter[str]) -> tuple[int, Counter[str]]:
    if outcome is None:
        return written + 1, refused
    refused[outcome] += 1
    return written, refused


def pseudonymize(
    src: Annotated[Path, typer.Argument(help="a DICOM file or a folder searched recursively")],
    dst: Annotated[Path, typer.Argument(help="output folder (created)")],
    key_file: Annotated[
        Path, typer.Option("--key-file", help="the secret (32 bytes); created if absent")
    ],
    retain_patient_characteristics: Annotated[
        bool, typer.Option(help="keep sex, age, size, weight (PS3.15 E.3.6)")
    ] = False,
    modified_dates: Annotated[
        bool, typer.Option(help="shift dates per patient instead of removing them")
    ] = False,
    clean_descriptors: Annotated[
        bool, typer.Option(help="keep descriptions with identifying text removed")
    ] = False,
    clean_graphics: Annotated[
        bool, typer.Option(help="remove overlays, curves and graphic annotations entirely")
    ] = False,
    clean_pixel_data: Annotated[
        bool, typer.Option(help="refuse images that may carry burned-in text")
    ] = True,
    known_clean_pixels: Annotated[
        bool, typer.Option(help="the source's images carry no burned-in text")
    ] = False,
    keep: Annotated[
        list[str] | None,
        typer.Option(help="an attribute keyword to keep (repeatable), e.g. --keep PatientSex"),
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
) -> None:
    """Pseudonymize DICOM files from SRC into DST with the hospital's key."""
    console = Console(stderr=True)
    try:
        key = load_or_create_key(key_file)
        pseudonymizer = Pseudonymizer(
            key,
            options=DeidOptions(
                retain_patient_characteristics=retain_patient_characteristics,
                retain_longitudinal_modified_dates=modified_dates,
                clean_descriptors=clean_descriptors,
                clean_graphics=clean_graphics,
                clean_pixel_data=clean_pixel_data,
            ),
            keep=keep or (),
            known_clean_pixels=known_clean_pixels,
        )
    except AifiError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    files = _files(src)
    refused: Counter[str] = Counter()
    written = 0
    dst.mkdir(parents=True, exist_ok=True)
    columns = (
        TextColumn("pseudonymizing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("files", total=len(files))
        slots = range(len(files))
        if jobs == 1:
            outcomes: Iterator[str | None] = map(
                _export, repeat(pseudonymizer), files, repeat(dst), slots
            )
            for outcome in outcomes:
                written, refused = _count(outcome, written, refused)
                progress.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                outcomes = pool.map(
                    _export, repeat(pseudonymizer), files, repeat(dst), slots, chunksize=16
                )
                for outcome in outcomes:
                    written, refused = _count(outcome, written, refused)
                    progress.advance(task)
    summary = Table(title=f"{written} written, {sum(refused.values())} refused")
    summary.add_column("refused", justify="right")
    summary.add_column("reason")
    for reason, count in refused.most_common():
        summary.add_row(str(count), reason)
    Console().print(summary)
