"""Pull a study (and its priors) from a query/retrieve peer, on demand.

Push is the PACS auto-routing to the edge; pull is the edge asking. One
function, :func:`pull_study`, used by ``aifi edge request`` and by anything
that asks for "algorithm X on study Y" (a workitem, an order):

1. C-FIND at STUDY level in the Study Root information model (PS3.4 C.6.2)
   by Accession Number or Study Instance UID;
2. the request is recorded in the edge's state (``requests`` table), so that
   when the study is stable the assembler makes a task for the requested
   algorithm even if no routing rule matches (the running edge is another
   process: the state database is the only channel);
3. priors, when asked for (:class:`aifi.core.manifest.Priors`): a C-FIND for
   the same PatientID and IssuerOfPatientID, modality and body part, StudyDate
   within N years before the study; they are retrieved first and noted on the
   task (``priors-pulled``); they stay at the edge until the hub's task
   contract, one study per task today, can carry them;
4. C-MOVE (PS3.4 C.4.2) to the edge's own AE title, so the listener receives
   the instances on its normal path, or C-GET (PS3.4 C.4.3), the instances
   coming back as C-STOREs on the same association, written through
   :meth:`aifi.edge.scp.EdgeReceiver.handle_store`.

A peer with a ``tls`` table is spoken to over DICOM TLS (PS3.15 B.9) with
the hospital's certificates, as the PACS destination is (:mod:`aifi.edge.tls`).

For a DICOMweb PACS (``method = "dicomweb"``) the same steps are QIDO-RS
searches and a WADO-RS retrieve (PS3.18 10.6, 10.4), each instance written
through :meth:`aifi.edge.scp.EdgeReceiver.store_encoded`. A DICOMweb peer
with a ``tls`` table (its url https://) is spoken to with the same TLS
context as DICOM TLS (:func:`aifi.edge.tls.client_context`: TLS 1.2+, the
PACS checked against the hospital's CA bundle, the hospital's client
certificate shown), PS3.18 §6.1.1 (HTTPS, BCP 195).

Outcomes are values (:class:`PullOutcome`): a peer that refuses or finds
nothing is a status with a sentence, not an exception. Only misuse (no
accession and no UID, an unknown peer name) raises :class:`ConfigError`.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Literal

import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from requests.adapters import HTTPAdapter

from aifi.core.manifest import Priors
from aifi.dicom.association import answers_to_caller, application_entity
from aifi.dicom.status import (
    MOVE_DESTINATION_UNKNOWN,
    SUBOPERATIONS_FAILED,
    SUCCESS,
    describe,
    is_pending,
)
from aifi.edge.config import EdgeSettings, QueryRetrievePeer
from aifi.edge.state import EdgeState
from aifi.edge.tls import client_context
from aifi.errors import ConfigError

__all__ = [
    "PullOutcome",
    "StudyMatch",
    "find_priors",
    "find_studies",
    "peer_named",
    "pull_priors",
    "pull_study",
]

logger = logging.getLogger(__name__)

PullStatus = Literal["requested", "not-found", "failed"]

_RETRIEVE = {"move": "C-MOVE", "get": "C-GET", "dicomweb": "WADO-RS"}
# Presentation contexts an association may propose (PS3.8 9.3.2.2: at most 128).
_MAX_CONTEXTS = 128


@dataclass(frozen=True)
class StudyMatch:
    """One study a peer answered a C-FIND with."""

    study_instance_uid: str
    accession_number: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: str
    modalities: tuple[str, ...]
    sop_classes: tuple[str, ...]


@dataclass
class PullOutcome:
    """What a pull did: the study, the request recorded, what the peer moved."""

    status: PullStatus
    detail: str
    peer: str
    method: str
    study_instance_uid: str | None = None
    request_id: int | None = None
    instances: int = 0
    failed: int = 0
    prior_study_uids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "requested"


def peer_named(settings: EdgeSettings, name: str | None) -> QueryRetrievePeer:
    """The ``[[query_retrieve]]`` entry called ``name`` (its name or AE title), or the only one."""
    peers = settings.query_retrieve
    if not peers:
        raise ConfigError(
            "no [[query_retrieve]] peer in edge.toml: add the PACS to pull from"
            ' (ae_title, host, port, method = "move" or "get")'
        )
    if name is None:
        if len(peers) > 1:
            raise ConfigError("several [[query_retrieve]] peers: say which with --peer")
        return peers[0]
    for peer in peers:
        if name in (peer.name, peer.ae_title):
            return peer
    known = ", ".join(p.name or p.ae_title for p in peers)
    raise ConfigError(f"no [[query_retrieve]] peer named {name!r}; known: {known}")


def pull_study(
    settings: EdgeSettings,
    peer: QueryRetrievePeer,
    *,
    accession: str | None = None,
    study_uid: str | None = None,
    algorithm_id: str,
    requested_by: str = "aifi edge request",
    priority: str = "MEDIUM",
    priors: Priors | None = None,
    state: EdgeState | None = None,
) -> PullOutcome:
    """Find one study on ``peer``, record the request for ``algorithm_id``, retrieve it.

    ``state`` is the edge's state (opened from ``settings`` when not given).
    The task itself is made by the running edge once the study is stable.
    """
    if not accession and not study_uid:
        raise ConfigError("say which study to pull: an accession number or a Study Instance UID")
    name = peer.name or peer.ae_title
    method = peer.method
    try:
        matches = find_studies(peer, accession=accession, study_uid=study_uid)
    except _PeerError as exc:
        return PullOutcome("failed", str(exc), name, method)
    if not matches:
        which = f"accession {accession}" if accession else f"study {study_uid}"
        return PullOutcome("not-found", f"{name} has no study for {which}", name, method)
    if len(matches) > 1:
        return PullOutcome(
            "failed",
            f"{name} has {len(matches)} studies for accession {accession}: pull by --study-uid",
            name,
            method,
        )
    study = matches[0]
    prior_uids: list[str] = []
    if priors is not None:
        try:
            prior_uids = [m.study_instance_uid for m in find_priors(peer, study, priors)]
        except _PeerError as exc:
            logger.warning("priors not searched on %s: %s", name, exc)
    own = state is None
    if state is None:
        from aifi.edge.at_rest import edge_key

        state = EdgeState(settings.data_dir / "edge.db", key=edge_key(settings))
    try:
        request_id = state.add_request(
            study.study_instance_uid,
            algorithm_id,
            requested_by,
            priority=priority,
            prior_study_uids=prior_uids,
        )
        outcome = PullOutcome(
            "requested",
            "",
            name,
            method,
            study_instance_uid=study.study_instance_uid,
            request_id=request_id,
            prior_study_uids=prior_uids,
        )
        problems: list[str] = []
        for uid in [*prior_uids, study.study_instance_uid]:  # priors first: there when it's stable
            done, failed, problem = _retrieve(settings, peer, uid, state, study.sop_classes)
            outcome.instances += done
            outcome.failed += failed
            if problem:
                problems.append(problem)
        kind = "pull-requested" if not problems else "pull-failed"
        outcome.detail = (
            f"{outcome.instances} instances retrieved by {_RETRIEVE[method]} from {name}"
            f" ({len(prior_uids)} prior studies), {outcome.failed} failed"
            + ("; " + "; ".join(problems) if problems else "")
        )
        if problems and outcome.instances == 0:
            outcome.status = "failed"
        state.record_event(
            kind, f"{algorithm_id} on study {study.study_instance_uid}: {outcome.detail}"
        )
        return outcome
    finally:
        if own:
            state.close()


def pull_priors(
    settings: EdgeSettings,
    peer: QueryRetrievePeer,
    study_uid: str,
    priors: Priors,
    state: EdgeState,
    *,
    on_found: Callable[[list[str]], None] | None = None,
) -> PullOutcome:
    """Find and retrieve the priors of a study the edge holds (one the PACS pushed).

    The study's patient is read from ``peer`` by a C-FIND for its Study
    Instance UID (the edge keeps no identity in its state); its priors are
    then found and retrieved as :func:`pull_study` does. Nothing is recorded:
    the caller adds the request that carries them to the task
    (:mod:`aifi.edge.prior_search`). ``on_found`` hears the priors' Study
    UIDs before they are retrieved.
    """
    name = peer.name or peer.ae_title
    outcome = PullOutcome("requested", "", name, peer.method, study_instance_uid=study_uid)
    try:
        matches = find_studies(peer, study_uid=study_uid)
        if not matches:
            outcome.status, outcome.detail = "not-found", f"{name} has no study {study_uid}"
            return outcome
        found = find_priors(peer, matches[0], priors)
    except _PeerError as exc:
        outcome.status, outcome.detail = "failed", str(exc)
        return outcome
    if on_found is not None:
        on_found([m.study_instance_uid for m in found])
    problems: list[str] = []
    for match in found:
        done, failed, problem = _retrieve(
            settings, peer, match.study_instance_uid, state, matches[0].sop_classes
        )
        outcome.instances += done
        outcome.failed += failed
        if problem:
            problems.append(problem)
        if done:
            outcome.prior_study_uids.append(match.study_instance_uid)
    outcome.detail = (
        f"{len(outcome.prior_study_uids)} of {len(found)} prior studies"
        f" ({outcome.instances} instances) retrieved by {_RETRIEVE[peer.method]} from {name},"
        f" {outcome.failed} failed" + ("; " + "; ".join(problems) if problems else "")
    )
    if problems and not outcome.prior_study_uids:
        outcome.status = "failed"
    return outcome


class _PeerError(Exception):
    """The peer could not be asked (association refused, aborted); internal to this module."""


def find_studies(
    peer: QueryRetrievePeer,
    *,
    accession: str | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
    issuer_of_patient_id: str | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    study_date: str | None = None,
) -> list[StudyMatch]:
    """C-FIND at STUDY level (PS3.4 C.6.2.1); empty keys are return keys."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid or ""
    query.AccessionNumber = accession or ""
    query.PatientID = patient_id or ""
    query.IssuerOfPatientID = issuer_of_patient_id or ""
    query.StudyDate = study_date or ""
    query.ModalitiesInStudy = modality or ""
    query.SOPClassesInStudy = ""
    if body_part:
        query.BodyPartExamined = body_part  # optional key; Orthanc matches it at study level
    if peer.method == "dicomweb":
        return [_match(ds) for ds in _qido(peer, "studies", query)]
    matches: list[StudyMatch] = []
    with _association(peer, [StudyRootQueryRetrieveInformationModelFind]) as assoc:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            code = int(getattr(status, "Status", -1))
            if is_pending(code) and identifier is not None:
                matches.append(_match(identifier))
            elif code == -1:
                raise _PeerError(
                    f"{peer.ae_title} aborted or did not answer the C-FIND; check that it"
                    f" allows queries from the calling AE title {peer.calling_ae_title}"
                )
            elif code != SUCCESS and not is_pending(code):
                raise _PeerError(f"{peer.ae_title} answered the C-FIND with {describe(code)}")
    return matches


