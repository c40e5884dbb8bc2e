"""No character set and no missing optional attribute makes a result fail.

Each shipped algorithm's real findings (``conftest.algorithm_runs``) are
encoded on its study rewritten as a modality in Japan, Korea or China
writes it (Specific Character Set with ISO 2022 code extensions, GB18030,
UTF-8; the names as in pydicom's character set test files chrH31, chrI2,
chrX1, chrX2, plus ISO 2022 IR 58), or without Study ID, Accession Number
or Referring Physician's Name. The hub sees pseudonymized inputs, whose
names are ASCII, but the character set stays; these tests keep the
non-ASCII name too, so a result that re-encodes it wrongly shows. Every
object must be made, pass dciodvfy, be UTF-8 and keep the patient's name.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from aifi.results import encode_results

from .conftest import Run
from .helpers import dciodvfy_errors, saved

CHARACTER_SETS = {
    "ISO 2022 IR 6 + IR 87 (Japanese)": (["ISO 2022 IR 6", "ISO 2022 IR 87"], "やまだ^たろう"),
    "ISO 2022 IR 87 (Japanese)": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "ISO 2022 IR 149 (Korean)": (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),
    # pydicom writes IR 58 without its escape sequence: the bytes a modality writes (PS3.5 K.2)
    "ISO 2022 IR 58 (Chinese)": (
        ["", "ISO 2022 IR 58"],
        b"Wang^XiaoDong=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xb6\xab",
    ),
    "GB18030": ("GB18030", "Wang^XiaoDong=王^小东"),
    "ISO_IR 192": ("ISO_IR 192", "Wang^XiaoDong=王^小東"),
}
MISSING = ("StudyID", "AccessionNumber", "ReferringPhysicianName")
ALGORITHMS = ("fracture-positive", "pe-positive", "bone-age", "integrity-check")


def rewritten(run: Run, folder: Path, **changes: object) -> list[Path]:
    """The run's study written again with ``changes`` (None deletes the attribute)."""
    folder.mkdir(parents=True)
    paths = []
    for source in run.paths:
        ds = pydicom.dcmread(source)
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        path = folder / source.name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def encoded_and_checked(run: Run, paths: list[Path], folder: Path) -> list[pydicom.Dataset]:
    """The results on ``paths`` as the hub makes them, each stored, valid and read back."""
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    objects = encode_results(run.findings, run.manifest, headers)
    assert [kind for kind, _ in objects][: len(run.manifest.produces)] or objects
    stored = []
    for number, (kind, ds) in enumerate(objects):
        path = saved(ds, folder, f"{number}-{kind}")
        assert dciodvfy_errors(path) == [], kind
        result = pydicom.dcmread(path)
        assert result.SpecificCharacterSet == "ISO_IR 192", kind
        if kind == "sr":
            assert isinstance(hd.sr.srread(path), hd.sr.Comprehensive3DSR)
        stored.append(result)
    assert {kind for kind, _ in objects} == set(run.manifest.produces)
    return stored


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("charset", sorted(CHARACTER_SETS))
def test_every_character_set_gives_valid_results_with_the_name_kept(
    algorithm: str, charset: str, algorithm_runs: dict[str, Run], tmp_path: Path
) -> None:
    value, name = CHARACTER_SETS[charset]
    run = algorithm_runs[algorithm]
    paths = rewritten(
        run,
        tmp_path / "study",
        SpecificCharacterSet=value,
        PatientName=name,
        StudyDescription="胸部 CT",
    )

    results = encoded_and_checked(run, paths, tmp_path)

    expected = name if isinstance(name, str) else "Wang^XiaoDong=王^小东"
    for result in results:
        assert str(result.PatientName) == expected
        assert result.StudyInstanceUID == pydicom.dcmread(paths[0]).StudyInstanceUID


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("keyword", MISSING)
def test_a_missing_type_2_attribute_is_written_empty(
    algorithm: str, keyword: str, algorithm_runs: dict[str, Run], tmp_path: Path
) -> None:
    run = algorithm_runs[algorithm]
    paths = rewritten(run, tmp_path / "study", **{keyword: None})

    results = encoded_and_checked(run, paths, tmp_path)

    for result in results:
        assert keyword in result and not result[keyword].value, result.Modality
