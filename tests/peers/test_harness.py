"""The real-peer harness itself: dcmtk and Orthanc talk DICOM with each other.

Sample studies come from :mod:`aifi.demo.samples` (fictitious patients).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from aifi.demo.samples import compressed, cr_study, write_study
from peers.dcmtk import StoreScp, dcmtk_env, echoscu, storescu
from peers.orthanc import Orthanc


@pytest.fixture
def cr_files(tmp_path: Path) -> list[Path]:
    return write_study(cr_study(n_images=4, rows=256, columns=256), tmp_path / "cr")


def test_storescu_to_orthanc_stores_the_cr_study(orthanc: Orthanc, cr_files: list[Path]) -> None:
    result = storescu(cr_files, orthanc.host, orthanc.dicom_port, called_aet=orthanc.aet)

    assert result.returncode == 0, result.stderr
    sent = [pydicom.dcmread(path, stop_before_pixels=True) for path in cr_files]
    study_uid = sent[0].StudyInstanceUID
    found = orthanc.find_instances(StudyInstanceUID=study_uid)
    assert len(found) == 4
    tags = [orthanc.get_tags(instance) for instance in found]
    assert {t["SOPInstanceUID"] for t in tags} == {ds.SOPInstanceUID for ds in sent}
    assert {t["PatientName"] for t in tags} == {"DEMO^ALICE"}
    assert {t["Modality"] for t in tags} == {"CR"}
    stable = orthanc.wait_for_change("StableStudy", resource_id=orthanc.study_id(study_uid))
    assert stable["ResourceType"] == "Study"


def test_orthanc_answers_c_echo(orthanc: Orthanc) -> None:
    result = echoscu(orthanc.host, orthanc.dicom_port, called_aet=orthanc.aet)

    assert result.returncode == 0, result.stderr


def test_orthanc_forwards_to_a_modality_added_over_rest(
    orthanc: Orthanc, storescp: StoreScp, cr_files: list[Path]
) -> None:
    instance_ids = [orthanc.upload(path) for path in cr_files]
    orthanc.add_modality("edge", storescp.aet, storescp.host, storescp.port)

    assert orthanc.echo("edge")
    orthanc.store_to("edge", instance_ids)

    received = storescp.files()
    assert len(received) == 4
    original = pydicom.dcmread(cr_files[0])
    copy = next(
        pydicom.dcmread(path)
        for path in received
        if pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == original.SOPInstanceUID
    )
    assert copy.PixelData == original.PixelData


def test_dcmtk_tools_run_with_nagle_off(storescp: StoreScp) -> None:
    """Debian's dcmtk keeps Nagle on unless TCP_NODELAY=1 (see peers.dcmtk)."""
    result = subprocess.run(
        ["echoscu", "-d", storescp.host, str(storescp.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "disabling Nagle algorithm" in result.stdout + result.stderr


def test_storescu_to_storescp_writes_files(storescp: StoreScp, cr_files: list[Path]) -> None:
    result = storescu(cr_files, storescp.host, storescp.port, called_aet=storescp.aet)

    assert result.returncode == 0, result.stderr
    assert len(storescp.files()) == 4


def test_compressed_instance_arrives_as_sent(
    orthanc: Orthanc, storescp: StoreScp, tmp_path: Path
) -> None:
    ds = compressed(cr_study(n_images=1, rows=256, columns=256)[0])
    [path] = write_study([ds], tmp_path / "j2k")

    result = storescu([path], orthanc.host, orthanc.dicom_port, called_aet=orthanc.aet)

    assert result.returncode == 0, result.stderr
    [instance] = orthanc.find_instances(SOPInstanceUID=ds.SOPInstanceUID)
    stored = orthanc.dataset(instance)
    assert stored.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert stored.PixelData == ds.PixelData

    orthanc.add_modality("scp", storescp.aet, storescp.host, storescp.port)
    orthanc.store_to("scp", instance)

    [copy] = storescp.files()
    assert pydicom.dcmread(copy).file_meta.TransferSyntaxUID == JPEG2000Lossless