def find_priors(peer: QueryRetrievePeer, study: StudyMatch, priors: Priors) -> list[StudyMatch]:
    """Earlier studies of the same patient that ``priors`` asks for, newest first."""
    if not study.patient_id:
        return []
    until = _date(study.study_date) or dt.date.today()
    since = until - dt.timedelta(days=round(365.25 * priors.years))
    found = find_studies(
        peer,
        patient_id=study.patient_id,
        issuer_of_patient_id=study.issuer_of_patient_id or None,
        modality=study.modalities[0] if study.modalities else None,
        study_date=f"{since:%Y%m%d}-{until:%Y%m%d}",
    )
    if priors.same_body_part:
        found = _same_body_part(peer, study, found)
    found = [
        m
        for m in found
        if m.study_instance_uid != study.study_instance_uid
        and m.issuer_of_patient_id == study.issuer_of_patient_id
    ]
    found.sort(key=lambda m: m.study_date, reverse=True)
    return found[: priors.max_studies]


def _same_body_part(
    peer: QueryRetrievePeer, study: StudyMatch, found: list[StudyMatch]
) -> list[StudyMatch]:
    """Keep the studies whose series show the current study's body part (SERIES level)."""
    wanted = _body_parts(peer, study.study_instance_uid)
    if not wanted:
        return found
    return [m for m in found if _body_parts(peer, m.study_instance_uid) & wanted]


