"""The edge program: listener, assembler, outbox and delivery, wired together.

Each stage runs in its own thread and talks to the others only through the
edge's state database, so any of them can stop (a hub outage, a PACS that
is down) without the others losing anything.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable

import pydicom

from aifi.deid import PseudonymMap
from aifi.edge.assembly import Assembler
from aifi.edge.at_rest import edge_key, make_private
from aifi.edge.catalog import HubCatalog
from aifi.edge.checks import check_listener, port_in_use_message, run_checks
from aifi.edge.config import EdgeSettings
from aifi.edge.deliver import INTEGRITY_CHECK, Deliverer
from aifi.edge.metrics import edge_registry
from aifi.edge.orders import OrderDesk
from aifi.edge.orders_hl7 import MllpListener
from aifi.edge.outbox import Outbox
from aifi.edge.policy import PolicyFile, ReleaseGate
from aifi.edge.prior_search import PriorSearch
from aifi.edge.pseudonymize import DigestFn
from aifi.edge.retention import Purger
from aifi.edge.scp import EdgeReceiver
from aifi.edge.state import EdgeState
from aifi.edge.status.server import StatusServer
from aifi.edge.tls import server_context
from aifi.errors import ConfigError, HubError
from aifi.protocol.client import HubClient

__all__ = ["EdgeService"]

logger = logging.getLogger(__name__)


def _digest_for(algorithm_id: str) -> DigestFn | None:
    if algorithm_id != INTEGRITY_CHECK:
        return None
    from aifi.algorithms.integrity_check import pixel_digest

    return lambda path: pixel_digest(pydicom.dcmread(path))


class EdgeService:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        data_dir = settings.data_dir
        self._umask = make_private(data_dir)  # every file the edge writes: 0600, folders 0700
        key = edge_key(settings)
        self.state = EdgeState(data_dir / "edge.db", hospital=settings.hospital, key=key)
        self.pseudonym_map = PseudonymMap(data_dir / "pseudonyms.db", key)
        self.hub = HubClient(settings.hub, on_contact=self._hub_contact)
        # What leaves is the hospital's decision: the hub's catalog only requests.
        self.policy = policy = PolicyFile(
            settings.release_policy_path,
            create_from_default=settings.environment == "development",
        )
        if policy.created:
            self.state.record_event(
                "release-policy-created",
                f"release policy {policy.path} created from the shipped defaults",
            )
        catalog = HubCatalog(self.hub)
        self.release = ReleaseGate(catalog.requests, policy)
        self.receiver = EdgeReceiver(settings.listener, self.state, data_dir / "received")
        # A pushed study's priors, pulled from the [[query_retrieve]] peers: aifi.edge.prior_search
        self.prior_search = (
            PriorSearch(settings, self.state, catalog.priors) if settings.query_retrieve else None
        )
        self.assembler = Assembler(
            self.state,
            settings.rules,
            settings.quiet_period_s,
            settings.late_instances,
            priors=self.prior_search,
        )
        self.outbox = Outbox(
            self.state,
            self.hub,
            key,
            self.pseudonym_map,
            data_dir / "outbox",
            self.release.release_for,
            vocabulary=self.release.vocabulary,
            digest_for=_digest_for,
            max_backoff_s=settings.hub.max_backoff_s,
        )
        self.deliverer = Deliverer(
            self.state,
            self.hub,
            settings.pacs,
            self.pseudonym_map,
            ris=settings.ris,
            fhir=settings.fhir,
            result_kinds=settings.result_kinds,
            max_backoff_s=settings.hub.max_backoff_s,
            settings=settings.delivery,
            destinations=settings.result_destinations,
        )
        self.purger = Purger(
            self.state, settings.retention, data_dir / "outbox", data_dir / "received"
        )
        # The assembler and the purge never run at once: a purge never deletes
        # an instance a task is being created for.
        self._assembly_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.metrics = edge_registry(self.state, data_dir, settings.result_destinations)
        self.status: StatusServer | None = None
        # Orders from the RIS (HL7 ORM/OMI over MLLP, FHIR ServiceRequest): aifi.edge.orders
        self.orders = OrderDesk(settings, self.state) if settings.orders is not None else None
        self.mllp: MllpListener | None = None

    @property
    def dicom_port(self) -> int:
        return self.receiver.port

    def start(self) -> None:
        """Check the configuration against the peers, then start every stage.

        Raises :class:`~aifi.errors.ConfigError` for a definite configuration
        error (see :mod:`aifi.edge.checks` for which those are and why a hub or
        PACS that is down is only a warning) and for a listener port in use.
        """
        if self.settings.listener.port:
            port = check_listener(self.settings.listener)
            if not port.ok:
                raise ConfigError(port.detail)
        self.check()
        # Time the edge was down is not quiet time: a study cut off by a crash
        # waits a full quiet period again before it counts as complete.
        reopened = self.state.restart_quiet_periods()
        if reopened:
            logger.info("quiet period restarted for %d open studies", reopened)
        try:
            self.receiver.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(port_in_use_message(self.settings.listener)) from exc
            raise ConfigError(
                f"the DICOM listener cannot listen on {self.settings.listener.host}:"
                f"{self.settings.listener.port} ({exc.strerror}); check [listener] host and port"
            ) from exc
        loops: list[tuple[str, Callable[[], object], float]] = [
            ("assembler", lambda: self._serialised(self.assembler.tick), 0.1),
            ("outbox", self.outbox.tick, 0.1),
            ("delivery", self.deliverer.tick, self.settings.hub.poll_interval_s),
            ("retention", self.purge, self.settings.retention.interval_s),
        ]
        if self.prior_search is not None:
            loops.append(("priors", self.prior_search.tick, 0.2))
        for name, tick, interval in loops:
            thread = threading.Thread(
                target=self._loop, args=(name, tick, interval), name=f"edge-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._start_orders()
        self._start_status()

    def _start_orders(self) -> None:
        """The order desk's thread, and the MLLP listener where [orders] port is set."""
        orders = self.settings.orders
        if self.orders is None or orders is None:
            return
        try:  # certificates that cannot be loaded stop the start, as a port in use does
            tls = server_context(orders.tls, "orders") if orders.tls is not None else None
        except ConfigError:
            self.receiver.stop()
            raise
        self.orders.start()
        if orders.port is None:
            return
        mllp = MllpListener(
            self.orders, orders.host, orders.port, max_bytes=orders.max_message_bytes, tls=tls
        )
        try:
            mllp.start()
        except OSError as exc:
            self.orders.stop()
            self.receiver.stop()
            raise ConfigError(
                f"the HL7 order listener cannot listen on {orders.host}:{orders.port}"
                f" ({exc.strerror or exc}); check [orders] host and port"
            ) from exc
        self.mllp = mllp

    def _start_status(self) -> None:
        """The status page, /metrics, /health, /ready; a port in use costs only the page."""
        status = self.settings.status
        if not status.enabled:
            return
        from aifi.edge.status.app import StatusContext, create_status_app

        app = create_status_app(
            StatusContext(
                self.settings,
                self.state,
                self.pseudonym_map,
                self.policy,
                self.hub,
                self.metrics,
                receiver=self.receiver,
                orders=self.orders,
            )
        )
        server = StatusServer(
            app, status.host, status.port, access_log=self.settings.logging.http_requests
        )
        try:
            server.start()
        except OSError as exc:
            detail = (
                f"status page not started: cannot listen on {status.host}:{status.port}"
                f" ({exc.strerror or exc}); set [status] port, or enabled = false"
            )
            logger.warning("%s", detail)
            self.state.record_event("status-page-not-started", detail)
            return
        self.status = server
        logger.info("status page on %s (metrics at %smetrics)", server.url, server.url)

    @property
    def status_url(self) -> str | None:
        return self.status.url if self.status is not None else None

    def _hub_contact(self, ok: bool, detail: str) -> None:
        try:
            self.state.record_contact("hub", ok, detail)
        except Exception as exc:  # the status of a contact never breaks the contact
            logger.debug("hub contact not recorded: %s", exc)

    def check(self) -> None:
        """Run the start-up checks; log each, raise on the first definite configuration error."""
        results = run_checks(self.settings)
        for result in results:
            if result.name == "hub" or (result.name == "pacs" and self.settings.pacs):
                self.state.record_contact(result.name, result.ok, "start-up: " + result.detail)
            if result.ok:
                logger.info("check %s: %s", result.name, result.detail)
            elif not result.fatal:
                logger.warning("check %s: %s", result.name, result.detail)
        fatal = [r for r in results if r.fatal]
        if fatal:
            raise ConfigError(
                "; ".join(f"start-up check '{r.name}' failed: {r.detail}" for r in fatal)
            )

    def purge(self) -> object:
        """Apply retention now (also run every ``retention.interval_s``)."""
        return self._serialised(self.purger.tick)

    def _serialised(self, tick: Callable[[], object]) -> object:
        with self._assembly_lock:
            return tick()

    def stop(self) -> None:
        self._stop.set()
        if self.status is not None:
            self.status.stop()
            self.status = None
        if self.mllp is not None:
            self.mllp.stop()
            self.mllp = None
        if self.orders is not None:
            self.orders.stop()
        self.receiver.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self.hub.close()
        self.state.audit.close()
        os.umask(self._umask)

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (from a signal handler)."""
        self._stop.set()

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    def _loop(self, name: str, tick: Callable[[], object], interval: float) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                tick()
                failures = 0
            except HubError as exc:
                failures += 1
                logger.warning("%s: %s", name, exc)
            except Exception:
                failures += 1
                logger.exception("%s: unexpected error; continuing", name)
            delay = interval if failures == 0 else min(30.0, interval * 2 ** min(failures, 8))
            self._stop.wait(delay)
