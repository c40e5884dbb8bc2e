"""STOW-RS into the edge (PS3.18 §10.5): a DICOMweb-native PACS stores a study with
dicomweb-client, and the edge takes it as it takes a C-STORE.

A real hub (status_support.running_hub), a real edge service with its local
web server; the study is the demo's synthetic CR (aifi.demo.samples).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from status_support import PASSWORD, edge_settings, running_hub, study, wait_for

from aifi.edge.service import EdgeService
from aifi.netutil import free_port


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeService]:
    with running_hub(tmp_path / "hub") as (hub_url, token):
        settings = edge_settings(tmp_path / "edge", hub_url, token, free_port())
        service = EdgeService(settings.model_copy(update={"rules": []}))  # held, not routed
        service.start()
        try:
            yield service
        finally:
            service.stop()


def _client(edge: EdgeService, password: str = PASSWORD) -> DICOMwebClient:
    assert edge.status_url is not None
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {password}"
    return DICOMwebClient(url=edge.status_url.rstrip("/") + "/dicomweb", session=session)


def test_a_study_stored_by_stow_rs_is_received_like_a_c_store(edge: EdgeService) -> None:
    datasets = study(2)

    response = _client(edge).store_instances(datasets)

    sent = {str(ds.SOPInstanceUID) for ds in datasets}
    assert {str(i.ReferencedSOPInstanceUID) for i in response.ReferencedSOPSequence} == sent
    assert "FailedSOPSequence" not in response
    assert all(edge.state.has_instance(uid) for uid in sent)
    received = sorted((edge.settings.data_dir / "received").glob("**/*.dcm"))
    assert len(received) == 2
    for path in received:
        ds = pydicom.dcmread(path)
        original = next(d for d in datasets if d.SOPInstanceUID == ds.SOPInstanceUID)
        assert ds.PixelData == original.PixelData
    # the study goes on as a C-STOREd one would: stable, then held for want of a rule
    wait_for(lambda: bool(edge.state.events("study-not-routed")), what="the study assembled")


def test_refusals_carry_status_and_reason(edge: EdgeService) -> None:
    good, bad = study(2)
    bad.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"  # not the data set's own UID

    response = _client(edge).store_instances([good, bad])

    (stored,) = response.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == good.SOPInstanceUID
    (failed,) = response.FailedSOPSequence
    assert failed.FailureReason == 0xA900  # as the C-STORE listener answers
    assert failed.ReferencedSOPInstanceUID == "1.2.3.4"
    assert "UID" in failed.TextValue, failed.TextValue


def test_another_study_in_the_url_is_refused(edge: EdgeService) -> None:
    (ds,) = study(1)

    with pytest.raises(requests.HTTPError) as raised:
        _client(edge).store_instances([ds], study_instance_uid="1.2.3.4")

    assert raised.value.response.status_code == 409
    (failed,) = Dataset.from_json(raised.value.response.json()).FailedSOPSequence
    assert failed.FailureReason == 0xC409
    assert not edge.state.has_instance(str(ds.SOPInstanceUID))


def test_a_wrong_password_stores_nothing(edge: EdgeService) -> None:
    (ds,) = study(1)

    with pytest.raises(requests.HTTPError) as raised:
        _client(edge, "guess").store_instances([ds])

    assert raised.value.response.status_code == 401
    assert not edge.state.has_instance(str(ds.SOPInstanceUID))
