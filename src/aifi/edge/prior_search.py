"""Priors for a study the PACS pushed: found and pulled before its task is made.

A study that arrives by C-STORE and that a routing rule sends to an
algorithm asking for priors (the hub's catalog says so,
:meth:`aifi.edge.catalog.HubCatalog.priors`) is not made a task at once. The
assembler hands it here (:meth:`PriorSearch.ask`) and leaves the study open;
on this stage's own thread, never the listener's nor the assembler's, each
``[[query_retrieve]]`` peer is asked for the study's patient and its priors
(C-FIND, PS3.4 C.6.2), which are retrieved (C-MOVE or C-GET, PS3.4 C.4.2,
C.4.3) by :func:`aifi.edge.pull.pull_priors`. Then a request naming them is
recorded for the study, and the assembler makes the task, the priors
attached, exactly as for ``aifi edge request``.

A peer that is down, refuses, or has no prior costs only the priors: the
request is recorded without them and the task goes ahead; every outcome is
an event (``priors-retrieved``, ``priors-not-pulled``). Nothing here
is durable on purpose: the study stays undispatched until the request is
recorded, so after a restart the assembler asks again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from aifi.core.manifest import Priors
from aifi.edge.config import EdgeSettings
from aifi.edge.state import EdgeState
from aifi.errors import HubError

__all__ = ["PriorSearch", "held_study_priors"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    study_instance_uid: str
    algorithm_id: str
    priors: Priors
    rule_name: str
    priority: str


class PriorSearch:
    """Finds and pulls the priors of pushed studies, one :meth:`tick` at a time."""

    def __init__(
        self,
        settings: EdgeSettings,
        state: EdgeState,
        priors_for: Callable[[str], Priors | None],
    ) -> None:
        self.settings = settings
        self.state = state
        self._priors_for = priors_for
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Job] = {}  # asked for, not yet searched
        self._busy: set[tuple[str, str]] = set()
        self._pulling: set[str] = set()  # prior Study UIDs being retrieved now

    def wanted(self, algorithm_id: str) -> Priors | None:
        """The priors ``algorithm_id`` asks for; None also when the hub's catalog is unreachable."""
        try:
            return self._priors_for(algorithm_id)
        except HubError as exc:
            logger.warning("priors for %s not looked up: %s", algorithm_id, exc)
            return None

    def ask(
        self, study_uid: str, algorithm_id: str, priors: Priors, rule_name: str, priority: str
    ) -> bool:
        """Queue a search (once per study and algorithm); True when it is newly queued."""
        key = (study_uid, algorithm_id)
        with self._lock:
            if key in self._jobs or key in self._busy:
                return False
            self._jobs[key] = _Job(study_uid, algorithm_id, priors, rule_name, priority)
        self.state.record_event(
            "priors-searching",
            f"{algorithm_id} on study {study_uid} asks for priors of {priors.years:g} years:"
            " the task waits for the search",
        )
        return True

    def is_prior(self, study_uid: str) -> bool:
        """Whether ``study_uid`` is a prior being pulled now, or one a request pulled."""
        with self._lock:
            if study_uid in self._pulling:
                return True
        return self.state.pulled_as_prior(study_uid)

    def tick(self) -> int:
        """Search every queued study; how many were searched."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self._busy.update((j.study_instance_uid, j.algorithm_id) for j in jobs)
        for job in jobs:
            try:
                self._search(job)
            finally:
                with self._lock:
                    self._busy.discard((job.study_instance_uid, job.algorithm_id))
        return len(jobs)

    def _found(self, study_uids: list[str]) -> None:
        with self._lock:
            self._pulling.update(study_uids)

    def _search(self, job: _Job) -> None:
        found = held_study_priors(
            self.settings,
            self.state,
            job.study_instance_uid,
            job.algorithm_id,
            job.priors,
            on_found=self._found,
        )
        self.state.add_request(  # the assembler makes the task, with the priors, from it
            job.study_instance_uid,
            job.algorithm_id,
            f"rule {job.rule_name!r} with priors",
            priority=job.priority,
            prior_study_uids=found,
        )
        with self._lock:
            self._pulling.clear()  # from here on the request names them (is_prior)


def held_study_priors(
    settings: EdgeSettings,
    state: EdgeState,
    study_uid: str,
    algorithm_id: str,
    priors: Priors | None,
    *,
    on_found: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Find and retrieve the priors of a study the edge holds; their Study UIDs, newest first.

    Each ``[[query_retrieve]]`` peer is asked in turn until one answers. The
    outcome is an event: ``priors-retrieved``, or ``priors-not-pulled`` with
    the reasons (the study then goes without priors). Also for a workitem or
    an order naming a study the PACS pushed before (:mod:`aifi.edge.ups`,
    :mod:`aifi.edge.orders`).
    """
    from aifi.edge.pull import pull_priors

    if priors is None or not settings.query_retrieve:
        return []
    problems: list[str] = []
    for peer in settings.query_retrieve:
        try:
            outcome = pull_priors(settings, peer, study_uid, priors, state, on_found=on_found)
        except Exception as exc:  # a broken peer costs the priors, never the task
            logger.warning("priors from %s: %s", peer.name or peer.ae_title, exc)
            problems.append(f"{peer.name or peer.ae_title}: {exc}")
            continue
        if outcome.ok:
            state.record_event(
                "priors-retrieved", f"{algorithm_id} on study {study_uid}: {outcome.detail}"
            )
            return outcome.prior_study_uids
        problems.append(outcome.detail)
    state.record_event(
        "priors-not-pulled",
        f"{algorithm_id} on study {study_uid} goes without priors: " + "; ".join(problems),
    )
    return []
