"""A pushed study's task waits while its priors are searched (issue 14), on the edge's real state.

The query/retrieve peer here is down (nothing listens on its port): the
search records why and the task goes without priors, never failed. With
Orthanc holding the prior, tests/e2e/test_priors.py shows the prior pulled.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aifi.core.manifest import Priors
from aifi.edge.assembly import Assembler
from aifi.edge.config import EdgeSettings, QueryRetrievePeer
from aifi.edge.prior_search import PriorSearch
from aifi.edge.rules import Rule
from aifi.edge.state import EdgeState, InstanceRow
from aifi.netutil import free_port

CURRENT, PRIOR = "1.2.3.20", "1.2.3.19"


def receive(state: EdgeState, folder: Path, study: str, sop: str) -> None:
    path = folder / study / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 10)
    row = InstanceRow(sop, study, f"{study}.1", "1.2.840.10008.5.1.4.1.1.1",
                      "1.2.840.10008.1.2.1", path, 10)  # fmt: skip
    assert state.add_instance(row, "PACS", {"Modality": "DX", "BodyPartExamined": "HAND"})


# pynetdicom's transport drops the socket of a refused connection without closing it
# (transport.py, connect): CPython closes it at once, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_task_waits_for_the_search_and_goes_without_priors_when_the_peer_is_down(
    tmp_path: Path,
) -> None:
    settings = EdgeSettings(
        data_dir=tmp_path,
        query_retrieve=[
            QueryRetrievePeer(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port())
        ],
    )
    state = EdgeState(tmp_path / "edge.db")
    asked: list[str] = []

    def priors_for(algorithm_id: str) -> Priors | None:
        asked.append(algorithm_id)
        return Priors(years=2, max_studies=1) if algorithm_id == "bone-age" else None

    search = PriorSearch(settings, state, priors_for)
    rules = [Rule(algorithm="bone-age"), Rule(algorithm="fracture")]
    assembler = Assembler(state, rules, quiet_period_s=0, priors=search)
    receive(state, tmp_path / "received", CURRENT, "20.1")

    (fracture,) = assembler.tick()  # fracture asks for no priors: its task is made at once
    assert state.task(fracture).algorithm_id == "fracture"
    assert assembler.tick() == []  # bone-age waits; the study stays open meanwhile
    assert state.undispatched_studies() == [CURRENT]
    assert len(state.events("priors-searching")) == 1  # asked once

    started = time.monotonic()
    assert search.tick() == 1  # on the search's own thread in the running edge
    assert time.monotonic() - started < 30
    (missed,) = state.events("priors-not-pulled")
    assert missed["detail"].startswith(f"bone-age on study {CURRENT} goes without priors: ")
    assert "refused or did not answer the association" in missed["detail"]

    (bone_age,) = assembler.tick()
    task = state.task(bone_age)
    assert (task.algorithm_id, task.state) == ("bone-age", "pending")
    assert state.prior_studies(bone_age) == []
    assert state.undispatched_studies() == []
    assert search.tick() == 0


def test_a_study_pulled_as_a_prior_is_not_routed_by_the_rules(tmp_path: Path) -> None:
    settings = EdgeSettings(
        data_dir=tmp_path,
        query_retrieve=[
            QueryRetrievePeer(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port())
        ],
    )
    state = EdgeState(tmp_path / "edge.db")
    search = PriorSearch(settings, state, lambda _a: Priors(years=2, max_studies=1))
    assembler = Assembler(state, [Rule(algorithm="bone-age")], quiet_period_s=0, priors=search)
    state.add_request(CURRENT, "bone-age", "aifi edge request", prior_study_uids=[PRIOR])
    receive(state, tmp_path / "received", PRIOR, "19.1")  # arrives by C-MOVE

    assert assembler.tick() == []
    assert state.tasks() == []
    assert state.events("priors-searching") == []
    assert state.events("study-not-routed") == []