def _body_parts(peer: QueryRetrievePeer, study_uid: str) -> set[str]:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.BodyPartExamined = ""
    parts: set[str] = set()
    if peer.method == "dicomweb":
        for ds in _qido(peer, "series", query):
            part = str(ds.get("BodyPartExamined", "") or "").upper()
            if part:
                parts.add(part)
        return parts
    with _association(peer, [StudyRootQueryRetrieveInformationModelFind]) as assoc:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if is_pending(int(getattr(status, "Status", -1))) and identifier is not None:
                part = str(identifier.get("BodyPartExamined", "") or "").upper()
                if part:
                    parts.add(part)
    return parts


def _retrieve(
    settings: EdgeSettings,
    peer: QueryRetrievePeer,
    study_uid: str,
    state: EdgeState,
    sop_classes: Sequence[str],
) -> tuple[int, int, str]:
    """C-MOVE or C-GET one study; (completed, failed, problem or "")."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    try:
        if peer.method == "dicomweb":
            return _wado_study(settings, peer, study_uid, state)
        if peer.method == "move":
            destination = peer.move_destination or settings.listener.ae_title
            with _association(peer, [StudyRootQueryRetrieveInformationModelMove]) as assoc:
                responses = assoc.send_c_move(
                    query, destination, StudyRootQueryRetrieveInformationModelMove
                )
                return _sub_operations(peer, "C-MOVE", responses)
        from aifi.edge.scp import EdgeReceiver

        receiver = EdgeReceiver(settings.listener, state, settings.data_dir / "received")
        with _association(
            peer,
            [StudyRootQueryRetrieveInformationModelGet],
            storage=sop_classes,
            handlers=[(evt.EVT_C_STORE, receiver.handle_store)],
        ) as assoc:
            responses = assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
            return _sub_operations(peer, "C-GET", responses)
    except _PeerError as exc:
        return 0, 0, str(exc)


def _qido(
    peer: QueryRetrievePeer, level: Literal["studies", "series"], query: Dataset
) -> list[Dataset]:
    """QIDO-RS search (PS3.18 10.6): the query's keys as filters, the empty ones as fields."""
    filters = {
        e.keyword: str(e.value)
        for e in query
        if e.keyword not in ("QueryRetrieveLevel", "SOPClassesInStudy")
        and e.value not in ("", None)
    }
    fields = [e.keyword for e in query if e.value in ("", None)]
    try:
        with _dicomweb(peer) as client:
            if level == "studies":
                found = client.search_for_studies(search_filters=filters, fields=fields)
            else:
                uid = filters.pop("StudyInstanceUID")
                found = client.search_for_series(uid, search_filters=filters, fields=fields)
    except ConfigError:
        raise
    except Exception as exc:  # requests' errors, translated once here
        raise _PeerError(f"the QIDO-RS search at {peer.url} failed: {exc}") from exc
    return [Dataset.from_json(item) for item in found]


