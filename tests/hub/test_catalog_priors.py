"""The hub's catalog says which priors each algorithm asks for; the edge pulls by it (issue 14).

An edge knows algorithms from the hub's catalog, not from a copy installed
beside it: the priors a manifest asks for (years, same body part, at most
how many) travel in ``GET /catalog`` like its keep list. And an edge sends
``prior_studies`` in ``POST /tasks`` only when there are priors, so a hub
from before priors (migration 0009) takes its tasks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aifi.algorithms.base import AlgorithmInput, Findings, Manifest, Priors
from aifi.core.manifest import Priors as CorePriors
from aifi.edge.catalog import HubCatalog, requested_priors
from aifi.edge.config import HubPeer
from aifi.hub.catalog import sync_catalog
from aifi.hub.db import make_engine, make_sessions
from aifi.netutil import free_port
from aifi.protocol.client import HubClient
from aifi.protocol.schemas import TaskCreate

from .conftest import Hub, new_uid, pseudonymized


def manifest(version: str, priors: Priors | None) -> Manifest:
    return Manifest(
        id="follow-up",
        version=version,
        name="compares with earlier studies",
        vendor="tests",
        intended_use="tests",
        regulatory_status="tests only",
        accepts=(),
        priors=priors,
    )


class FollowUp:
    manifest = manifest("1.0", Priors(years=3, same_body_part=False, max_studies=2))

    def run(self, inputs: AlgorithmInput) -> Findings:
        return Findings(summary=f"{len(inputs.priors)} priors")


@pytest.fixture
def test_algorithms() -> dict[str, object]:
    return {"follow-up": FollowUp()}


class Recording(httpx.BaseTransport):
    """The real HTTP transport, keeping each request's body as sent."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[tuple[str, str, bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path, request.read()))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def client(hub: Hub, token_a: str) -> Iterator[HubClient]:
    client = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a))
    yield client
    client.close()


def test_the_catalog_serves_each_versions_priors_and_none_for_the_others(
    hub: Hub, token_a: str, client: HubClient
) -> None:
    entries = hub.client.get("/catalog", headers=hub.auth(token_a)).json()
    by_id = {e["algorithm_id"]: e for e in entries}
    assert by_id["follow-up"]["priors"] == {
        "years": 3.0,
        "same_body_part": False,
        "max_studies": 2,
    }
    assert by_id["bone-age"]["priors"] == {"years": 2.0, "same_body_part": True, "max_studies": 1}
    assert by_id["integrity-check"]["priors"] is None

    catalog = HubCatalog(client)
    assert catalog.priors("follow-up") == CorePriors(years=3, same_body_part=False, max_studies=2)
    assert catalog.priors("integrity-check") is None
    assert requested_priors(client, "bone-age") == CorePriors(years=2, max_studies=1)
    assert requested_priors(client, "not-offered") is None  # refused: pulled without priors


def test_with_two_active_versions_the_edge_pulls_only_what_both_take(
    hub: Hub, client: HubClient
) -> None:
    """The hub refuses priors the running version does not take; the edge cannot tell which runs."""
    engine = make_engine(hub.settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            sync_catalog(session, [manifest("2.0", Priors(years=1, max_studies=1))])
        assert HubCatalog(client).priors("follow-up") == CorePriors(
            years=1, same_body_part=True, max_studies=1
        )
        with make_sessions(engine)() as session:
            sync_catalog(session, [manifest("3.0", None)])  # a version that takes no priors
        assert HubCatalog(client).priors("follow-up") is None
    finally:
        engine.dispose()


def test_a_task_without_priors_is_sent_without_the_prior_studies_field(
    hub: Hub, token_a: str, tmp_path: Path
) -> None:
    study, series = new_uid(), new_uid()
    files = [pseudonymized("CT_small.dcm", tmp_path, study=study, series=series)]
    assert hub.stow(token_a, files).status_code == 200
    transport = Recording()
    client = HubClient(HubPeer(url=str(hub.client.base_url), token=token_a), transport)
    try:
        task = client.create_task(
            TaskCreate(
                client_task_id=uuid.uuid4().hex,
                algorithm_id="integrity-check",
                study_instance_uid=study,
                sop_instance_uids=[f.stem for f in files],
            )
        )
    finally:
        client.close()
    assert task.prior_studies == []
    ((method, path, body),) = transport.sent
    assert (method, path) == ("POST", "/tasks")
    sent = json.loads(body)
    assert sent["study_instance_uid"] == study
    assert "prior_studies" not in sent  # a hub before migration 0009 would answer 422


def test_no_hub_means_no_priors_from_the_catalog() -> None:
    down = HubClient(HubPeer(url=f"http://127.0.0.1:{free_port()}", token="t" * 32))
    try:
        assert requested_priors(down, "bone-age") is None
    finally:
        down.close()
