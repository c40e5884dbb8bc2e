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

import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hl7
import pydicom
import uvicorn
from pydicom import Dataset

from aifi.demo.pacs import DemoPacs
from aifi.demo.ris import DemoRis
from aifi.demo.samples import DEMO_PATIENTS, cr_study
from aifi.edge.config import (
    DicomPeer,
    EdgeSettings,
    HubPeer,
    ListenerSettings,
    RisPeer,
    StatusSettings,
)
from aifi.edge.pacs import StoreResult, store_to_pacs
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.edge.state import TaskRow
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.hospitals import add_hospital
from aifi.netutil import free_port
from aifi.phantoms.chest_ct import chest_ct_series
from aifi.phantoms.hand import bone_age_study
from aifi.phantoms.long_bone import fracture_study

__all__ = ["DemoStudy", "DemoSystem", "demo_problems", "demo_rules", "demo_studies"]

logger = logging.getLogger(__name__)

FINAL = ("delivered", "CANCELED", "failed", "discarded", "dead-letter")


@dataclass(frozen=True)
class DemoStudy:
    label: str
    datasets: list[Dataset]


#: The admin password of the demo edge's status page (a demo runs in development only).
DEMO_STATUS_PASSWORD = "demo"

#: The algorithms the demo hospital has contracted (its subscriptions at the hub).
DEMO_ALGORITHMS = ("integrity-check", "fracture", "bone-age", "incidental-pe")


def real_radiograph() -> Dataset | None:
    """A real extremity radiograph (CR, JPEG 2000 lossless) from the pydicom-data package."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "RG3_J2KR.dcm"
    return pydicom.dcmread(path) if path.exists() else None


def demo_studies() -> list[DemoStudy]:
    """The studies the demo sends: a connection test and one per AI application."""
    studies = [
        DemoStudy(
            "connection test: CR chest, 4 images",
            cr_study(4, patient=DEMO_PATIENTS[0], body_part="CHEST", rows=512, columns=512),
        ),
        DemoStudy("phantom forearm with a fracture", list(fracture_study(fracture=True, seed=7))),
        DemoStudy(
            "phantom hand of a 10-year-old boy",
            list(bone_age_study(age_months=120, sex="M", seed=3)),
        ),
        DemoStudy(
            "phantom contrast chest CT with an embolus",
            list(chest_ct_series(embolus=True, seed=5)),
        ),
    ]
    real = real_radiograph()
    if real is not None:
        studies.append(DemoStudy("real radiograph: distal tibia (pydicom-data)", [real]))
    return studies


def demo_rules() -> list[Rule]:
    """The routing rules of the demo hospital (as they would stand in edge.toml)."""
    limbs = [
        "FOREARM",
        "WRIST",
        "ARM",
        "HUMERUS",
        "ELBOW",
        "LEG",
        "TIBIA",
        "FIBULA",
        "ANKLE",
        "KNEE",
        "FEMUR",
        "FOOT",
        "EXTREMITY",
        "UPPER LIMB",
        "LOWER LIMB",
    ]
    return [
        Rule(
            name="connection test: every image",
            algorithm="integrity-check",
            match={"Modality": ["CR", "DX", "CT"]},
        ),
        Rule(
            name="limb radiographs",
            algorithm="fracture",
            match={"Modality": ["CR", "DX"], "BodyPartExamined": limbs},
        ),
        Rule(
            name="children's hands",
            algorithm="bone-age",
            match={"Modality": ["CR", "DX"], "BodyPartExamined": ["HAND"]},
            min_age_years=0,
            max_age_years=19,
        ),
        Rule(name="CT for incidental PE", algorithm="incidental-pe", match={"Modality": ["CT"]}),
    ]


class DemoSystem:
    """Hub + edge + PACS on loopback under ``workdir``; a context manager."""

    def __init__(self, workdir: Path, *, quiet_period_s: float = 1.0) -> None:
        self.workdir = workdir
        self.quiet_period_s = quiet_period_s
        self.hub_settings = HubSettings(
            data_dir=workdir / "hub", port=free_port(), workers=2, log_level="warning"
        )
        self.pacs = DemoPacs(workdir / "pacs", ae_title="DEMOPACS")
        self.ris = DemoRis()
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
        self.ris.start()
        settings = EdgeSettings(
            data_dir=self.workdir / "edge",
            quiet_period_s=self.quiet_period_s,
            listener=ListenerSettings(port=0, allowed_calling_aets=[self.pacs.ae_title]),
            hub=HubPeer(url=self.hub_url, token=token, poll_interval_s=0.1, max_backoff_s=2.0),
            pacs=DicomPeer(ae_title=self.pacs.ae_title, host="127.0.0.1", port=self.pacs.port),
            ris=RisPeer(host=self.ris.host, port=self.ris.port),
            rules=demo_rules(),
            hospital="Demo General Hospital",
            status=StatusSettings(port=0, admin_password=DEMO_STATUS_PASSWORD),
        )
        self.edge = EdgeService(settings)
        self.edge.start()

    def stop(self) -> None:
        if self.edge is not None:
            self.edge.stop()
            self.edge = None
        self.pacs.stop()
        self.ris.stop()
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
            _hospital, token = add_hospital(session, name, subscribe=DEMO_ALGORITHMS)
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

    def wait(self, timeout_s: float, on_tick: Callable[[], None]) -> bool:
        """Wait until every received study was routed and every task ended; False on time-out."""
        assert self.edge is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            on_tick()
            tasks = self.tasks()
            routed = not self.edge.state.undispatched_studies()
            if routed and tasks and all(t.state in FINAL for t in tasks):
                return True
            time.sleep(0.1)
        return False

    def summaries(self) -> dict[str, str]:
        """Task id → the hub's one-line summary of the findings (with the urgent flag)."""
        assert self.edge is not None
        out: dict[str, str] = {}
        for task in self.tasks():
            if task.hub_task_id is None or task.state != "delivered":
                continue
            hub_task = self.edge.hub.task(task.hub_task_id)
            summary = str((hub_task.findings or {}).get("summary", ""))
            out[task.id] = ("URGENT: " if hub_task.urgent else "") + summary
        return out

    def problems(self) -> list[str]:
        """What a hospital would miss: tasks not delivered, results not in PACS, urgent
        results the RIS never received (empty when all is well)."""
        return demo_problems(self.tasks(), self.results_in_pacs(), self.ris.messages)

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


def demo_problems(
    tasks: Sequence[TaskRow], in_pacs: dict[str, list[str]], ris_messages: Sequence[hl7.Message]
) -> list[str]:
    """Every promise of the demo that did not hold, one line each.

    A task must be delivered with its results in the PACS; an urgent one
    must also have reached the RIS as an ORU^R01 naming the task in OBR-20.
    """
    announced = {str(m.segment("OBR")[20]) for m in ris_messages}
    problems: list[str] = []
    if not tasks:
        problems.append("no task was created")
    for task in tasks:
        if task.state != "delivered":
            problems.append(
                f"task {task.id[:12]} ({task.algorithm_id}) is {task.state}: {task.reason}"
            )
        elif not in_pacs.get(task.id):
            problems.append(f"task {task.id[:12]} ({task.algorithm_id}): no result in the PACS")
        if task.urgent and task.id not in announced:
            problems.append(
                f"task {task.id[:12]} ({task.algorithm_id}): urgent result never reached the RIS"
            )
    return problems
