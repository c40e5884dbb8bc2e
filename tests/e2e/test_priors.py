"""Priors on the user's path: a bone age compared with the child's earlier hand radiograph.

Orthanc (Debian package, DICOM Q/R built in) is the hospital's PACS and holds
four hand studies put there by dcmtk's storescu: the current one, a prior of
the same child ten months earlier, one five years older (outside the two years
bone-age asks for) and another child's. An operator runs ``aifi edge request
--accession ... --algorithm bone-age`` beside the running edge; the edge pulls
the study and its prior by C-MOVE, pseudonymizes both with the same patient
pseudonym, and sends both with the task to the hub (``aifi hub serve`` in a
process of its own), which runs bone-age on the current study with the prior
beside it. The SR that lands back in Orthanc names the prior in its Pertinent
Other Evidence Sequence (PS3.3 C.17.2.3) by the prior's real Study and SOP
Instance UIDs, re-identified at the edge; the hub only ever saw pseudonyms.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from aifi.edge.config import load_edge_settings
from aifi.edge.service import EdgeService
from aifi.netutil import free_port
from aifi.phantoms.dicom import StudyContext
from aifi.phantoms.hand import bone_age_study
from aifi.phantoms.write import write_study
from peers.dcmtk import storescu
from peers.orthanc import Orthanc

from .conftest import HubProcess

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]

CHILD = "PH-PRIORS-1"
PASSWORD = "s3cret-for-priors"


def hand_study(
    accession: str, *, patient_id: str, date: dt.date, age_months: int, seed: int
) -> list[pydicom.FileDataset]:
    context = StudyContext(
        patient_name="PHANTOM^HAND",
        patient_id=patient_id,
        patient_sex="F",
        age_months=age_months,
        study_date=date,
        accession_number=accession,
        study_description="XR HAND BONE AGE",
    )
    return list(bone_age_study(age_months=age_months, sex="F", seed=seed, study=context))


def into_orthanc(orthanc: Orthanc, datasets: list[pydicom.FileDataset], folder: Path) -> str:
    files = write_study(datasets, folder)
    result = storescu(
        files, "127.0.0.1", orthanc.dicom_port, calling_aet="MODALITY", called_aet=orthanc.aet
    )
    assert result.returncode == 0, result.stderr
    return str(datasets[0].StudyInstanceUID)


def edge_toml(
    folder: Path,
    orthanc: Orthanc,
    hub: HubProcess,
    token: str,
    *,
    status_port: int | None = None,
    extra: str = "",
    query_retrieve_port: int | None = None,
) -> Path:
    status = (
        f'port = {status_port}\nadmin_password = "{PASSWORD}"' if status_port else "enabled = false"
    )
    config = folder / "edge.toml"
    config.write_text(
        f"""
data_dir = "edge-data"
quiet_period_s = 0.5

[listener]
port = {free_port()}
allowed_calling_aets = ["{orthanc.aet}"]
min_free_bytes = 0

[hub]
url = "{hub.url}"
token = "{token}"
poll_interval_s = 0.1
max_backoff_s = 1.0

[pacs]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[status]
{status}

