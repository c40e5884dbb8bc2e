"""``aifi pseudonymize SRC DST --key-file KEY``: the batch command for research exports."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from deid_support import make_instance, write
from typer.testing import CliRunner

from aifi.cli import app


@pytest.mark.parametrize("jobs", [1, 2])
def test_batch_writes_pseudonymized_files_and_summarises_refusals(
    tmp_path: Path, jobs: int
) -> None:
    src = tmp_path / "src" / "Doe_Jane"
    src.mkdir(parents=True)
    write(make_instance(), src / "Doe_Jane_1.dcm")
    write(make_instance(), src / "Doe_Jane_2.dcm")
    burned = make_instance()
    burned.BurnedInAnnotation = "YES"
    write(burned, src / "Doe_Jane_3.dcm")
    (src / "notes.txt").write_text("not DICOM")
    key_file = tmp_path / "key.bin"

    result = CliRunner().invoke(
        app,
        [
            "pseudonymize",
            str(tmp_path / "src"),
            str(tmp_path / "dst"),
            "--key-file",
            str(key_file),
            "--keep",
            "PatientSex",
            "--modified-dates",
            "--jobs",
            str(jobs),
        ],
    )

    assert result.exit_code == 0, result.output
    assert key_file.stat().st_size == 32
    written = sorted((tmp_path / "dst").rglob("*.dcm"))
    assert len(written) == 2
    assert not list((tmp_path / "dst").glob(".incoming*"))
    assert all("Doe" not in str(p) for p in written)
    ds = pydicom.dcmread(written[0])
    assert ds.PatientSex == "F" and ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "2 written, 2 refused" in result.output
    assert "Burned In Annotation" in result.output and "not a DICOM file" in result.output


def test_keeping_identity_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "pseudonymize",
            str(tmp_path),
            str(tmp_path / "dst"),
            "--key-file",
            str(tmp_path / "k"),
            "--keep",
            "PatientBirthDate",
        ],
    )
    assert result.exit_code == 2
    assert not (tmp_path / "dst").exists()
