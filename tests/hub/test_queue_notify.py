"""A task created by the API process wakes the workers of another process at once (PostgreSQL).

The worker's poll is set to 30 s, so only the ``NOTIFY aifi_tasks`` the API
sends and the worker's ``LISTEN`` can make it start within seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aifi.algorithms.base import Algorithm, Manifest
from aifi.hub.app import create_app
from aifi.hub.bootstrap import open_hub, worker_pool
from aifi.hub.config import HubSettings
from aifi.hub.schemas import TaskState

from .conftest import Hub, register, serving

pytestmark = pytest.mark.postgresql


@pytest.fixture
def settings(tmp_path: Path, postgres_database: str) -> HubSettings:
    return HubSettings(
        data_dir=tmp_path / "hub-data", database_url=postgres_database, worker_poll_s=30
    )


def test_a_task_from_the_api_process_wakes_an_idle_worker_elsewhere(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    manifests: Callable[[], list[Manifest]],
    study: tuple[str, list[Path]],
) -> None:
    study_uid, files = study
    api = create_app(settings, algorithms=resolver, manifests=manifests, role="api")
    with serving(api, settings) as client:
        token = register(settings, "Hospital A", ("integrity-check",))
        hub = Hub(client, settings)
        parts = open_hub(settings, algorithms=resolver, manifests=manifests)
        pool = worker_pool(parts, 1)
        pool.start()
        try:
            time.sleep(1.0)  # the worker has looked once, found nothing, and waits its 30 s
            assert hub.stow(token, files).status_code == 200
            created = time.monotonic()
            task = hub.create_task(token, study_uid, [f.stem for f in files]).json()
            ended = hub.wait_for_end(token, task["id"])
            took = time.monotonic() - created
        finally:
            pool.stop()
            parts.close()
    assert ended["state"] == TaskState.COMPLETED, ended["reason"]
    assert took < 10, f"the worker started after {took:.1f} s: it polled, nobody woke it"