[[query_retrieve]]
name = "pacs"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {query_retrieve_port or orthanc.dicom_port}
method = "move"
{extra}
""",
        encoding="utf-8",
    )
    return config


def wait_for_sr(orthanc: Orthanc, study_uid: str, timeout: float = 120) -> pydicom.Dataset:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
        if ids:
            return orthanc.dataset(ids[0])
        time.sleep(0.2)
    raise AssertionError(f"no SR arrived in Orthanc within {timeout} s")


def test_bone_age_gets_the_prior_and_its_sr_names_the_real_prior_study(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess
) -> None:
    current = into_orthanc(
        orthanc,
        hand_study("ACC-NOW", patient_id=CHILD, date=dt.date(2026, 1, 15), age_months=121, seed=3),
        tmp_path / "now",
    )
    then = hand_study(
        "ACC-THEN", patient_id=CHILD, date=dt.date(2025, 3, 15), age_months=111, seed=4
    )
    prior = into_orthanc(orthanc, then, tmp_path / "then")
    into_orthanc(  # five years earlier: outside the two years bone-age asks for
        orthanc,
        hand_study("ACC-OLD", patient_id=CHILD, date=dt.date(2021, 1, 15), age_months=61, seed=5),
        tmp_path / "old",
    )
    into_orthanc(  # another child
        orthanc,
        hand_study(
            "ACC-OTHER", patient_id="PH-OTHER", date=dt.date(2025, 6, 1), age_months=100, seed=6
        ),
        tmp_path / "other",
    )
    token = hub.add_hospital("St. Example", subscribe="bone-age")
    config = edge_toml(tmp_path, orthanc, hub, token)
    settings = load_edge_settings(config)
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "aifi", "edge", "request", "--accession", "ACC-NOW",
                "--algorithm", "bone-age", "--config", str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "(1 prior studies)" in result.stdout, result.stdout

        sr = wait_for_sr(orthanc, current)
        assert sr.PatientID == CHILD  # re-identified, filed in the current study
        (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == current
        (other,) = sr.PertinentOtherEvidenceSequence
        assert other.StudyInstanceUID == prior  # the real prior Study UID, mapped back
        (series,) = other.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == then[0].SeriesInstanceUID
        assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
            then[0].SOPInstanceUID
        ]
        texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
        # The pseudonymizer keeps no dates for bone-age: the interval comes from Patient's Age
        # (010Y now, 009Y then), as precise as a year.
        assert any("Compared with the prior of about 12 months earlier" in t for t in texts), (
            "|".join(texts)
        )

        (task,) = service.state.tasks()
        events = {e["kind"]: e["detail"] for e in service.state.task_events(task.id)}
        assert "with 1 prior studies" in events["task-submitted"]
        seen = httpx.get(
            f"{hub.url}/tasks/{task.hub_task_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).json()
        (listed,) = seen["prior_studies"]
        assert listed["study_instance_uid"] not in (prior, current)  # a pseudonym at the hub
        assert len(listed["sop_instance_uids"]) == 1
        comparison = seen["findings"]["details"]["prior"]
        assert comparison["study_instance_uid"] == listed["study_instance_uid"]
        assert (comparison["interval_months"], comparison["interval_from"]) == (12, "PatientAge")
        assert comparison["sop_instance_uid"] == listed["sop_instance_uids"][0]
    finally:
        service.stop()


def bone_age_workitem(accession: str) -> dict[str, Any]:
    """A UPS as a RIS creates it (PS3.4 Table CC.2.5-3): bone-age on the study by accession."""
    return {
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": ["bone age"]},
        "00404018": {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": ["bone-age"]},
                    "00080102": {"vr": "SH", "Value": ["99AIFI"]},
                    "00080104": {"vr": "LO", "Value": ["bone age"]},
                }
            ],
        },
        "0040A370": {"vr": "SQ", "Value": [{"00080050": {"vr": "SH", "Value": [accession]}}]},
    }


def test_a_ups_workitem_pulls_the_prior_the_hubs_catalog_asks_for(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess
) -> None:
    """A Task Requester's workitem (IHE AIW-I, PS3.18 §11.4) gets the prior too, by the catalog."""
    current = into_orthanc(
        orthanc,
        hand_study("ACC-UPS", patient_id=CHILD, date=dt.date(2026, 2, 1), age_months=121, seed=7),
        tmp_path / "now",
    )
    then = hand_study(
        "ACC-UPS-THEN", patient_id=CHILD, date=dt.date(2025, 2, 1), age_months=109, seed=8
    )
    prior = into_orthanc(orthanc, then, tmp_path / "then")
    into_orthanc(  # another child, same dates: never this child's prior
        orthanc,
        hand_study(
            "ACC-UPS-OTHER", patient_id="PH-OTHER", date=dt.date(2025, 6, 1), age_months=110,
            seed=9,
        ),
        tmp_path / "other",
    )  # fmt: skip
    token = hub.add_hospital("St. Example", subscribe="bone-age")
    config = edge_toml(tmp_path, orthanc, hub, token, status_port=free_port())
    settings = load_edge_settings(config)
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    try:
        assert service.status_url is not None
        created = httpx.post(
            f"{service.status_url}workitems",
            json=bone_age_workitem("ACC-UPS"),
            headers={"Authorization": f"Bearer {PASSWORD}"},
            timeout=120,
        )
        assert created.status_code == 201, created.text
        (pulled,) = service.state.events("pull-requested")
        assert "(1 prior studies)" in pulled["detail"]

        sr = wait_for_sr(orthanc, current)
        (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == current
        (other,) = sr.PertinentOtherEvidenceSequence
        assert other.StudyInstanceUID == prior  # the real prior, mapped back at the edge
        (series,) = other.ReferencedSeriesSequence
        assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
            then[0].SOPInstanceUID
        ]
    finally:
        service.stop()


