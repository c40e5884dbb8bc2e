"""What the hub says each algorithm needs kept, for pseudonymizing data sent to it.

The hub's catalog is the authority: it lists every algorithm it runs, its
own and remote vendors' alike, with the attributes each needs beyond the
de-identification profile (data minimisation, PS3.15 E.3). The edge asks
it rather than its own installed copy, so an algorithm the edge has never
heard of (a vendor's, added at the hub) gets exactly what it needs.

A task is created for an algorithm id; the hub runs the version the
hospital's subscription pins, or the newest active one. When several
versions are active, the edge keeps the union of their lists, so whichever
version runs has what it needs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aifi.edge.hub_client import HubClient
from aifi.errors import HubRefused
from aifi.hub.schemas import AlgorithmState, CatalogEntryOut

__all__ = ["HubCatalog"]


class HubCatalog:
    """Keep lists from the hub's ``GET /catalog``, cached for ``ttl_s`` seconds.

    A hub that cannot be reached raises :class:`aifi.errors.HubUnavailable`
    (the outbox retries later); an algorithm the hub does not offer raises
    :class:`aifi.errors.HubRefused` (the task fails with that reason).
    """

    def __init__(
        self,
        hub: HubClient,
        *,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hub = hub
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: list[CatalogEntryOut] = []
        self._fetched_at: float | None = None

    def keep_attributes(self, algorithm_id: str) -> tuple[str, ...]:
        """The attributes to keep for ``algorithm_id`` (sorted, no duplicates)."""
        active = [e for e in self._current(algorithm_id) if e.algorithm_id == algorithm_id]
        if not active:
            raise HubRefused(
                f"the hub offers no active version of algorithm {algorithm_id!r}; check the "
                "edge's routing rules against the hub's catalog ('aifi hub algorithm list')",
                status_code=404,
            )
        return tuple(sorted({name for e in active for name in e.keep_attributes}))

    def _current(self, algorithm_id: str) -> list[CatalogEntryOut]:
        """Active entries; fetched again when stale or when ``algorithm_id`` is missing."""
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at > self._ttl_s
            known = any(e.algorithm_id == algorithm_id for e in self._entries)
            if stale or not known:
                self._entries = [e for e in self._hub.catalog() if e.state == AlgorithmState.ACTIVE]
                self._fetched_at = now
            return list(self._entries)
