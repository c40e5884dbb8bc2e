"""A hub in this process and an edge with its status page, for the status and metrics tests.

The hub is the real application (uvicorn in a thread, SQLite, local folder),
with one hospital subscribed to the integrity check; studies are sent to the
edge with C-STORE (pynetdicom) as a PACS's auto-routing would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import uvicorn

from aifi.demo.samples import DEMO_PATIENTS, cr_study
from aifi.edge.config import (
    DeliverySettings,
    DicomPeer,
    EdgeSettings,
    HubPeer,
    ListenerSettings,
    StatusSettings,
)
from aifi.edge.pacs import StoreResult, store_to_pacs
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.hospitals import add_hospital
from aifi.netutil import free_port

PASSWORD = "s3cret-for-tests"
#: How the status page shows DEMO_PATIENTS[0] (DEMO^ALICE, PS3.5 6.2.1 Family^Given).
PATIENT_NAME = "DEMO, ALICE"
SENDER = "MODALITY"


@contextmanager
def running_hub(folder: Path) -> Iterator[tuple[str, str]]:
    """(hub URL, token of a hospital subscribed to integrity-check) while the block runs."""
    settings = HubSettings(data_dir=folder, port=free_port(), workers=1, log_level="warning")
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    with make_sessions(engine)() as session:
        _hospital, token = add_hospital(session, "St. Example", subscribe=("integrity-check",))
    engine.dispose()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=settings.port,
        log_config=None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "hub did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}", token
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def edge_settings(
    folder: Path, hub_url: str, token: str, pacs_port: int, *, pacs_aet: str = "ORTHANC"
) -> EdgeSettings:
    return EdgeSettings(
        data_dir=folder,
        hospital="St. Example",
        quiet_period_s=0.3,
        listener=ListenerSettings(port=0, allowed_calling_aets=[SENDER]),
        hub=HubPeer(url=hub_url, token=token, poll_interval_s=0.1, max_backoff_s=0.5),
        pacs=DicomPeer(ae_title=pacs_aet, host="127.0.0.1", port=pacs_port),
        delivery=DeliverySettings(max_attempts=2, reconcile_interval_s=1.0),
        rules=[Rule(name="connection test", algorithm="integrity-check")],
        status=StatusSettings(port=free_port(), admin_password=PASSWORD),
    )


def study(n: int = 3) -> list[pydicom.Dataset]:
    return cr_study(n, patient=DEMO_PATIENTS[0], body_part="CHEST", rows=128, columns=128)


def send(
    edge: EdgeService, datasets: list[pydicom.Dataset], calling: str = SENDER
) -> list[StoreResult]:
    peer = DicomPeer(
        ae_title=edge.settings.listener.ae_title,
        host="127.0.0.1",
        port=edge.dicom_port,
        calling_ae_title=calling,
    )
    return store_to_pacs(peer, datasets)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