HAND_RULE = """
[[rules]]
name = "hand radiographs to bone age"
algorithm = "bone-age"
match = { BodyPartExamined = ["HAND"] }
"""


def test_a_study_the_pacs_pushes_gets_its_prior_pulled_before_its_task(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess
) -> None:
    """C-STORE from the PACS, a rule to bone-age: the edge pulls the prior the catalog asks for."""
    current = into_orthanc(
        orthanc,
        hand_study("ACC-PUSH", patient_id=CHILD, date=dt.date(2026, 3, 1), age_months=121, seed=10),
        tmp_path / "now",
    )
    then = hand_study(
        "ACC-PUSH-THEN", patient_id=CHILD, date=dt.date(2025, 5, 1), age_months=111, seed=11
    )
    prior = into_orthanc(orthanc, then, tmp_path / "then")
    into_orthanc(  # another child
        orthanc,
        hand_study(
            "ACC-PUSH-OTHER", patient_id="PH-OTHER", date=dt.date(2025, 6, 1), age_months=100,
            seed=12,
        ),
        tmp_path / "other",
    )  # fmt: skip
    token = hub.add_hospital("St. Example", subscribe="bone-age")
    config = edge_toml(tmp_path, orthanc, hub, token, extra=HAND_RULE)
    settings = load_edge_settings(config)
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    try:
        orthanc.store_to("aifi", orthanc.study_id(current))  # the PACS auto-routes the study

        sr = wait_for_sr(orthanc, current)
        (other,) = sr.PertinentOtherEvidenceSequence
        assert other.StudyInstanceUID == prior  # the real prior, pulled by C-MOVE, mapped back
        (series,) = other.ReferencedSeriesSequence
        assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
            then[0].SOPInstanceUID
        ]
        (task,) = service.state.tasks()  # the prior is the task's input, not a task of its own
        assert task.study_instance_uid == current
        assert service.state.events("priors-searching")
        (pulled,) = service.state.events("priors-retrieved")
        assert pulled["detail"].startswith(f"bone-age on study {current}: 1 of 1 prior studies")
        kinds = [e["kind"] for e in service.state.task_events(task.id)]
        assert "priors-pulled" in kinds
    finally:
        service.stop()


# pynetdicom's transport drops the socket of a refused connection without closing it
# (transport.py, connect): CPython closes it at once, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pushed_study_goes_without_priors_when_the_query_retrieve_peer_is_down(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess
) -> None:
    current = into_orthanc(
        orthanc,
        hand_study("ACC-DOWN", patient_id=CHILD, date=dt.date(2026, 3, 1), age_months=121, seed=13),
        tmp_path / "now",
    )
    into_orthanc(
        orthanc,
        hand_study(
            "ACC-DOWN-THEN", patient_id=CHILD, date=dt.date(2025, 5, 1), age_months=111, seed=14
        ),
        tmp_path / "then",
    )
    token = hub.add_hospital("St. Example", subscribe="bone-age")
    config = edge_toml(
        tmp_path, orthanc, hub, token, extra=HAND_RULE, query_retrieve_port=free_port()
    )
    settings = load_edge_settings(config)
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    try:
        orthanc.store_to("aifi", orthanc.study_id(current))

        sr = wait_for_sr(orthanc, current)  # the result comes, without the prior
        assert "PertinentOtherEvidenceSequence" not in sr
        (missed,) = service.state.events("priors-not-pulled")
        assert "goes without priors" in missed["detail"]
        assert "refused or did not answer the association" in missed["detail"]
        deadline = time.monotonic() + 30
        while [t.state for t in service.state.tasks()] != ["delivered"]:
            assert time.monotonic() < deadline, [t.state for t in service.state.tasks()]
            time.sleep(0.1)
    finally:
        service.stop()


