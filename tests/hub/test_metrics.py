"""``/metrics`` scraped and parsed with prometheus-client's own parser; values match the traffic.

The test sends a known traffic -- instances stored and refused, tasks that
complete and fail, a re-run, a verdict -- and reads every figure back from
the Prometheus text exposition, as a Prometheus server would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifi.algorithms.base import Algorithm
from aifi.hub.db import make_engine, make_sessions
from aifi.hub.schemas import TaskState
from aifi.hub.tasks import rerun_task

from .conftest import Hub, new_uid, pseudonymized
from .consoletools import Flaky


@pytest.fixture
def switch(tmp_path: Path) -> Path:
    path = tmp_path / "vendor-down"
    path.touch()
    return path


@pytest.fixture
def test_algorithms(switch: Path) -> dict[str, Algorithm]:
    return {"flaky": Flaky(switch)}


def _scrape(hub: Hub) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = hub.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_the_traffic_sent(
    hub: Hub, token_a: str, token_b: str, tmp_path: Path, switch: Path
) -> None:
    before = _scrape(hub)
    assert before[("aifi_hub_queue_depth", ())] == 0

    study = new_uid()
    files = [pseudonymized("CT_small.dcm", tmp_path, study=study) for _ in range(3)]
    assert hub.stow(token_a, files).status_code == 200
    identified = pseudonymized("CT_small.dcm", tmp_path, study=study, identity_removed=False)
    hub.stow(token_a, [identified])
    other = new_uid()
    b_files = [pseudonymized("CT_small.dcm", tmp_path, study=other)]
    assert hub.stow(token_b, b_files).status_code == 200

    sops = [f.stem for f in files]
    done = hub.wait_for_end(token_a, hub.create_task(token_a, study, sops).json()["id"])
    failed = hub.wait_for_end(
        token_a, hub.create_task(token_a, study, sops, algorithm="flaky").json()["id"]
    )
    assert (done["state"], failed["state"]) == (TaskState.COMPLETED, TaskState.CANCELED)
    b_done = hub.create_task(token_b, other, [b_files[0].stem])
    hub.wait_for_end(token_b, b_done.json()["id"])
    agreed = hub.client.post(
        f"/tasks/{done['id']}/feedback", json={"verdict": "agree"}, headers=hub.auth(token_a)
    )
    assert agreed.status_code == 200

    after = _scrape(hub)
    a, b = ("hospital", "Hospital A"), ("hospital", "Hospital B")
    assert after[("aifi_hub_received_instances_total", (a,))] == 3
    assert after[("aifi_hub_received_instances_total", (b,))] == 1
    size = sum(f.stat().st_size for f in files)
    assert after[("aifi_hub_received_bytes_total", (a,))] == pytest.approx(size, rel=0.05)
    refused = ("aifi_hub_stow_refusals_total", (("failure_reason", "0110"), a))
    assert after[refused] == 1
    completed = ("algorithm", "integrity-check"), ("state", "COMPLETED")
    assert after[("aifi_hub_tasks", completed)] == 2
    assert after[("aifi_hub_tasks", (("algorithm", "flaky"), ("state", "CANCELED")))] == 1
    assert after[("aifi_hub_queue_depth", ())] == 0
    turnaround = (("algorithm", "integrity-check"),)
    assert after[("aifi_hub_task_turnaround_seconds_count", turnaround)] == 2
    assert after[("aifi_hub_task_turnaround_seconds_bucket", (*turnaround, ("le", "+Inf")))] == 2
    assert 0 < after[("aifi_hub_task_turnaround_seconds_sum", turnaround)] < 60
    verdict = (("algorithm", "integrity-check"), a, ("verdict", "agree"), ("version", "1.0.0"))
    assert after[("aifi_hub_feedback_verdicts_total", verdict)] == 1
    ratio = (("algorithm", "integrity-check"), a, ("version", "1.0.0"))
    assert after[("aifi_hub_feedback_agreement_ratio", ratio)] == 1.0
    flaky = (("algorithm", "flaky"),)
    assert after[("aifi_hub_task_retries_total", flaky)] == 0

    # the operator re-runs the failed task once the vendor is back: a retry and a re-run
    switch.unlink()
    engine = make_engine(hub.settings.effective_database_url)
    with make_sessions(engine)() as session:
        assert not isinstance(rerun_task(session, failed["id"], actor="test"), tuple)
    engine.dispose()
    rerun = _scrape(hub)
    assert rerun[("aifi_hub_task_reruns_total", flaky)] == 1
    assert rerun.get(("aifi_hub_tasks", (("algorithm", "flaky"), ("state", "CANCELED")))) is None