def _wado_study(
    settings: EdgeSettings, peer: QueryRetrievePeer, study_uid: str, state: EdgeState
) -> tuple[int, int, str]:
    """WADO-RS retrieve of a study (PS3.18 10.4), each instance through the receive path."""
    from aifi.edge.scp import EdgeReceiver

    receiver = EdgeReceiver(settings.listener, state, settings.data_dir / "received")
    completed = failed = 0
    try:
        with _dicomweb(peer) as client:
            for ds in client.iter_study(study_uid):
                status = receiver.store_encoded(
                    _encoded(ds),
                    str(ds.file_meta.TransferSyntaxUID),
                    str(ds.SOPClassUID),
                    str(ds.SOPInstanceUID),
                    f"DICOMweb {peer.name or peer.ae_title}",
                )
                if status == 0:
                    completed += 1
                else:
                    failed += 1
    except ConfigError:
        raise
    except Exception as exc:  # requests' errors, translated once here
        return completed, failed, f"the WADO-RS retrieve from {peer.url} failed: {exc}"
    return completed, failed, ""


@contextmanager
def _dicomweb(peer: QueryRetrievePeer) -> Iterator[Any]:
    """A DICOMweb client of ``peer``; with its ``tls`` table, over that TLS context.

    dicomweb-client speaks through a requests session: the context is given
    to the session's connection pools for https, so the CA bundle, the client
    certificate, TLS 1.2+ and the host name check are those of DICOM TLS.
    The session (its kept-alive connections) is closed after the block.
    """
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if peer.tls is not None:
        context = client_context(peer.tls, f"query_retrieve {peer.name or peer.ae_title}")
        session.mount("https://", _TlsAdapter(context))
    try:
        yield DICOMwebClient(url=str(peer.url), session=session)
    finally:
        session.close()


