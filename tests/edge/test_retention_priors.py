"""Retention keeps a pulled prior until its task is uploaded (issue 14).

A prior arrives by C-MOVE like any study but no task holds its instances
(they go in the task's ``priors`` folder), so retention would count it as
unrouted. These tests drive :class:`~aifi.edge.retention.Purger` on the
edge's real state database with a clock moved past the unrouted retention.
"""

from __future__ import annotations

import time
from pathlib import Path

from aifi.edge.assembly import Assembler
from aifi.edge.config import RetentionSettings
from aifi.edge.retention import Purger
from aifi.edge.state import EdgeState, InstanceRow

DAY = 86400.0
CURRENT, PRIOR, OTHER = "1.2.3.10", "1.2.3.9", "1.2.3.8"


def receive(state: EdgeState, folder: Path, study: str, sop: str) -> Path:
    path = folder / study / "1" / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 100)
    row = InstanceRow(sop, study, f"{study}.1", "1.2.840.10008.5.1.4.1.1.1",
                      "1.2.840.10008.1.2.1", path, 100)  # fmt: skip
    assert state.add_instance(row, "PACS", {"Modality": "CR", "BodyPartExamined": "HAND"})
    return path


def test_a_prior_is_kept_until_its_task_is_uploaded_then_goes_as_unrouted(
    tmp_path: Path,
) -> None:
    state = EdgeState(tmp_path / "edge.db")
    received, outbox = tmp_path / "received", tmp_path / "outbox"
    prior = receive(state, received, PRIOR, "9.1")  # pulled first, as aifi.edge.pull does
    other = receive(state, received, OTHER, "8.1")  # a study nobody asked for
    state.mark_dispatched(PRIOR, time.time())
    state.mark_dispatched(OTHER, time.time())
    state.add_request(CURRENT, "bone-age", "aifi edge request", prior_study_uids=[PRIOR])
    purger = Purger(
        state,
        RetentionSettings(keep_unrouted_days=1),
        outbox,
        received,
        clock=lambda: time.time() + 2 * DAY,
    )

    # The current study is still on its way: the prior waits with the request.
    assert purger.tick().instances == 1
    assert prior.exists() and not other.exists()

    receive(state, received, CURRENT, "10.1")
    (task_id,) = Assembler(state, [], quiet_period_s=0).tick()
    for step in ("pending", "ready"):  # not yet pseudonymized, then not yet uploaded
        state.update_task(task_id, state=step)
        assert purger.tick().instances == 0
        assert prior.exists()
    assert state.prior_studies(task_id) == [PRIOR]

    state.update_task(task_id, state="submitted")  # the hub holds its pseudonymized copy now
    assert purger.tick().instances == 1
    assert not prior.exists()
    assert "no rule routed" in state.events("purged")[-1]["detail"]