def test_an_hl7_order_pulls_the_prior_the_hubs_catalog_asks_for(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess
) -> None:
    """An ORM^O01 from the RIS (IHE RAD-4) for a study in the PACS: the prior comes too."""
    current = into_orthanc(
        orthanc,
        hand_study("ACC-ORM", patient_id=CHILD, date=dt.date(2026, 4, 1), age_months=121, seed=15),
        tmp_path / "now",
    )
    then = hand_study(
        "ACC-ORM-THEN", patient_id=CHILD, date=dt.date(2025, 6, 1), age_months=111, seed=16
    )
    prior = into_orthanc(orthanc, then, tmp_path / "then")
    token = hub.add_hospital("St. Example", subscribe="bone-age")
    mllp_port = free_port()
    orders = f"""
[orders]
port = {mllp_port}
retry_interval_s = 0.5

[orders.codes]
XRHANDBA = "bone-age"
"""
    config = edge_toml(tmp_path, orthanc, hub, token, extra=orders)
    settings = load_edge_settings(config)
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    try:
        message = "\r".join(
            [
                "MSH|^~\\&|RIS|HOSP|AIFI|EDGE|20260401093000||ORM^O01|M-ORM-1|P|2.3",
                f"PID|1||{CHILD}^^^HOSP||PHANTOM^HAND||20160101|F",
                "ORC|NW|PLC-ORM|F-ORM||SC||^^^^^R",
                "|".join(["OBR", "1", "PLC-ORM", "F-ORM", "XRHANDBA^Hand bone age^L"]
                         + [""] * 13 + ["ACC-ORM"]),
            ]
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", mllp_port), timeout=30) as sock:
            sock.sendall(b"\x0b" + message.encode() + b"\x1c\x0d")
            ack = b""
            while not ack.endswith(b"\x1c\x0d"):
                chunk = sock.recv(65536)
                assert chunk, "no ACK"
                ack += chunk
        assert b"MSA|AA" in ack, ack

        sr = wait_for_sr(orthanc, current)
        (other,) = sr.PertinentOtherEvidenceSequence
        assert other.StudyInstanceUID == prior  # the real prior, mapped back at the edge
        (series,) = other.ReferencedSeriesSequence
        assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
            then[0].SOPInstanceUID
        ]
        (pulled,) = service.state.events("pull-requested")
        assert "(1 prior studies)" in pulled["detail"]
    finally:
        service.stop()


def test_a_workitem_for_a_study_the_pacs_pushed_before_pulls_its_prior(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess
) -> None:
    """No rule routed the pushed study; a workitem asks for bone-age on it: the prior comes."""
    current = into_orthanc(
        orthanc,
        hand_study("ACC-HELD", patient_id=CHILD, date=dt.date(2026, 5, 1), age_months=121, seed=17),
        tmp_path / "now",
    )
    then = hand_study(
        "ACC-HELD-THEN", patient_id=CHILD, date=dt.date(2025, 7, 1), age_months=111, seed=18
    )
    prior = into_orthanc(orthanc, then, tmp_path / "then")
    token = hub.add_hospital("St. Example", subscribe="bone-age")
    config = edge_toml(tmp_path, orthanc, hub, token, status_port=free_port())
    settings = load_edge_settings(config)
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    try:
        orthanc.store_to("aifi", orthanc.study_id(current))  # pushed; no rule routes it
        deadline = time.monotonic() + 30
        while not service.state.events("study-not-routed"):
            assert time.monotonic() < deadline, "the pushed study was not assembled"
            time.sleep(0.1)
        assert service.status_url is not None
        created = httpx.post(
            f"{service.status_url}workitems",
            json=bone_age_workitem("ACC-HELD"),
            headers={"Authorization": f"Bearer {PASSWORD}"},
            timeout=120,
        )
        assert created.status_code == 201, created.text
        assert service.state.events("pull-requested") == []  # held: only the prior was pulled
        (retrieved,) = service.state.events("priors-retrieved")
        assert retrieved["detail"].startswith(f"bone-age on study {current}: 1 of 1 prior")

        sr = wait_for_sr(orthanc, current)
        (other,) = sr.PertinentOtherEvidenceSequence
        assert other.StudyInstanceUID == prior
    finally:
        service.stop()
