"""A hostile hub and a real edge on loopback, for the release-policy and at-rest tests.

The hub is the real app (uvicorn on a thread, SQLite, local folder) whose
catalog was edited the way a compromised or careless hub operator would:
``integrity-check`` requests identifying attributes. Every HTTP request body
that reaches it is recorded, so a test can scan what left the edge.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom import Dataset

from aifi.algorithms import registry
from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.demo.samples import DEMO_PATIENTS, cr_study
from aifi.edge.config import DicomPeer, EdgeSettings, HubPeer, ListenerSettings
from aifi.edge.pacs import store_to_pacs
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.hospitals import add_hospital
from aifi.hub.server import HubServer
from aifi.netutil import free_port
from peers.recorder import Recorder

HOSTILE_REQUEST = ("PatientName", "PatientBirthDate", "InstitutionName", "SeriesDescription")

#: Identifiers planted in the study the PACS sends (each must never reach the hub).
PLANTED_NAME = "Plantedname^Alice"
PLANTED_ID = "PLANTED-ID-7731"
PLANTED_BIRTH = "19610304"
PLANTED_INSTITUTION = "Saint Plantedwood Hospital"
PLANTED_DESCRIPTION_WORD = "Aliceplanted"


def hostile_manifests(
    versions: Sequence[str] = ("1.0.0",),
) -> Callable[[], list[Manifest]]:
    """The registry's manifests, integrity-check in ``versions`` requesting identity."""

    def manifests() -> list[Manifest]:
        out: list[Manifest] = []
        for manifest in registry.manifests():
            if manifest.id != "integrity-check":
                out.append(manifest)
                continue
            out += [
                dataclasses.replace(manifest, version=v, keep_attributes=HOSTILE_REQUEST)
                for v in versions
            ]
        return out

    return manifests


class _Renamed:
    """An installed algorithm, integrity-check announced as the hostile catalog's version."""

    def __init__(self, algorithm: Algorithm, version: str) -> None:
        self._algorithm = algorithm
        self.manifest = algorithm.manifest
        if self.manifest.id == "integrity-check":
            self.manifest = dataclasses.replace(
                self.manifest, version=version, keep_attributes=HOSTILE_REQUEST
            )

    def run(self, inputs: AlgorithmInput) -> Findings:
        return self._algorithm.run(inputs)


class HostileHub:
    """The hub app with an edited catalog, served on loopback, recording request bodies."""

    def __init__(self, folder: Path, versions: Sequence[str] = ("1.0.0",)) -> None:
        self.settings = HubSettings(
            data_dir=folder, port=free_port(), workers=1, log_level="warning"
        )
        app = create_app(
            self.settings,
            manifests=hostile_manifests(versions),
            algorithms=lambda algorithm_id: _Renamed(registry.get(algorithm_id), versions[-1]),
        )
        self.recorder = Recorder(app)
        self.server = HubServer(self.settings, self.recorder)  # type: ignore[arg-type]

    def register(self, name: str) -> str:
        engine = make_engine(self.settings.effective_database_url)
        try:
            migrate(engine)
            with make_sessions(engine)() as session:
                return add_hospital(session, name, subscribe=("integrity-check",))[1]
        finally:
            engine.dispose()

    @property
    def url(self) -> str:
        return self.server.url

    def stored_bytes(self) -> list[tuple[Path, bytes]]:
        """Every file the hub holds (objects, database, journal), as bytes."""
        return [
            (p, p.read_bytes()) for p in sorted(self.settings.data_dir.rglob("*")) if p.is_file()
        ]


def edge_settings(
    folder: Path, hub: HostileHub, token: str, policy: Path | None = None
) -> EdgeSettings:
    return EdgeSettings(
        data_dir=folder / "edge-data",
        key_file=folder / "keys" / "edge.key",
        release_policy=policy,
        quiet_period_s=0.3,
        listener=ListenerSettings(port=0, allowed_calling_aets=["PACS"]),
        hub=HubPeer(url=hub.url, token=token, poll_interval_s=0.1, max_backoff_s=1.0),
        rules=[Rule(name="everything", algorithm="integrity-check")],
        hospital="St. Example",
    )


def planted_study(n: int = 2) -> list[Dataset]:
    """A CR study whose identifying attributes carry the planted values."""
    datasets = cr_study(n, patient=DEMO_PATIENTS[1], body_part="CHEST", rows=64, columns=64)
    for ds in datasets:
        ds.PatientName = PLANTED_NAME
        ds.PatientID = PLANTED_ID
        ds.PatientBirthDate = PLANTED_BIRTH
        ds.InstitutionName = PLANTED_INSTITUTION
        ds.SeriesDescription = f"CHEST PA {PLANTED_DESCRIPTION_WORD} 19610304"
    return datasets


def send(edge: EdgeService, datasets: Sequence[Dataset]) -> None:
    peer = DicomPeer(
        ae_title=edge.settings.listener.ae_title,
        host="127.0.0.1",
        port=edge.dicom_port,
        calling_ae_title="PACS",
    )
    results = store_to_pacs(peer, datasets)
    assert all(r.ok for r in results), results


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout} s")
