"""Start-up checks: is this edge configured to reach its peers and route correctly?

:func:`run_checks` asks, in order: can the data folder be written, does the
hub answer and accept the token, does every rule name an algorithm the hub
offers (``GET /catalog``) and this hospital is subscribed to
(``GET /subscriptions/mine``), and does the PACS answer a C-ECHO (the
Verification SOP Class, PS3.4 Annex A; PS3.7 §9.1.5). Each answer is a
:class:`CheckResult` naming the check, never an exception.

Which failures stop the edge from starting (``fatal``)? Only definite
configuration errors, which no waiting repairs: a token the hub refuses
(401/403), a hub URL that answers as something other than an aifi hub, a
rule whose algorithm is not in the catalog or not subscribed (its studies
would only ever fail), a data folder that cannot be written. A hub or a
PACS that is merely down is not fatal: the edge exists to buffer through
such outages (received studies wait in the outbox, results wait at the
hub), and a hospital must not lose its DICOM listener because the network
to the hub was down at the moment it restarted. Those are logged as
warnings, and ``aifi edge check`` reports them as failures.
"""

from __future__ import annotations

import errno
import logging
import socket
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError
from pynetdicom import evt
from pynetdicom.events import Event

from aifi.dicom.association import answers_to_caller, application_entity
from aifi.dicom.status import SUCCESS, describe
from aifi.edge.config import DicomPeer, EdgeSettings, ListenerSettings
from aifi.edge.tls import client_context
from aifi.errors import ConfigError, HubRefused, HubUnavailable
from aifi.protocol.client import HubClient
from aifi.protocol.schemas import AlgorithmState, CatalogEntryOut, SubscriptionOut

__all__ = ["CheckResult", "check_listener", "port_in_use_message", "run_checks"]

logger = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
"""Verification SOP Class UID (PS3.4 Annex A)."""

_CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fatal: bool = False
    """A definite configuration error: the edge refuses to start."""


def run_checks(settings: EdgeSettings, *, listener: bool = False) -> list[CheckResult]:
    """Every start-up check, in order; ``listener`` adds whether the DICOM port is free."""
    results = [_data_folder(settings)]
    if listener:
        results.append(check_listener(settings.listener))
    results.extend(_hub(settings))
    results.append(_pacs(settings.pacs))
    return results


def port_in_use_message(listener: ListenerSettings) -> str:
    """The one line an operator reads when the listener's port is taken."""
    return (
        f"listener.port {listener.port} is already in use (another edge or program listens"
        " there); change [listener] port in edge.toml"
    )


def _data_folder(settings: EdgeSettings) -> CheckResult:
    folder = settings.data_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".check-"):
            pass
    except OSError as exc:
        return CheckResult(
            "data folder",
            False,
            f"cannot write to data_dir {folder} ({exc.strerror}); fix its permissions or path",
            fatal=True,
        )
    return CheckResult("data folder", True, f"{folder} is writable")


