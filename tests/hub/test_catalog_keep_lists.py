"""The edge pseudonymizes for what the hub's catalog says an algorithm needs kept.

A vendor's algorithm added only at the hub (the edge has no copy of it) must
still get the attributes its manifest asks for, and nothing is sent for an
algorithm the hub does not offer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from aifi.algorithms import registry
from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.deid import Pseudonymizer
from aifi.edge.catalog import HubCatalog
from aifi.edge.config import HubPeer
from aifi.errors import HubRefused, HubUnavailable
from aifi.netutil import free_port
from aifi.protocol.client import HubClient

from .conftest import Hub


class VendorLung:
    """Stands for a vendor's algorithm configured at the hub only."""

    manifest = Manifest(
        id="vendor-lung",
        version="3.1",
        name="Vendor lung CT",
        vendor="Example Vendor",
        intended_use="tests",
        regulatory_status="tests only",
        accepts=(),
        keep_attributes=("StudyDescription", "BodyPartExamined"),
    )

    def run(self, inputs: AlgorithmInput) -> Findings:
        return Findings(summary="tests")


@pytest.fixture
def test_algorithms() -> dict[str, Algorithm]:
    return {"vendor-lung": VendorLung()}


@pytest.fixture
def client(hub: Hub, token_a: str) -> Iterator[HubClient]:
    client = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a))
    yield client
    client.close()


def test_the_catalog_serves_each_versions_keep_list(hub: Hub, token_a: str) -> None:
    entries = hub.client.get("/catalog", headers=hub.auth(token_a)).json()
    by_id = {e["algorithm_id"]: e for e in entries}
    assert by_id["vendor-lung"]["keep_attributes"] == ["StudyDescription", "BodyPartExamined"]
    installed = registry.get("incidental-pe").manifest
    assert by_id["incidental-pe"]["keep_attributes"] == list(installed.keep_attributes)


def test_an_algorithm_only_the_hub_knows_gets_its_attributes_kept(
    client: HubClient, tmp_path: Path
) -> None:
    keep = HubCatalog(client).keep_attributes("vendor-lung")
    assert keep == ("BodyPartExamined", "StudyDescription")
    source = get_testdata_file("CT_small.dcm")
    assert isinstance(source, str)
    kept = Pseudonymizer(b"k" * 32, keep=keep).pseudonymize_file(Path(source), tmp_path / "a.dcm")
    plain = Pseudonymizer(b"k" * 32).pseudonymize_file(Path(source), tmp_path / "b.dcm")
    assert kept.sop_instance_uid == plain.sop_instance_uid
    # kept, but as free text only the words of the descriptor vocabulary pass (none here)
    assert pydicom.dcmread(tmp_path / "a.dcm").StudyDescription == ""
    assert "StudyDescription" not in pydicom.dcmread(tmp_path / "b.dcm")


def test_an_algorithm_the_hub_does_not_offer_is_refused_with_the_reason(
    client: HubClient,
) -> None:
    with pytest.raises(HubRefused, match="no active version of algorithm 'chest-xray'"):
        HubCatalog(client).keep_attributes("chest-xray")


def test_a_suspended_version_is_not_pseudonymized_for_once_the_cache_expires(
    hub: Hub, client: HubClient, operator_token: str
) -> None:
    now = [0.0]
    catalog = HubCatalog(client, ttl_s=60, clock=lambda: now[0])
    assert catalog.keep_attributes("vendor-lung")
    response = hub.client.post(
        "/catalog/vendor-lung/3.1/state",
        json={"state": "suspended", "reason": "vendor maintenance"},
        headers=hub.auth(operator_token),
    )
    assert response.status_code == 200, response.text
    assert catalog.keep_attributes("vendor-lung")  # still cached
    now[0] = 61.0
    with pytest.raises(HubRefused, match="no active version"):
        catalog.keep_attributes("vendor-lung")


def test_a_hub_that_is_down_is_retried_later_not_failed() -> None:
    """No database: the edge's side of a hub that does not answer."""
    down = HubClient(HubPeer(url=f"http://127.0.0.1:{free_port()}", token="t" * 32))
    try:
        with pytest.raises(HubUnavailable, match="will retry"):
            HubCatalog(down).keep_attributes("fracture")
    finally:
        down.close()