class _TlsAdapter(HTTPAdapter):
    """requests' connection pools with our SSL context (requests then adds no CA file)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(  # called-by: requests' HTTPAdapter.__init__
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["ssl_context"] = self._context
        if not self._context.check_hostname:
            pool_kwargs["assert_hostname"] = False  # urllib3 would check the name itself
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def _encoded(ds: Dataset) -> bytes:
    """The data set in its own transfer syntax, without preamble and File Meta Information."""
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL after "DICM"
    return data[144 + group_length :]


def _sub_operations(peer: QueryRetrievePeer, op: str, responses: Any) -> tuple[int, int, str]:
    """The final counts of a C-MOVE/C-GET (PS3.4 C.4.2.1.5): completed, failed, problem."""
    completed = failed = 0
    problem = ""
    for status, _identifier in responses:
        code = int(getattr(status, "Status", -1))
        if code == -1:
            return completed, failed, f"{peer.ae_title} aborted or did not answer the {op}"
        completed = int(getattr(status, "NumberOfCompletedSuboperations", completed) or 0)
        failed = int(getattr(status, "NumberOfFailedSuboperations", failed) or 0)
        warnings = int(getattr(status, "NumberOfWarningSuboperations", 0) or 0)
        completed += warnings if not is_pending(code) else 0
        if code not in (SUCCESS, SUBOPERATIONS_FAILED) and not is_pending(code):
            comment = str(getattr(status, "ErrorComment", "") or "")
            problem = f"{peer.ae_title} answered the {op} with {describe(code)} {comment}".strip()
            if code == MOVE_DESTINATION_UNKNOWN:
                problem += " (move destination unknown: register the edge's AE title in the PACS)"
    return completed, failed, problem


@contextmanager
def _association(
    peer: QueryRetrievePeer,
    contexts: Sequence[str],
    *,
    storage: Sequence[str] = (),
    handlers: list[Any] | None = None,
) -> Iterator[Association]:
    ae = application_entity(peer.calling_ae_title)
    ae.acse_timeout = 30
    ae.network_timeout = 60
    ae.dimse_timeout = peer.timeout_s
    for context in contexts:
        ae.add_requested_context(context)
    roles: list[Any] = []
    if storage or handlers:
        classes = list(storage) or [str(c.abstract_syntax) for c in StoragePresentationContexts]
        for sop_class in classes[: _MAX_CONTEXTS - len(contexts)]:
            ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
            roles.append(build_role(sop_class, scp_role=True))
    where = f"query_retrieve {peer.name or peer.ae_title}"
    # PS3.15 B.9 (BCP 195): the peer checked against the hospital's CA bundle, ours shown.
    tls_args = (client_context(peer.tls, where), peer.host) if peer.tls is not None else None
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        ext_neg=roles or None,
        evt_handlers=handlers or None,
        tls_args=tls_args,
    )
    if assoc.is_established:
        answers_to_caller(assoc)  # pynetdicom's reactor must not take C-FIND/C-MOVE answers
    if not assoc.is_established:
        over = (
            " over TLS (check that the peer's certificate is signed by a CA in"
            " tls.ca_bundle and names the host configured, and that the peer trusts the"
            " edge's certificate)"
            if peer.tls is not None
            else ""
        )
        raise _PeerError(
            f"{peer.ae_title} at {peer.host}:{peer.port} refused or did not answer the"
            f" association from {peer.calling_ae_title}{over}; check [[query_retrieve]] and"
            " that the PACS knows this calling AE title"
        )
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _match(identifier: Dataset) -> StudyMatch:
    return StudyMatch(
        study_instance_uid=str(identifier.get("StudyInstanceUID", "")),
        accession_number=str(identifier.get("AccessionNumber", "") or ""),
        patient_id=str(identifier.get("PatientID", "") or ""),
        issuer_of_patient_id=str(identifier.get("IssuerOfPatientID", "") or ""),
        study_date=str(identifier.get("StudyDate", "") or ""),
        modalities=_multi(identifier.get("ModalitiesInStudy")),
        sop_classes=_multi(identifier.get("SOPClassesInStudy")),
    )


def _multi(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(str(v) for v in value)
    return (str(value),)


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return None