def check_listener(listener: ListenerSettings) -> CheckResult:
    """Whether the DICOM listener's address can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the listener itself binds: a port in TIME_WAIT after a restart is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listener.host, listener.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return CheckResult("listener", False, port_in_use_message(listener))
            return CheckResult(
                "listener",
                False,
                f"cannot listen on {listener.host}:{listener.port} ({exc.strerror});"
                " check [listener] host and port",
            )
    return CheckResult(
        "listener", True, f"{listener.ae_title} can listen on {listener.host}:{listener.port}"
    )


def _hub(settings: EdgeSettings) -> list[CheckResult]:
    peer = settings.hub.model_copy(
        update={"timeout_s": min(settings.hub.timeout_s, _CHECK_TIMEOUT_S)}
    )
    algorithms = sorted({rule.algorithm for rule in settings.rules})
    skipped = [
        CheckResult("catalog", False, "not checked: the hub did not answer"),
        CheckResult("subscriptions", False, "not checked: the hub did not answer"),
    ]
    hub = HubClient(peer)
    try:
        try:
            catalog = hub.catalog()
            subscriptions = hub.my_subscriptions()
        except HubUnavailable as exc:
            detail = f"{exc}; received studies wait in the outbox until it answers"
            return [CheckResult("hub", False, detail), *skipped]
        except HubRefused as exc:
            if exc.status_code in (401, 403):
                detail = (
                    f"the hub at {peer.url} refused hub.token ({exc.status_code}); set the"
                    " token printed by 'aifi hub hospital add' for this hospital"
                )
            else:
                detail = f"hub.url {peer.url} does not answer as an aifi hub: {exc}"
            return [CheckResult("hub", False, detail, fatal=True), *skipped]
        except (ValueError, ValidationError) as exc:  # JSON that is not the hub's
            detail = f"hub.url {peer.url} does not answer as an aifi hub ({type(exc).__name__})"
            return [CheckResult("hub", False, detail, fatal=True), *skipped]
    finally:
        hub.close()
    return [
        CheckResult("hub", True, f"{peer.url} accepts the token"),
        _catalog(algorithms, catalog),
        _subscriptions(algorithms, subscriptions),
    ]


def _catalog(algorithms: list[str], catalog: list[CatalogEntryOut]) -> CheckResult:
    if not algorithms:
        return CheckResult("catalog", False, "no [[rules]]: nothing received is sent to the hub")
    active = {e.algorithm_id for e in catalog if e.state == AlgorithmState.ACTIVE}
    missing = [a for a in algorithms if a not in active]
    if missing:
        offered = ", ".join(sorted(active)) or "none"
        return CheckResult(
            "catalog",
            False,
            f"rules name algorithms the hub does not offer (active): {', '.join(missing)};"
            f" it offers: {offered}",
            fatal=True,
        )
    return CheckResult("catalog", True, f"the hub offers {', '.join(algorithms)}")


def _subscriptions(algorithms: list[str], subscriptions: list[SubscriptionOut]) -> CheckResult:
    now = datetime.now(UTC)
    valid = {
        s.algorithm_id
        for s in subscriptions
        if _aware(s.valid_from) <= now and (s.valid_until is None or now < _aware(s.valid_until))
    }
    missing = [a for a in algorithms if a not in valid]
    if missing:
        return CheckResult(
            "subscriptions",
            False,
            f"this hospital has no subscription in force for {', '.join(missing)}; ask the hub"
            " operator ('aifi hub subscription add') or remove the rule",
            fatal=True,
        )
    return CheckResult("subscriptions", True, f"subscribed to {', '.join(algorithms) or 'none'}")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _pacs(peer: DicomPeer | None) -> CheckResult:
    """C-ECHO the PACS (PS3.7 §9.1.5): an association, then a Verification request."""
    if peer is None:
        return CheckResult("pacs", False, "no [pacs] configured: results cannot be stored")
    where = f"PACS {peer.ae_title} at {peer.host}:{peer.port}"
    try:  # a plain TCP connect first: a PACS that is down is told apart from one that refuses
        socket.create_connection((peer.host, peer.port), timeout=_CHECK_TIMEOUT_S).close()
    except OSError as exc:
        return CheckResult(
            "pacs", False, f"{where} does not answer ({exc.strerror or exc}); results wait"
        )
    ae = application_entity(peer.calling_ae_title)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = _CHECK_TIMEOUT_S
    rejected: list[str] = []

    def on_rejected(event: Event) -> None:
        primitive = event.assoc.acceptor.primitive
        rejected.append(str(getattr(primitive, "reason_str", "no reason given")))

    try:  # DICOM TLS (PS3.15 B.9) with the hospital's certificates, as delivery uses
        tls_args = (client_context(peer.tls), peer.host) if peer.tls is not None else None
    except ConfigError as exc:
        return CheckResult("pacs", False, str(exc), fatal=True)
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        evt_handlers=[(evt.EVT_REJECTED, on_rejected)],
        tls_args=tls_args,
    )
    if assoc.is_rejected:
        return CheckResult(
            "pacs",
            False,
            f"{where} rejected the association ({rejected[0] if rejected else 'no reason'});"
            f" check [pacs] ae_title and that the PACS knows {peer.calling_ae_title}",
        )
    if not assoc.is_established:
        why = (
            "aborted the association (does it accept Verification, C-ECHO?)"
            if assoc.is_aborted
            else "does not answer an association"
        )
        return CheckResult("pacs", False, f"{where} {why}; results wait")
    answers_to_caller(assoc)  # pynetdicom's reactor must not take the C-ECHO answer
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != SUCCESS:
        text = "no response" if code == -1 else f"status {describe(code)}"
        return CheckResult("pacs", False, f"{where} answered the C-ECHO with {text}")
    return CheckResult("pacs", True, f"{where} answers C-ECHO")
