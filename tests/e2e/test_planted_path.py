"""Planted identifiers through the real path: C-STORE → edge → hub, for every shipped policy.

The corpus (:func:`aifi.deid.testcorpus.planted_file`) plants a recognisable
identifier in every Table E.1-1 attribute that can carry one, in nested
sequences, in sequences sent as UN (defined and undefined length), in
private blocks, in a tag sent twice, after Pixel Data and in the File Meta,
in three character sets. Each file is sent over DICOM *as it is on disk*
(pynetdicom sends a file path without decoding it) to a running edge whose
rules send every study to all four shipped algorithms, each under its own
shipped release policy. Everything the hub received over HTTP (every
request body) and everything it stored (objects and database) is scanned
for every planted value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from aifi.algorithms import registry
from aifi.deid.testcorpus import CHARSETS, planted_file
from aifi.edge.config import EdgeSettings, HubPeer, ListenerSettings
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.hospitals import add_hospital
from aifi.hub.server import HubServer
from aifi.netutil import free_port
from peers.postgres import pg_dump
from peers.recorder import Recorder

pytestmark = [pytest.mark.slow]

ALGORITHMS = sorted(m.id for m in registry.manifests())
# No PACS here: a COMPLETED task has nowhere to deliver and is as far as it goes.
FINAL = ("COMPLETED", "delivered", "CANCELED", "failed", "dead-letter", "held")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def hub(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[HubSettings, Recorder]]:
    """The hub on its SQLite file, then on PostgreSQL (scanned through ``pg_dump``)."""
    url = request.getfixturevalue("postgres_database") if request.param == "postgresql" else None
    settings = HubSettings(
        data_dir=tmp_path / "hub", port=free_port(), workers=1, log_level="warning",
        database_url=url,
    )  # fmt: skip
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    engine.dispose()
    recorder = Recorder(create_app(settings))  # type: ignore[arg-type]
    with HubServer(settings, recorder):  # type: ignore[arg-type]
        yield settings, recorder


def register(settings: HubSettings) -> str:
    engine = make_engine(settings.effective_database_url)
    try:
        with make_sessions(engine)() as session:
            return add_hospital(session, "St. Example", subscribe=ALGORITHMS)[1]
    finally:
        engine.dispose()


def test_no_planted_identifier_reaches_the_hub_on_the_real_path(
    tmp_path: Path, hub: tuple[HubSettings, Recorder]
) -> None:
    settings, recorder = hub
    edge = EdgeService(
        EdgeSettings(
            data_dir=tmp_path / "edge",
            key_file=tmp_path / "keys" / "edge.key",
            quiet_period_s=0.5,
            listener=ListenerSettings(port=0, allowed_calling_aets=["PACS"]),
            hub=HubPeer(
                url=f"http://127.0.0.1:{settings.port}",
                token=register(settings),
                poll_interval_s=0.1,
                max_backoff_s=0.5,
            ),
            rules=[Rule(name=f"all to {a}", algorithm=a) for a in ALGORITHMS],
        )
    )
    edge.start()
    try:
        markers: dict[str, bytes] = {}
        files = []
        for index, charset in enumerate(CHARSETS):
            path = tmp_path / "corpus" / f"{index}.dcm"
            path.parent.mkdir(exist_ok=True)
            planted = planted_file(path, charset)
            markers.update({f"{charset}:{k}": v for k, v in planted.markers.items()})
            files.append(path)
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", edge.dicom_port, ae_title="AIFI_EDGE")
        assert assoc.is_established
        try:
            for path in files:  # the bytes as they are on disk, not re-encoded
                status = assoc.send_c_store(path)
                assert status.Status == 0x0000, f"{path.name}: 0x{status.Status:04X}"
        finally:
            assoc.release()

        deadline = time.monotonic() + 120
        while True:
            tasks = edge.state.tasks()
            routed = not edge.state.undispatched_studies()
            if routed and len(tasks) >= len(ALGORITHMS) and all(t.state in FINAL for t in tasks):
                break
            assert time.monotonic() < deadline, [(t.algorithm_id, t.state) for t in tasks]
            time.sleep(0.2)
    finally:
        edge.stop()

    uploaded = [t for t in edge.state.tasks() if t.hub_task_id is not None]
    assert {t.algorithm_id for t in uploaded} == set(ALGORITHMS), [
        (t.algorithm_id, t.state, t.reason) for t in edge.state.tasks()
    ]
    bodies = recorder.bodies
    stored = [p.read_bytes() for p in settings.data_dir.rglob("*") if p.is_file()]
    if settings.database_url:  # what the database holds, not a file in data_dir
        stored.append(pg_dump(settings.database_url))
    assert sum(len(b) for b in bodies) > 0 and stored
    leaked_http = sorted({name for name, m in markers.items() for b in bodies if m in b})
    leaked_stored = sorted({name for name, m in markers.items() for b in stored if m in b})
    print(
        f"planted {len(markers)} identifiers in {len(files)} files; {len(bodies)} HTTP bodies"
        f" ({sum(len(b) for b in bodies)} bytes) and {len(stored)} stored files scanned;"
        f" leaked over HTTP {len(leaked_http)}, in storage {len(leaked_stored)}"
    )
    assert leaked_http == []
    assert leaked_stored == []
