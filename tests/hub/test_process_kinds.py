"""The hub's process kinds apart: an API that runs nothing, workers by queue, one janitor.

Runs on SQLite and PostgreSQL (the ``settings`` fixture), in this process
(the multi-process run with real subprocesses is tests/e2e/test_process_kinds.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from aifi.algorithms import registry
from aifi.algorithms.base import Algorithm, InputInstance, Manifest
from aifi.errors import StorageError
from aifi.hub.app import create_app
from aifi.hub.bootstrap import janitor_for, open_hub, worker_pool
from aifi.hub.config import HubSettings
from aifi.hub.queue import algorithms_for
from aifi.hub.schemas import TaskState

from .conftest import Hub, serving


def test_an_api_process_runs_no_task_and_a_worker_process_does(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    manifests: Callable[[], list[Manifest]],
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    study_uid, files = study
    api = create_app(settings, algorithms=resolver, manifests=manifests, role="api")
    with serving(api, settings) as client:
        hub = Hub(client, settings)
        assert hub.stow(token_a, files).status_code == 200
        task = hub.create_task(token_a, study_uid, [f.stem for f in files]).json()
        time.sleep(0.5)
        waiting = client.get(f"/tasks/{task['id']}", headers=hub.auth(token_a)).json()
        assert waiting["state"] == TaskState.SCHEDULED  # the API runs no algorithm

        parts = open_hub(settings, algorithms=resolver, manifests=manifests)
        pool = worker_pool(parts, 1, algorithms_for(parts.manifests(), ["cpu"]))
        pool.start()
        try:
            ended = hub.wait_for_end(token_a, task["id"])
        finally:
            pool.stop()
            parts.close()
    assert ended["state"] == TaskState.COMPLETED, ended["reason"]
    assert len(ended["results"]) == 1


def test_an_api_process_does_not_migrate(tmp_path: Path, empty_database_url: str) -> None:
    empty = HubSettings(data_dir=tmp_path / "hub-data", database_url=empty_database_url)
    with pytest.raises(StorageError, match="run 'aifi hub migrate'"):
        open_hub(empty, schema="check")


def test_one_janitor_is_active_and_another_takes_over_when_it_stops(
    settings: HubSettings,
) -> None:
    fast = settings.model_copy(update={"janitor_interval_s": 0.1})
    first_parts, second_parts = open_hub(fast, schema="migrate"), open_hub(fast)
    first, second = janitor_for(first_parts), janitor_for(second_parts)
    try:
        first.start()
        assert first.active.wait(10)
        second.start()
        time.sleep(0.5)
        assert not second.active.is_set()
        first.stop()
        assert second.active.wait(10)  # the standby took over
    finally:
        first.stop()
        second.stop()
        first_parts.close()
        second_parts.close()


def test_queues_are_resource_classes_or_algorithm_ids() -> None:
    """No database: which algorithms a queue name selects."""
    installed = registry.manifests()
    everything = {m.id for m in installed}
    assert algorithms_for(installed, []) == everything
    assert algorithms_for(installed, ["cpu"]) == everything  # the demo models run on CPUs
    assert algorithms_for(installed, ["gpu"]) == set()
    assert algorithms_for(installed, ["fracture", "bone-age"]) == {"fracture", "bone-age"}


def test_a_worker_for_a_queue_nothing_is_in_says_so(
    tmp_path: Path, database_url: str | None
) -> None:
    """``aifi hub migrate`` then ``worker`` (on PostgreSQL through AIFI_HUB_DATABASE_URL)."""
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\ndata_dir = "data"\n', encoding="utf-8")
    migrated = subprocess.run(
        [sys.executable, "-m", "aifi", "hub", "migrate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "aifi", "hub", "worker", "--queue", "gpu", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert worker.returncode == 1
    assert "no installed algorithm is in queue(s) gpu" in worker.stderr


def test_the_execution_provider_a_model_ran_on_is_recorded(tmp_path: Path) -> None:
    """No database: an algorithm run on the providers a GPU node would be given."""
    from aifi.algorithms.fracture import FractureDetection
    from aifi.algorithms.onnx_model import use_providers
    from aifi.algorithms.selection import select_inputs
    from aifi.demo.samples import DEMO_PATIENTS, cr_study, write_study
    from aifi.hub.executor import Job, perform

    files = write_study(cr_study(1, patient=DEMO_PATIENTS[0], rows=128, columns=128), tmp_path)
    instances = [
        InputInstance(
            path=f,
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
        )
        for f in files
        for ds in [pydicom.dcmread(f, stop_before_pixels=True)]
    ]
    algorithm = FractureDetection()
    use_providers(("CUDAExecutionProvider", "CPUExecutionProvider"))  # as a GPU node is set up
    try:
        outcome = perform(algorithm, Job("fracture", select_inputs(algorithm.manifest, instances)))
    finally:
        use_providers(("CPUExecutionProvider",))
    # this machine has no GPU: CUDA is skipped without a warning and the CPU recorded
    assert outcome.findings.details["execution_provider"] == "CPUExecutionProvider"
    assert outcome.results


@pytest.mark.slow
def test_an_api_with_several_uvicorn_processes_serves_and_stops(
    tmp_path: Path, database_url: str | None
) -> None:
    import os
    import signal

    import httpx

    from aifi.netutil import free_port

    port = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndata_dir = "data"\nport = {port}\n', encoding="utf-8")
    aifi = [sys.executable, "-m", "aifi", "hub"]
    migrated = subprocess.run(
        [*aifi, "migrate", "--config", str(config)], capture_output=True, timeout=120, check=False
    )
    assert migrated.returncode == 0, migrated.stderr
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        api = subprocess.Popen(
            [*aifi, "api", "--processes", "2", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None, log.read_text()
            try:
                answers = [httpx.get(f"http://127.0.0.1:{port}/openapi.json") for _ in range(8)]
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the API did not start in 60 s"
                time.sleep(0.2)
        assert {a.status_code for a in answers} == {200}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/tasks").status_code == 401  # the real API, asking who calls
    finally:
        os.kill(api.pid, signal.SIGTERM)
        assert api.wait(timeout=60) == 0, log.read_text()
    assert log.read_text().count("hub api ready") == 2  # one per uvicorn process
