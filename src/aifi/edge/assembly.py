"""Study assembly: turn studies that stopped growing into tasks.

A study is *stable* once no instance arrived for ``quiet_period_s`` (the
same idea as Orthanc's ``STABLE_STUDY`` change). The router then asks each
rule which of the study's series it wants; every algorithm with at least one
matching series gets one task holding those series' instances.

Late instances (documented policy). An instance that arrives after its study
was dispatched re-opens the study; when it is stable again, each series that
received instances no task for that algorithm has taken yet is sent *whole*
in a new task (``late_instances = "new-task"``), so an algorithm never sees
half a series. With ``late_instances = "ignore"`` they are kept but not sent.

Priors of a pushed study. When a rule sends a study to an algorithm that
asks for priors and a query/retrieve peer is configured, the task waits: the
study stays open while :mod:`aifi.edge.prior_search` pulls its priors on its
own thread, then the request it records makes the task, priors attached. A
study pulled as a prior is not routed by the rules.
Re-sent instances (a SOP Instance UID already received) never reach this
point: the listener ignores them, unless every task that held them ended
badly (failed, CANCELED, discarded): a study sent again after a failure
re-opens and becomes a new task, the PACS administrator's way to redo it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal

from aifi.edge.rules import RULE_PRIORITY, Rule, rule_matches
from aifi.edge.state import EdgeState
from aifi.protocol.schemas import PRIORITY_RANK

if TYPE_CHECKING:
    from aifi.edge.prior_search import PriorSearch

__all__ = ["Assembler"]

logger = logging.getLogger(__name__)


class Assembler:
    def __init__(
        self,
        state: EdgeState,
        rules: list[Rule],
        quiet_period_s: float,
        late_instances: Literal["new-task", "ignore"] = "new-task",
        *,
        priors: PriorSearch | None = None,
    ) -> None:
        self.state = state
        self.rules = rules
        self.quiet_period_s = quiet_period_s
        self.late_instances = late_instances
        self.priors = (
            priors  # finds a pushed study's priors before its task (aifi.edge.prior_search)
        )
        self._waiting: set[str] = set()  # studies whose priors are being searched

    def tick(self) -> list[str]:
        """Dispatch every study that became stable; return the new task ids.

        A study waiting for its priors stays open (not dispatched) until the
        search recorded its request.
        """
        created: list[str] = []
        for study_uid in self.state.stable_studies(self.quiet_period_s):
            seen = self.state.last_received_at(study_uid)
            self._waiting.discard(study_uid)
            created.extend(self._dispatch(study_uid, seen))
            if study_uid not in self._waiting:
                self.state.mark_dispatched(study_uid, seen)
        return created

    def _wait_for_priors(
        self,
        study_uid: str,
        algorithm_id: str,
        requests: list[dict[str, Any]],
        rule: str,
        rank: int,
    ) -> bool:
        """Whether a rule's task for ``algorithm_id`` waits while the study's priors are searched.

        Only for a first task of the study for it, not asked for by a request
        (a request carries its own priors), and only when the algorithm asks
        for priors.
        """
        if self.priors is None or any(r["algorithm_id"] == algorithm_id for r in requests):
            return False
        if self.state.has_task(study_uid, algorithm_id):
            return False
        wanted = self.priors.wanted(algorithm_id)
        if wanted is None:
            return False
        priority = next(name for name, r in PRIORITY_RANK.items() if r == rank)
        self.priors.ask(study_uid, algorithm_id, wanted, rule, priority)
        self._waiting.add(study_uid)
        return True

    def _dispatch(self, study_uid: str, last_received_at: float) -> list[str]:
        series_attrs = self.state.series_of(study_uid)
        wanted: dict[str, set[str]] = defaultdict(set)
        rule_names: dict[str, str] = {}
        ranks: dict[str, int] = {}  # the most urgent matching rule's priority, per algorithm
        # a prior pulled for a task is that task's input, not a new examination to route
        prior = self.priors is not None and self.priors.is_prior(study_uid)
        for rule in self.rules if not prior else []:
            for series_uid, attrs in series_attrs.items():
                if rule_matches(rule, attrs):
                    wanted[rule.algorithm].add(series_uid)
                    rule_names.setdefault(rule.algorithm, rule.name or rule.algorithm)
                    rank = PRIORITY_RANK[RULE_PRIORITY[rule.priority]]
                    ranks[rule.algorithm] = min(ranks.get(rule.algorithm, rank), rank)
        requests = self.state.open_requests(study_uid)
        for request in requests:  # asked for by name (aifi edge request): every series
            if request["algorithm_id"] not in wanted:
                wanted[request["algorithm_id"]] = set(series_attrs)
                rule_names[request["algorithm_id"]] = f"request by {request['requested_by']}"
            rank = PRIORITY_RANK.get(request["priority"], PRIORITY_RANK["MEDIUM"])
            ranks[request["algorithm_id"]] = min(ranks.get(request["algorithm_id"], rank), rank)
        task_ids: list[str] = []
        for algorithm_id, series in wanted.items():
            rank = ranks.get(algorithm_id, PRIORITY_RANK["MEDIUM"])
            if self._wait_for_priors(
                study_uid, algorithm_id, requests, rule_names[algorithm_id], rank
            ):
                continue
            fresh = self.state.series_with_instances_outside_tasks(study_uid, algorithm_id)
            todo = series & fresh
            if not todo:
                continue
            if self.state.has_task(study_uid, algorithm_id) and self.late_instances == "ignore":
                logger.info("late instances for %s/%s kept, not sent", study_uid, algorithm_id)
                continue
            instances = self.state.instances(study_uid, sorted(todo))
            task_id = self.state.create_task(
                study_uid,
                algorithm_id,
                rule_names[algorithm_id],
                [i.sop_instance_uid for i in instances],
                last_received_at,
                priority=ranks.get(algorithm_id, PRIORITY_RANK["MEDIUM"]),
            )
            logger.info(
                "task %s: %s on %d instances of %d series",
                task_id,
                algorithm_id,
                len(instances),
                len(todo),
            )
            task_ids.append(task_id)
            self._fulfil(requests, algorithm_id, task_id)
            self.state.record_event(
                "study-stable",
                f"{len(instances)} instances of {len(todo)} series routed by rule"
                f" {rule_names[algorithm_id]!r}",
                task_id=task_id,
            )
        for request in requests:  # a requested study with nothing new: answered by its task
            if request["algorithm_id"] in wanted and request["task_id"] is None:
                self.state.fulfil_request(request["id"], "")
        if not wanted and not prior:
            self.state.record_event(
                "study-not-routed", f"study received, no rule matched ({len(series_attrs)} series)"
            )
        return task_ids

    def _fulfil(self, requests: list[dict[str, Any]], algorithm_id: str, task_id: str) -> None:
        """Answer the requests for ``algorithm_id`` with ``task_id``; note their priors."""
        for request in requests:
            if request["algorithm_id"] != algorithm_id or request["task_id"] is not None:
                continue
            request["task_id"] = task_id
            self.state.fulfil_request(request["id"], task_id)
            studies = request["prior_study_uids"]
            if studies:
                # Sent with the task (aifi.edge.pseudonymize and aifi.edge.upload).
                held = sum(len(self.state.instances(uid)) for uid in studies)
                self.state.record_event(
                    "priors-pulled",
                    f"{held} instances of {len(studies)} prior studies pulled for this task;"
                    " they go to the hub with it",
                    task_id=task_id,
                )
