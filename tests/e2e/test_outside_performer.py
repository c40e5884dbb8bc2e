"""An outside performer's findings reach the hospital's PACS (issue 14, IHE AIW-I).

The hub (its own process) lists ``integrity-check`` in ``outside_algorithms``:
its workers leave the study the edge uploads to a vendor's runner, played
here by the test with a performer token (``aifi hub operator add --role
performer``). The runner finds the workitem, claims it with a Transaction
UID, reads the pseudonymized inputs at their Retrieve URL, hands in its
findings and completes it; the hub makes the SR, and the edge fetches it,
re-identifies it and stores it into Orthanc, in the patient's study.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from aifi.edge.config import DicomPeer, EdgeSettings, HubPeer, ListenerSettings
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.protocol.client import split_multipart
from peers.orthanc import Orthanc

from .conftest import HUB_ON_BOTH_DATABASES, HubProcess
from .test_round_trip import referenced_uids, send_study_through_orthanc, wait_for_sr

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]

ALGORITHM = "integrity-check"
FINDING = "outside runner: no abnormality seen"


@pytest.fixture
def outside_hub(hub: HubProcess) -> HubProcess:
    """The hub again, with ``integrity-check`` performed outside."""
    hub.stop()
    hub.config.write_text(
        hub.config.read_text(encoding="utf-8") + f'outside_algorithms = ["{ALGORITHM}"]\n',
        encoding="utf-8",
    )
    hub.start()
    return hub


@pytest.fixture
def performer(outside_hub: HubProcess) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "aifi", "hub", "operator", "add", "Vendor runner",
         "--role", "performer", "--config", str(outside_hub.config)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def edge(tmp_path: Path, outside_hub: HubProcess, orthanc: Orthanc) -> Iterator[EdgeService]:
    settings = EdgeSettings(
        data_dir=tmp_path / "edge",
        quiet_period_s=0.5,
        listener=ListenerSettings(port=0, allowed_calling_aets=[orthanc.aet]),
        hub=HubPeer(
            url=outside_hub.url,
            token=outside_hub.add_hospital("St. Example", subscribe=ALGORITHM),
            poll_interval_s=0.1,
            max_backoff_s=1.0,
        ),
        pacs=DicomPeer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port),
        rules=[Rule(name="to the vendor", algorithm=ALGORITHM)],
    )
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    yield service
    service.stop()


def _state(value: str, transaction: str) -> dict[str, Any]:
    return {
        "00741000": {"vr": "CS", "Value": [value]},
        "00081195": {"vr": "UI", "Value": [transaction]},
    }


def _scheduled(client: httpx.Client, timeout: float = 60) -> dict[str, Any]:
    """The one SCHEDULED workitem the performer may take, once the edge has uploaded it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get("/workitems", params={"ProcedureStepState": "SCHEDULED"})
        if found.status_code == 200:
            (item,) = found.json()
            return dict(item)
        assert found.status_code == 204, found.text
        time.sleep(0.2)
    raise AssertionError(f"no workitem for the performer within {timeout} s")


@HUB_ON_BOTH_DATABASES
def test_an_outside_performers_finding_lands_in_the_patients_study(
    tmp_path: Path, orthanc: Orthanc, outside_hub: HubProcess, performer: str, edge: EdgeService
) -> None:
    files = send_study_through_orthanc(orthanc, tmp_path, n=2)
    originals = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    study_uid = str(originals[0].StudyInstanceUID)

    with httpx.Client(
        base_url=outside_hub.url, headers={"Authorization": f"Bearer {performer}"}, timeout=30
    ) as runner:
        item = _scheduled(runner)
        uid = item["00080018"]["Value"][0]
        transaction = generate_uid()
        claimed = runner.put(f"/workitems/{uid}/state", json=_state("IN PROGRESS", transaction))
        assert claimed.status_code == 200, claimed.text

        (given,) = item["00404021"]["Value"]
        read = runner.get(given["00081190"]["Value"][0], headers={"Transaction-UID": transaction})
        assert read.status_code == 200, read.text
        inputs = [
            pydicom.dcmread(io.BytesIO(part))
            for part in split_multipart(read.content, read.headers["content-type"])
        ]
        assert len(inputs) == len(files)
        assert all(i.PatientID != originals[0].PatientID for i in inputs)  # pseudonymized

        findings = {
            "summary": FINDING,
            "images": [{"sop_instance_uid": str(inputs[0].SOPInstanceUID), "texts": []}],
        }
        handed = runner.put(
            f"/workitems/{uid}/findings", json=findings, headers={"Transaction-UID": transaction}
        )
        assert handed.status_code == 204, handed.text
        done = runner.put(f"/workitems/{uid}/state", json=_state("COMPLETED", transaction))
        assert done.status_code == 200, done.text

    (sr,) = wait_for_sr(orthanc, study_uid)
    assert sr.PatientID == originals[0].PatientID  # re-identified by the edge
    assert FINDING in [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert referenced_uids(sr) <= {str(o.SOPInstanceUID) for o in originals}
