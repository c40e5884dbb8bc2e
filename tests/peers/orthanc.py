"""A real Orthanc for tests: Debian's ``Orthanc`` 1.10.1 on loopback ports.

Orthanc plays the hospital PACS: it receives studies (C-STORE from
``storescu``, or uploads over REST), forwards them to the edge
(``POST /modalities/{name}/store``, Orthanc's C-STORE SCU) and receives the
results the edge delivers.

How it is started:

* a JSON configuration generated in the test's folder (storage and index
  there, HTTP and DICOM on free ports, no authentication, remote access off
  so only loopback may use the REST API);
* no plugins: ``"Plugins": []``. Debian's ``/etc/orthanc/orthanc.json``
  loads ``/usr/share/orthanc/plugins/`` (ModalityWorklists, ServeFolders),
  but that file is only read by the system service; an explicit
  configuration file replaces it, and an empty list loads nothing;
* ``"StableAge": 1`` so that "study stable" comes after one quiet second;
* DICOM port: Orthanc binds it on all interfaces (1.10.1 has no option to
  bind loopback only); accepted for tests, only loopback talks to it;
* Nagle's algorithm: Orthanc's ``"TcpNoDelay"`` option only concerns its
  HTTP server (CivetWeb). Its DICOM side is dcmtk's DUL, which reads the
  environment variable ``TCP_NODELAY`` and defaults to 0 on Debian (Nagle
  on: about 20 instances/s from storescu). Orthanc is started with
  ``TCP_NODELAY=1``.

The ``orthanc`` fixture yields a running :class:`Orthanc`; the process is
stopped by its PID at teardown. :func:`start_orthanc` is the same as a
context manager, for benchmarks and module-scoped fixtures.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from aifi.netutil import free_port

__all__ = ["Orthanc", "orthanc", "orthanc_available", "start_orthanc"]

logger = logging.getLogger(__name__)


def orthanc_available() -> bool:
    """Whether the ``Orthanc`` executable is on PATH."""
    return shutil.which("Orthanc") is not None


class Orthanc:
    """A running Orthanc and a small client of its REST API.

    Resource ids are Orthanc's own (SHA-1 style strings), not DICOM UIDs;
    :meth:`find_instances` maps DICOM attributes to them.
    """

    def __init__(
        self,
        *,
        http_port: int,
        dicom_port: int,
        aet: str,
        folder: Path,
        process: subprocess.Popen[bytes],
    ) -> None:
        self.host = "127.0.0.1"
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.aet = aet
        self.folder = folder
        self.process = process
        self.http_url = f"http://{self.host}:{http_port}"
        self.client = httpx.Client(base_url=self.http_url, timeout=60.0)

    # --- REST helpers ---------------------------------------------------------

    def system(self) -> dict[str, Any]:
        """``GET /system``: name, version, AET, ports."""
        return self._get("/system")

    def upload(self, path: Path) -> str:
        """``POST /instances`` with a DICOM file; returns the Orthanc instance id."""
        response = self.client.post(
            "/instances",
            content=path.read_bytes(),
            headers={"Content-Type": "application/dicom"},
        )
        response.raise_for_status()
        return str(response.json()["ID"])

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """``PUT /modalities/{name}``: a DICOM peer Orthanc may store to and accept from."""
        response = self.client.put(
            f"/modalities/{name}",
            json={"AET": aet, "Host": host, "Port": port, "AllowEcho": True, "AllowStore": True},
        )
        response.raise_for_status()

    def echo(self, modality: str) -> bool:
        """``POST /modalities/{name}/echo``: Orthanc sends a C-ECHO to the modality."""
        return self.client.post(f"/modalities/{modality}/echo", json={}).status_code == 200

    def store_to(self, modality: str, resource_id: str | list[str]) -> dict[str, Any]:
        """``POST /modalities/{name}/store``: Orthanc C-STOREs a resource to a modality.

        ``resource_id`` is an Orthanc patient, study, series or instance id
        (or a list of them). Synchronous: returns once the association ended;
        raises :class:`httpx.HTTPStatusError` when the peer refused or failed.
        """
        resources = [resource_id] if isinstance(resource_id, str) else resource_id
        response = self.client.post(
            f"/modalities/{modality}/store",
            json={"Resources": resources, "Synchronous": True},
        )
        response.raise_for_status()
        return response.json()

    def find_instances(self, **query: str) -> list[str]:
        """Orthanc instance ids matching DICOM keywords, e.g. ``StudyInstanceUID=...``.

        ``POST /tools/find`` at the Instance level; no arguments lists all.
        """
        if not query:
            return self._get("/instances")
        response = self.client.post(
            "/tools/find", json={"Level": "Instance", "Query": query, "Expand": False}
        )
        response.raise_for_status()
        return response.json()

    def wait_for_instances(self, count: int, *, timeout: float = 30.0, **query: str) -> list[str]:
        """Poll :meth:`find_instances` until at least ``count`` match; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_instances(**query)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"Orthanc holds {len(found)} of {count} instances")
            time.sleep(0.1)

    def get_tags(self, instance_id: str) -> dict[str, Any]:
        """``GET /instances/{id}/simplified-tags``: keyword → value (sequences as lists)."""
        return self._get(f"/instances/{instance_id}/simplified-tags")

    def get_file(self, instance_id: str) -> bytes:
        """``GET /instances/{id}/file``: the DICOM file exactly as Orthanc stored it."""
        response = self.client.get(f"/instances/{instance_id}/file")
        response.raise_for_status()
        return response.content

    def dataset(self, instance_id: str) -> pydicom.Dataset:
        """The stored instance read with pydicom."""
        return pydicom.dcmread(BytesIO(self.get_file(instance_id)))

    def changes(self, since: int = 0) -> list[dict[str, Any]]:
        """``GET /changes``: Orthanc's change log (``NewInstance``, ``StableStudy``, ...)."""
        return self._get(f"/changes?since={since}&limit=1000")["Changes"]

    def wait_for_change(
        self, change_type: str, *, resource_id: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll :meth:`changes` until one of ``change_type`` (e.g. ``"StableStudy"``) appears.

        With ``StableAge`` 1, a study is stable about a second after its
        last instance arrived (Orthanc's equivalent of aifi's quiet period).
        """
        deadline = time.monotonic() + timeout
        while True:
            for change in self.changes():
                if change["ChangeType"] == change_type and resource_id in (None, change["ID"]):
                    return change
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {change_type} change in Orthanc after {timeout} s")
            time.sleep(0.2)

    def study_id(self, study_instance_uid: str) -> str:
        """Orthanc's id of a study, by Study Instance UID (``POST /tools/lookup``)."""
        response = self.client.post("/tools/lookup", content=study_instance_uid)
        response.raise_for_status()
        matches = [m["ID"] for m in response.json() if m["Type"] == "Study"]
        if not matches:
            raise LookupError(f"Orthanc holds no study {study_instance_uid}")
        return str(matches[0])

    def statistics(self) -> dict[str, Any]:
        """``GET /statistics``: counts of patients, studies, series, instances."""
        return self._get("/statistics")

    def _get(self, path: str) -> Any:
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    # --- process --------------------------------------------------------------

    def stop(self, *, grace_s: float = 15.0) -> None:
        """Terminate the Orthanc process (by its PID) and close the client.

        SIGTERM first; a clean stop of Orthanc 1.10.1 takes about 3 s (its
        HTTP and DICOM servers poll), so after ``grace_s`` it is killed.
        """
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        """Orthanc's log so far (for failure messages)."""
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _config(
    folder: Path, *, http_port: int, dicom_port: int, aet: str, sync_storage: bool
) -> dict[str, Any]:
    return {
        "Name": "aifi-test-orthanc",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "SyncStorageArea": sync_storage,
        "Plugins": [],
        "LuaScripts": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpDescribeErrors": True,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {},
        "DicomModalitiesInDatabase": False,
        "UnknownSopClassAccepted": True,
        "DicomScuTimeout": 30,
        "DicomAssociationCloseDelay": 0,
        "StableAge": 1,
        "SaveJobs": False,
        "ConcurrentJobs": 2,
        "OverwriteInstances": False,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
    }


@contextmanager
def start_orthanc(
    folder: Path,
    *,
    aet: str = "ORTHANC",
    nodelay: bool = True,
    sync_storage: bool = False,
    extra_config: dict[str, Any] | None = None,
    timeout: float = 30.0,
    stop_grace_s: float = 15.0,
) -> Iterator[Orthanc]:
    """Run a fresh Orthanc storing into ``folder`` until the block ends.

    Waits until ``GET /system`` answers. ``nodelay`` sets dcmtk's
    ``TCP_NODELAY`` for Orthanc's DICOM sockets (see the module docstring).
    ``sync_storage`` is Orthanc's ``SyncStorageArea`` (fsync each file; true
    by default in Orthanc >= 1.7.4, off here because test storage is thrown
    away). ``extra_config`` entries override the generated configuration.
    ``stop_grace_s``: how long a clean stop may take before Orthanc is killed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = folder / "orthanc.json"
    settings = _config(
        folder, http_port=http_port, dicom_port=dicom_port, aet=aet, sync_storage=sync_storage
    )
    settings.update(extra_config or {})
    config.write_text(json.dumps(settings, indent=2))
    env = {**os.environ, "TCP_NODELAY": "1" if nodelay else "0"}
    process = subprocess.Popen(
        ["Orthanc", f"--logfile={folder / 'orthanc.log'}", "--no-jobs", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    orthanc = Orthanc(
        http_port=http_port, dicom_port=dicom_port, aet=aet, folder=folder, process=process
    )
    try:
        _wait_ready(orthanc, timeout)
        logger.debug("Orthanc ready: HTTP %d, DICOM %d", http_port, dicom_port)
        yield orthanc
    finally:
        orthanc.stop(grace_s=stop_grace_s)


def _wait_ready(orthanc: Orthanc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if orthanc.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited at start-up:\n{orthanc.log()[-3000:]}")
        try:
            orthanc.system()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Orthanc did not answer GET /system in {timeout} s:\n{orthanc.log()[-3000:]}"
                ) from None
            time.sleep(0.1)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc (AET ``ORTHANC``) on free loopback ports, storage in ``tmp_path``.

    Its storage is thrown away, so teardown does not wait for a clean stop
    (killed after 0.5 s).
    """
    if not orthanc_available():
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    with start_orthanc(tmp_path / "orthanc", stop_grace_s=0.5) as server:
        yield server
