"""The demo's built-in PACS, driven by dcmtk's storescu and echoscu.

Sample studies come from :mod:`aifi.demo.samples` (fictitious patients);
``test-SR.dcm`` is pydicom's own test file (pydicom.data).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless

from aifi.demo.pacs import DemoPacs
from aifi.demo.samples import compressed, cr_study, write_study
from aifi.errors import ConfigError
from peers.dcmtk import echoscu, storescu

pytestmark = pytest.mark.dcmtk


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[DemoPacs]:
    with DemoPacs(tmp_path / "pacs") as server:
        yield server


def test_stores_a_cr_study_sent_by_storescu(pacs: DemoPacs, tmp_path: Path) -> None:
    sent = write_study(cr_study(n_images=4, rows=256, columns=256), tmp_path / "cr")

    result = storescu(sent, "127.0.0.1", pacs.port, called_aet=pacs.ae_title)

    assert result.returncode == 0, result.stderr
    assert len(pacs.instances()) == 4
    for path in sent:
        original = pydicom.dcmread(path)
        stored = pydicom.dcmread(pacs.folder / f"{original.SOPInstanceUID}.dcm")
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.PatientName == original.PatientName
        assert stored.PixelData == original.PixelData


def test_keeps_a_compressed_instance_as_received(pacs: DemoPacs, tmp_path: Path) -> None:
    ds = compressed(cr_study(n_images=1, rows=256, columns=256)[0])
    [path] = write_study([ds], tmp_path / "j2k")

    result = storescu([path], "127.0.0.1", pacs.port, called_aet=pacs.ae_title)

    assert result.returncode == 0, result.stderr
    [stored_path] = pacs.instances()
    stored = pydicom.dcmread(stored_path)
    assert stored.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert stored.PixelData == ds.PixelData


def test_accepts_structured_reports(pacs: DemoPacs) -> None:
    sr = Path(str(get_testdata_file("test-SR.dcm")))

    result = storescu([sr], "127.0.0.1", pacs.port, called_aet=pacs.ae_title)

    assert result.returncode == 0, result.stderr
    [stored] = pacs.instances()
    assert pydicom.dcmread(stored).SOPInstanceUID == pydicom.dcmread(sr).SOPInstanceUID


def test_answers_c_echo(pacs: DemoPacs) -> None:
    result = echoscu("127.0.0.1", pacs.port, called_aet=pacs.ae_title)

    assert result.returncode == 0, result.stderr


def test_stops_listening_when_stopped(tmp_path: Path) -> None:
    pacs = DemoPacs(tmp_path / "pacs")
    pacs.start()
    port = pacs.port
    pacs.stop()

    assert not pacs.running
    assert echoscu("127.0.0.1", port).returncode != 0


def test_a_busy_port_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        pacs = DemoPacs(tmp_path / "pacs", port=busy.getsockname()[1])

        with pytest.raises(ConfigError, match="cannot listen"):
            pacs.start()


def test_refuses_an_ae_title_that_is_too_long(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ae_title"):
        DemoPacs(tmp_path, ae_title="A" * 17)
