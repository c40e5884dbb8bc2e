"""``aifi pseudonymize SRC DST --key-file KEY``: batch pseudonymization for research exports.

The same engine as the edge (:class:`aifi.deid.Pseudonymizer`). Output files
are named by their pseudonymous UIDs (``DST/<study>/<series>/<instance>.dcm``)
because source file names often carry names or IDs. Instances that must not
leave (burned-in text, not DICOM, ...) are counted and listed by reason.

A file that looks like DICOM but cannot be read (truncated, nested too deep
to read, a reader's error) is *failed*: it is named on stderr with its
reason, the batch goes on, and the command exits with status 1 so that a
script notices. A whole folder is never abandoned for one bad file.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from aifi.errors import AifiError, DicomInputError, PseudonymizationError

if TYPE_CHECKING:  # pydicom and the engine load when files are pseudonymized, not for --help
    from aifi.deid import Pseudonymizer

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


@dataclass(frozen=True)
class _Outcome:
    """What became of one file: ``written``, ``refused`` (must not leave) or ``failed``."""

    kind: str
    reason: str | None = None


_WRITTEN = _Outcome("written")


def _looks_like_dicom(path: Path) -> bool:
    """A Part 10 preamble and prefix, or a data set starting with group 0002 or 0008."""
    try:
        with path.open("rb") as fp:
            head = fp.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or head[:2] in (b"\x08\x00", b"\x02\x00")


def _export(pseudonymizer: Pseudonymizer, path: Path, dst: Path, slot: int) -> _Outcome:
    """Pseudonymize one file into ``dst``, named by its pseudonymous UIDs; what became of it.

    Never raises for a bad file: every failure is an outcome with its reason
    (the file's name left out, so equal reasons group).
    """
    staging = dst / f".incoming-{slot}.dcm"
    try:
        result = pseudonymizer.pseudonymize_file(path, staging, atomic=False)
    except PseudonymizationError as exc:
        return _Outcome("refused", _reason(exc))
    except DicomInputError as exc:
        reason = str(exc).replace(path.name, "the file")
        if _looks_like_dicom(path):
            return _Outcome("failed", f"not usable DICOM: {reason}")
        return _Outcome("refused", f"not usable DICOM: {reason}")
    except RecursionError:
        return _Outcome("failed", "sequences nested too deeply to be read")
    except zlib.error:
        return _Outcome("failed", "its deflated data set cannot be inflated")
    except MemoryError:
        return _Outcome("failed", "too large to be read in memory")
    except Exception as exc:  # one unreadable file never stops the batch
        logger.debug("pseudonymizing %s failed", path, exc_info=True)
        return _Outcome("failed", f"could not be read ({type(exc).__name__})")
    final = (
        dst
        / result.study_instance_uid
        / result.series_instance_uid
        / f"{result.sop_instance_uid}.dcm"
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(final)
    return _WRITTEN


class _Tally:
    """Counts per outcome, refusals and failures by reason, failed files named."""

    def __init__(self, src: Path, console: Console) -> None:
        self.src = src
        self.console = console
        self.written = 0
        self.refused: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def add(self, path: Path, outcome: _Outcome) -> None:
        if outcome.kind == "written":
            self.written += 1
            return
        reason = outcome.reason or "no reason given"
        if outcome.kind == "refused":
            self.refused[reason] += 1
            return
        self.failed[reason] += 1
        shown = path.relative_to(self.src) if path != self.src else path.name
        self.console.print(f"[red]failed:[/red] {shown}: {reason}", highlight=False)


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
    from aifi.deid import DeidOptions, Pseudonymizer, load_or_create_key

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
    tally = _Tally(src, console)
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
            outcomes: Iterator[_Outcome] = map(
                _export, repeat(pseudonymizer), files, repeat(dst), slots
            )
            for path, outcome in zip(files, outcomes, strict=True):
                tally.add(path, outcome)
                progress.advance(task)
        else:
            done = 0
            try:
                with ProcessPoolExecutor(max_workers=jobs) as pool:
                    outcomes = pool.map(
                        _export, repeat(pseudonymizer), files, repeat(dst), slots, chunksize=16
                    )
                    for path, outcome in zip(files, outcomes, strict=False):
                        tally.add(path, outcome)
                        done += 1
                        progress.advance(task)
            except BrokenProcessPool:
                for path in files[done:]:
                    tally.add(path, _Outcome("failed", "a worker process died on this batch"))
    summary = Table(
        title=f"{tally.written} written, {sum(tally.refused.values())} refused,"
        f" {sum(tally.failed.values())} failed"
    )
    summary.add_column("count", justify="right")
    summary.add_column("outcome")
    summary.add_column("reason")
    for reason, count in tally.refused.most_common():
        summary.add_row(str(count), "refused", reason)
    for reason, count in tally.failed.most_common():
        summary.add_row(str(count), "failed", reason)
    Console().print(summary)
    if tally.failed:
        raise typer.Exit(1)
