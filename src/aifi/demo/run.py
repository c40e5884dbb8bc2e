"""The demo: a hub, an edge and a small PACS on loopback, and sample studies through them.

Everything runs in this process on free loopback ports, under one work
folder: the hub (uvicorn in a thread, SQLite, local folder), one hospital
registered at it, the hospital's edge, and :class:`~aifi.demo.pacs.DemoPacs`
playing the hospital's PACS. The PACS "forwards" generated studies to the
edge exactly as an auto-routing rule would (C-STORE); the demo then waits
until every task has ended and checks that each result object is in the
demo PACS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from pydicom import Dataset

from aifi.demo.pacs import DemoPacs
from aifi.demo.samples import DEMO_PATIENTS, cr_study, ct_series
from aifi.edge.config import DicomPeer, EdgeSettings, HubPeer, ListenerSettings
from aifi.edge.pacs import StoreResult, store_to_pacs
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.edge.state import TaskRow
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.hospitals import add_hospital
from aifi.netutil import free_port

__all__ = ["DemoStudy", "DemoSystem", "demo_rules", "demo_studies"]

logger = logging.getLogger(__name__)

FINAL = ("delivered", "CANCELED", "failed")


@dataclass(frozen=True)
class DemoStudy:
    label: str
    datasets: list[Dataset]


def demo_studies() -> list[DemoStudy]:
    """The sample studies the demo sends."""
    return [
        DemoStudy(
            "CR hand, 4 images", cr_study(4, patient=DEMO_PATIENTS[1], rows=512, columns=512)
        ),
        DemoStudy(
            "CT chest with contrast, 24 slices", list(ct_series(24, size=256, slice_thickness=5.0))
        ),
    ]


def demo_rules() -> list[Rule]:
    """The routing rules of the demo hospital (as they would stand in edge.toml)."""
    return [Rule(name="connection test: every image", algorithm="integrity-check")]


class DemoSystem:
    """Hub + edge + PACS on loopback under ``workdir``; a context manager."""

    def __init__(self, workdir: Path, *, quiet_period_s: float = 1.0) -> None:
        self.workdir = workdir
        self.quiet_period_s = quiet_period_s
        self.hub_settings = HubSettings(
            data_dir=workdir / "hub", port=free_port(), workers=2, log_level="warning"
        )
        self.pacs = DemoPacs(workdir / "pacs", ae_title="DEMOPACS")
        self._hub_server: uvicorn.Server | None = None
        self._hub_thread: threading.Thread | None = None
        self.edge: EdgeService | None = None

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> DemoSystem:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        token = self._register_hospital("Demo General Hospital")
        self._start_hub()
        self.pacs.start()
        settings = EdgeSettings(
            data_dir=self.workdir / "edge",
            quiet_period_s=self.quiet_period_s,
            listener=ListenerSettings(port=0, allowed_calling_aets=[self.pacs.ae_title]),
            hub=HubPeer(url=self.hub_url, token=token, poll_interval_s=0.1, max_backoff_s=2.0),
            pacs=DicomPeer(ae_title=self.pacs.ae_title, host="127.0.0.1", port=self.pacs.port),
            rules=demo_rules(),
        )
        self.edge = EdgeService(settings)
        self.edge.start()

    def stop(self) -> None:
        if self.edge is not None:
            self.edge.stop()
            self.edge = None
        self.pacs.stop()
        if self._hub_server is not None and self._hub_thread is not None:
            self._hub_server.should_exit = True
            self._hub_thread.join(timeout=15)
            self._hub_server = None

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_settings.port}"

    def _register_hospital(self, name: str) -> str:
        engine = make_engine(self.hub_settings.effective_database_url)
        migrate(engine)
        with make_sessions(engine)() as session:
            _hospital, token = add_hospital(session, name)
        engine.dispose()
        return token

    def _start_hub(self) -> None:
        config = uvicorn.Config(
            create_app(self.hub_settings),
            host="127.0.0.1",
            port=self.hub_settings.port,
            log_level="warning",
            lifespan="on",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="demo-hub", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the demo hub did not start; see the log above")
            time.sleep(0.05)
        self._hub_server, self._hub_thread = server, thread

    # -- use ---------------------------------------------------------------
    def send(
        self, datasets: Sequence[Dataset], on_stored: Callable[[StoreResult], None] | None = None
    ) -> list[StoreResult]:
        """Send as the PACS would, with its auto-routing rule, to the edge."""
        assert self.edge is not None
        edge = DicomPeer(
            ae_title=self.edge.settings.listener.ae_title,
            host="127.0.0.1",
            port=self.edge.dicom_port,
            calling_ae_title=self.pacs.ae_title,
        )
        return store_to_pacs(edge, datasets, on_stored)

    def tasks(self) -> list[TaskRow]:
        assert self.edge is not None
        return self.edge.state.tasks()

    def wait(self, expected_tasks: int, timeout_s: float, on_tick: Callable[[], None]) -> bool:
        """Wait until ``expected_tasks`` exist and all have ended; False on time-out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            on_tick()
            tasks = self.tasks()
            if len(tasks) >= expected_tasks and all(t.state in FINAL for t in tasks):
                return True
            time.sleep(0.1)
        return False

    def results_in_pacs(self) -> dict[str, list[str]]:
        """Task id → result SOP Instance UIDs the edge stored that the demo PACS holds."""
        assert self.edge is not None
        held = {p.stem for p in self.pacs.instances()}
        out: dict[str, list[str]] = {}
        for task in self.tasks():
            stored = self.edge.state.deliveries(task.id)
            out[task.id] = sorted(
                uid for uid, status in stored.items() if status == "stored" and uid in held
            )
        return out
