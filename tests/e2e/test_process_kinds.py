"""The hub as separate processes: two APIs, two workers, one janitor, one PostgreSQL.

``aifi hub migrate`` first, then two ``aifi hub api`` (the edge talks to the
first, the test reads through the second), two ``aifi hub worker`` and one
``aifi hub janitor``, all on one PostgreSQL and one data folder, with the
edge and Orthanc. A stream of studies goes to ``test-slow`` (the integrity
check after a 2 s pause, a test plug-in) while one worker is SIGKILLed in
the middle of a run and the first API process is restarted. What the PACS
administrator checks: every study's result in Orthanc exactly once; what
the operator checks: the killed worker's task ran twice (re-queued by the
janitor), every other task once, none left open.

The object store is the local folder shared by the processes (an S3 store is
another helper's part; not tested here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import create_engine, text

from aifi.demo.samples import DEMO_PATIENTS, cr_study, write_study
from aifi.edge.state import EdgeState
from aifi.netutil import free_port
from peers.dcmtk import storescu
from peers.orthanc import Orthanc

from .conftest import EdgeProcess

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow, pytest.mark.postgresql]

STUDIES = 8
TESTS = Path(__file__).resolve().parents[1]


class HubProcesses:
    """The hub's process kinds on one database and data folder, each its own subprocess."""

    def __init__(self, folder: Path, database_url: str) -> None:
        self.folder = folder
        self.config = folder / "hub.toml"
        self.config.write_text(
            f'[hub]\ndata_dir = "data"\ndatabase_url = "{database_url}"\nworkers = 1\n'
            'log_level = "info"\nlease_s = 10\njanitor_interval_s = 0.5\nworker_poll_s = 0.2\n'
            'algorithm_plugins = ["hub.plugin_algorithms:Slow"]\n',
            encoding="utf-8",
        )
        self.environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "AIFI_TEST_SLOW_S": "2",
        }
        self.environ.pop("AIFI_HUB_DATABASE_URL", None)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.api_ports = {"api-1": free_port(), "api-2": free_port()}

    def aifi(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aifi", "hub", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.environ,
            check=False,
        )

    def start(self, name: str) -> None:
        kind = name.split("-")[0]
        environ = dict(self.environ)
        if kind == "api":
            environ["AIFI_HUB_PORT"] = str(self.api_ports[name])
        with (self.folder / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "aifi", "hub", kind, "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
            )
        if kind == "api":
            self._wait_for_api(name)

    def _wait_for_api(self, name: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(self.log(name))
            try:
                httpx.get(f"{self.url(name)}/openapi.json", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not start in 60 s")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.api_ports[name]}"

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)


@pytest.fixture
def hub(tmp_path: Path, postgres_database: str) -> Iterator[HubProcesses]:
    folder = tmp_path / "hub"
    folder.mkdir()
    processes = HubProcesses(folder, postgres_database)
    migrated = processes.aifi("migrate")
    assert migrated.returncode == 0, migrated.stderr
    try:
        for name in ("api-1", "api-2", "worker-1", "worker-2", "janitor-1"):
            processes.start(name)
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
def edge(tmp_path: Path, hub: HubProcesses, orthanc: Orthanc) -> Iterator[EdgeProcess]:
    folder = tmp_path / "edge"
    folder.mkdir()
    port = free_port()
    added = hub.aifi("hospital", "add", "St. Example", "--subscribe", "integrity-check,test-slow")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    process = EdgeProcess(
        folder,
        f"""\
data_dir = "data"
quiet_period_s = 0.5

[listener]
port = {port}
allowed_calling_aets = ["{orthanc.aet}"]

[hub]
url = "{hub.url("api-1")}"
token = "{token}"
poll_interval_s = 0.2
max_backoff_s = 1

[pacs]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[delivery]
reconcile_interval_s = 2

[[rules]]
name = "slow connection test"
algorithm = "test-slow"
""",
    )
    process.start(port)
    orthanc.add_modality("aifi", "AIFI_EDGE", "127.0.0.1", port)
    yield process
    process.stop()


def _children(pid: int) -> list[int]:
    """The algorithm processes ``pid`` spawned (Linux /proc; not multiprocessing's tracker)."""
    found = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in listing.read_text().split()]
    return [c for c in found if "Z" not in _state(c) and b"spawn_main" in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str:
    """The process's state letter (R, S, Z, ...); "Z" for one that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _running(database_url: str) -> list[tuple[str, str]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT id, claimed_by FROM tasks WHERE state = 'IN PROGRESS'")
            ).all()
            return [(str(r[0]), str(r[1])) for r in rows]
    finally:
        engine.dispose()


def test_studies_are_delivered_once_while_a_worker_dies_and_an_api_restarts(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcesses, edge: EdgeProcess, postgres_database: str
) -> None:
    study_uids = []
    for index in range(STUDIES):
        datasets = cr_study(
            1, patient=DEMO_PATIENTS[index % len(DEMO_PATIENTS)], rows=64, columns=64
        )
        files = write_study(datasets, tmp_path / f"modality-{index}")
        done = storescu(
            files, "127.0.0.1", orthanc.dicom_port, calling_aet="MOD", called_aet=orthanc.aet
        )
        assert done.returncode == 0, done.stderr
        study_uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))

    def send_all() -> None:  # Orthanc's routing job: sent again until the edge took it
        for uid in study_uids:
            for _ in range(60):
                try:
                    orthanc.store_to("aifi", orthanc.find_instances(StudyInstanceUID=uid))
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
            time.sleep(0.5)

    sender = threading.Thread(target=send_all)
    sender.start()

    # SIGKILL worker-1 in the middle of one of its runs
    worker_pid = str(hub.processes["worker-1"].pid)
    deadline = time.monotonic() + 120
    killed_task = None
    while killed_task is None:
        assert time.monotonic() < deadline, "worker-1 never ran a task"
        for task_id, claimed_by in _running(postgres_database):
            if claimed_by.split(":")[1] == worker_pid:
                killed_task = task_id
        time.sleep(0.1)
    time.sleep(0.5)  # well inside its 2 s run
    algorithm_processes = _children(int(worker_pid))
    assert algorithm_processes  # the run is in a child process of the worker
    hub.kill("worker-1")
    gone_by = time.monotonic() + 1.0  # its run had over a second left: killed with it
    while any(_state(pid) != "Z" for pid in algorithm_processes):  # gone, or dead unreaped
        assert time.monotonic() < gone_by, "the killed worker's algorithm process lives on"
        time.sleep(0.1)

    hub.stop("api-1")  # the API the edge talks to goes away, and comes back
    time.sleep(1.0)
    hub.start("api-1")
    sender.join()

    def settled() -> list:  # type: ignore[type-arg]
        state = EdgeState(edge.folder / "data" / "edge.db")
        try:
            return state.tasks()
        finally:
            state.close()

    deadline = time.monotonic() + 180
    while True:
        tasks = settled()
        if {t.study_instance_uid for t in tasks} >= set(study_uids) and all(
            t.state == "delivered" for t in tasks
        ):
            break
        assert time.monotonic() < deadline, [(t.state, t.reason) for t in tasks]
        time.sleep(0.5)

    time.sleep(1.0)  # a duplicate, if any, would arrive now
    for uid in study_uids:
        assert len(orthanc.find_instances(StudyInstanceUID=uid, Modality="SR")) == 1, uid

    engine = create_engine(postgres_database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT id, state, attempts, claimed_by FROM tasks")
            ).all()
            requeued = connection.execute(
                text("SELECT count(*) FROM audit_events WHERE action = 'run.requeued'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert len(rows) == STUDIES
    assert all(r[1] == "COMPLETED" for r in rows), rows
    attempts = {str(r[0]): r[2] for r in rows}
    assert attempts.pop(killed_task) == 2  # re-run once, by the other worker
    assert set(attempts.values()) == {1}
    assert requeued == 1
    survivor = str(hub.processes["worker-2"].pid)
    assert next(str(r[3]) for r in rows if str(r[0]) == killed_task).split(":")[1] == survivor
