"""DICOMweb at the hub: QIDO-RS, metadata and WADO-RS transcoding times, from dicomweb-client.

Run::

    .venv/bin/python bench/dicomweb.py

One study of 200 pseudonymized CT_small.dcm instances in 10 series plus one
JPEG 2000 instance (pydicom-data), stored by STOW-RS into a fresh hub
(uvicorn on loopback, SQLite, local folder); each call is timed as the mean
of a few repeats after one warm-up. QIDO reads headers at query time
(docs/dicomweb.md), so these numbers grow with the matched objects.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sized
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from aifi.hub.app import create_app
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, migrate
from hub.conftest import Hub, new_uid, pseudonymized, register, serving

AS_STORED = (("application/dicom", "*"),)
EXPLICIT = (("application/dicom", ExplicitVRLittleEndian),)


def timed(name: str, call: Callable[[], Sized], repeat: int = 5) -> None:
    call()
    start = time.perf_counter()
    for _ in range(repeat):
        found = call()
    ms = (time.perf_counter() - start) / repeat * 1000
    print(f"| {name} | {len(found)} | {ms:.1f} |")


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    settings = HubSettings(data_dir=tmp / "hub", log_level="warning")
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    engine.dispose()
    token = register(settings, "Hospital A", ("integrity-check",))
    folder = tmp / "outbox"
    folder.mkdir()
    study = new_uid()
    files = []
    for _ in range(10):
        series = new_uid()
        files += [
            pseudonymized("CT_small.dcm", folder, study=study, series=series) for _ in range(20)
        ]
    j2k = pseudonymized("JPEG2000.dcm", folder, study=study)
    ds = pydicom.dcmread(j2k, stop_before_pixels=True)
    with serving(create_app(settings), settings) as client:
        hub = Hub(client, settings)
        for start in range(0, len(files), 50):
            assert hub.stow(token, files[start : start + 50]).status_code == 200
        assert hub.stow(token, [j2k]).status_code == 200
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        web = DICOMwebClient(url=str(client.base_url).rstrip("/") + "/dicomweb", session=session)
        series, sop = ds.SeriesInstanceUID, ds.SOPInstanceUID
        print("| call | objects returned | ms |\n|---|---|---|")
        timed("QIDO studies", web.search_for_studies)
        timed(
            "QIDO series of the study, Modality=CT",
            lambda: web.search_for_series(study, search_filters={"Modality": "CT"}),
        )
        timed("QIDO instances of the study, limit=100", lambda: web.search_for_instances(study))
        timed("metadata of the study", lambda: web.retrieve_study_metadata(study), repeat=3)
        timed(
            "WADO JPEG 2000 instance as stored",
            lambda: [web.retrieve_instance(study, series, sop, media_types=AS_STORED)],
        )
        timed(
            "WADO JPEG 2000 instance to Explicit VR LE",
            lambda: [web.retrieve_instance(study, series, sop, media_types=EXPLICIT)],
        )
        timed(
            "WADO study (200 stored Explicit VR LE + 1 transcoded)",
            lambda: web.retrieve_study(study, media_types=EXPLICIT),
            repeat=2,
        )
        session.close()


if __name__ == "__main__":
    main()
