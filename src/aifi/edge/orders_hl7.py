"""HL7 v2 orders over MLLP: ORM^O01 and OMI^O23 in, acknowledgements out.

What is read (HL7 v2.5.1 ch. 4 and 4A; IHE RAD TF-2 RAD-4/RAD-13, its
HL7 v2.3.1 and v2.5.1 options):

==================  =========================================================
order control       ORC-1 (table 0119): NW new, CA cancel (DC, OC alike), XO change
order number        ORC-2.1 placer order number (else OBR-2.1, ORC-3.1, OBR-3.1)
accession number    IPC-1.1 (OMI), else OBR-18 (placer field 1), else ORC-2.1
Study Instance UID  IPC-3.1 (OMI), else ZDS-1.1 (the IHE Z-segment of ORM)
procedure code      OBR-4.1 universal service ID, OBR-4.4, OBR-44.1 procedure code
priority            TQ1-9.1 (v2.5+), else ORC-7.6, OBR-27.6 (TQ), OBR-5 (table 0027)
==================  =========================================================

The patient (PID) is not read: the edge finds the patient in the images.

The answer is an original-mode acknowledgement (v2.5.1 §2.9.2): ``AA``
when every order in the message was taken; ``AE`` with an ERR segment per
order it could not take (what and why, HL7 table 0357 codes); ``AR`` for a
message it does not take at all (not an order, an unsupported version, no
MSH). ERR is the v2.5 shape (ERR-2 location, ERR-3 code, ERR-4 severity,
ERR-8 user message) from v2.5 on, the ERR-1 shape before.

Enhanced acknowledgement mode (v2.5.1 §2.9.3), when the order's MSH-15
(accept acknowledgment type) or MSH-16 (application acknowledgment type) is
valued, each per HL7 table 0155 (AL always, NE never, ER on an error, SU on
success): the *accept* acknowledgement is an ACK with MSA-1 ``CA`` (the
message was read and its orders recorded), ``CR`` (refused as a whole: not an
order, an unsupported version) or ``CE`` (it could not be read); an empty
MSH-15 counts as AL. The *application* acknowledgement is the order response
of the message's own chapter (v2.5.1 §4.4.2 ORR^O02 for ORM^O01, §4.4.11
ORI^O24 for OMI^O23, as IHE RAD-4/RAD-13 name them) with MSA-1 ``AA``/``AE``/
``AR``, the ERR segments, and per order its ORC (ORC-1 table 0119: OK, UA;
CR, UC for a cancel; XR, UX for a change), OBR (and for ORI its TQ1 and IPC)
echoed. Both go back on the connection the order came on, the accept
acknowledgement first; the response asks for no acknowledgement itself
(MSH-15/16 ``NE``), and an ACK the RIS sends anyway is read and not answered.

MLLP framing: HL7 v2 Transport Specification, MLLP release 2 (a message is
``<VT> message <FS><CR>``). With ``[orders.tls]`` the listener takes MLLP
over TLS only (IHE ITI TF-2 ATNA secure node, TLS 1.2+ as BCP 195): the
edge shows its certificate and, by default, refuses a RIS that shows none
chained to the CA bundle; a refused handshake is recorded
(``order-connection-refused``) and the connection closed.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, UnsupportedVersion
from hl7apy.parser import parse_message

from aifi.edge.orders import Control, Order, OrderDesk, order_priority

__all__ = ["MllpListener", "answer_messages"]

logger = logging.getLogger(__name__)

_START, _END = b"\x0b", b"\x1c\x0d"
# Which messages are orders, in which versions (v2.5.1 ch. 4.4.1 ORM, 4.4.5 OMI)
_ORM_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
_OMI_VERSIONS = ("2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
_CONTROLS: dict[str, Control] = {"NW": "NW", "XO": "XO", "CA": "CA", "DC": "CA", "OC": "CA"}
# HL7 table 0357 (message error condition codes)
_MEANING = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    207: "Application internal error",
}


@dataclass(frozen=True)
class _Problem:
    code: int  # table 0357
    text: str
    segment: str = ""
    sequence: int = 1
    field: int = 0


@dataclass(frozen=True)
class _Header:
    """The MSH fields an acknowledgement needs (read from the text, before any parsing)."""

    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    message_type: str
    event: str
    control_id: str
    processing_id: str
    version: str
    charset: str
    accept_ack: str = ""  # MSH-15 (table 0155)
    application_ack: str = ""  # MSH-16 (table 0155)

    @property
    def enhanced(self) -> bool:
        """Enhanced acknowledgement mode: MSH-15 or MSH-16 valued (v2.5.1 §2.9.3)."""
        return bool(self.accept_ack or self.application_ack)


@dataclass(frozen=True)
class _Outcome:
    """One order of the message and what became of it (for the application acknowledgement)."""

    group: dict[str, Any]
    control: str  # ORC-1 as sent
    accepted: bool


def answer_messages(text: str, desk: OrderDesk) -> list[str]:
    """The acknowledgements of one HL7 message, each of its orders given to ``desk``.

    Original mode: one ACK. Enhanced mode: the accept ACK and/or the order
    response, as MSH-15 and MSH-16 ask (none when both say NE). An ACK
    from the RIS gets no answer. A message refused as a whole (AR, or AE
    before any order was read) is recorded as an ``order-refused`` event
    too; refused orders are recorded by the desk. Whatever breaks, the RIS
    gets an answer.
    """
    header = _header(text)
    if header is not None and header.message_type == "ACK":
        logger.debug("MLLP: an ACK from %s, not answered", header.sending_app)
        return []
    outcomes: list[_Outcome] = []
    try:
        code, problems, detail, read = _judge(text, header, desk, outcomes)
    except Exception:  # the RIS gets an answer whatever broke here
        logger.exception("an HL7 message could not be read")
        code, read = "AE", False
        problems, detail = [_Problem(207, "the edge could not read the message; send it again")], ""
    if problems and not read:
        kind = f"{header.message_type}^{header.event}" if header else "(no MSH)"
        sender = f" from {header.sending_app}/{header.sending_facility}" if header else ""
        desk.state.record_event(
            "order-refused", f"HL7 {kind}{sender}: {code} {problems[0].code}: {problems[0].text}"
        )
    if header is None or not header.enhanced:
        return [_ack(header or _FALLBACK, code, problems, detail)]
    commit = "CR" if code == "AR" else ("CA" if read else "CE")
    replies: list[str] = []
    if _wanted(header.accept_ack or "AL", ok=commit == "CA"):
        replies.append(_ack(header, commit, [] if commit == "CA" else problems, detail))
    if _wanted(header.application_ack, ok=code == "AA") and (commit == "CA" or not replies):
        replies.append(_response(header, code, problems, detail, outcomes))
    return replies


def _wanted(condition: str, *, ok: bool) -> bool:
    """Whether an acknowledgement is sent under HL7 table 0155 ``condition``."""
    return {"AL": True, "ER": not ok, "SU": ok}.get(condition.upper(), False)


def _judge(
    text: str, header: _Header | None, desk: OrderDesk, outcomes: list[_Outcome]
) -> tuple[str, list[_Problem], str, bool]:
    """(MSA-1, problems, what was done, whether the orders reached the desk).

    Each order read is appended to ``outcomes``.
    """
    if header is None:
        return "AR", [_Problem(100, "the message does not start with an MSH")], "", False
    kind = f"{header.message_type}^{header.event}"
    if header.message_type not in ("ORM", "OMI"):
        return "AR", [_Problem(200, f"{kind} is not an order: send ORM^O01 or OMI^O23")], "", False
    if (header.message_type, header.event) not in (("ORM", "O01"), ("OMI", "O23")):
        return "AR", [_Problem(201, f"{kind} is not taken: send ORM^O01 or OMI^O23")], "", False
    versions = _ORM_VERSIONS if header.message_type == "ORM" else _OMI_VERSIONS
    if header.version not in versions:
        known = f"v{', v'.join(versions)} are"
        return "AR", [_Problem(203, f"{kind} v{header.version} is not taken: {known}")], "", False
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except UnsupportedVersion as exc:
        return "AR", [_Problem(203, f"HL7 v{header.version}: {exc}")], "", False
    except HL7apyException as exc:  # hl7apy's errors, translated once here
        return "AE", [_Problem(102, f"the message is not valid HL7 v2: {exc}")], "", False
    source = f"HL7 {kind} v{header.version} from {header.sending_app}/{header.sending_facility}"
    groups = _order_groups(message.children)
    if not groups:
        return "AE", [_Problem(101, "the message has no ORC/OBR order", "ORC")], "", False
    problems: list[_Problem] = []
    taken: list[str] = []
    for number, group in enumerate(groups, start=1):
        order = _order(group, number, source)
        control = _value(group.get("ORC"), 1).upper() or "NW"
        if isinstance(order, _Problem):
            problems.append(order)
            outcomes.append(_Outcome(group, control, accepted=False))
            desk.state.record_event("order-refused", f"{source}: {order.text}")
            continue
        try:
            answer = desk.take(order)
        except Exception as exc:  # the RIS gets an answer whatever broke here
            logger.exception("order %s not recorded", order.key)
            problems.append(_Problem(207, f"order {order.key} not recorded ({exc}); send it again"))
            outcomes.append(_Outcome(group, control, accepted=False))
            continue
        outcomes.append(_Outcome(group, control, accepted=answer.accepted))
        if answer.accepted:
            taken.append(answer.detail)
        else:
            problems.append(_Problem(_code_of(answer.detail), answer.detail, "OBR", number, 4))
    return ("AE" if problems else "AA"), problems, "; ".join(taken), True


def _code_of(detail: str) -> int:
    if "not mapped" in detail:
        return 103
    if "names no study" in detail:
        return 101
    if "no open order" in detail:
        return 204
    return 207


# -- reading ------------------------------------------------------------------
_FALLBACK = _Header("", "", "AIFI_EDGE", "", "ORM", "O01", "", "P", "2.5.1", "")


def _header(text: str) -> _Header | None:
    first = text.lstrip().split("\r", 1)[0].split("\n", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return None
    sep = first[3]
    fields = first.split(sep)
    component = first[4] if len(first) > 4 else "^"

    def f(n: int, c: int = 1) -> str:  # MSH-n: MSH-1 is the separator itself
        value = fields[n - 1] if n - 1 < len(fields) else ""
        parts = value.split(component)
        return parts[c - 1].strip() if c - 1 < len(parts) else ""

    return _Header(
        sending_app=f(3),
        sending_facility=f(4),
        receiving_app=f(5),
        receiving_facility=f(6),
        message_type=f(9, 1).upper(),
        event=f(9, 2).upper(),
        control_id=f(10),
        processing_id=f(11) or "P",
        version=f(12),
        charset=f(18),
        accept_ack=f(15).upper(),
        application_ack=f(16).upper(),
    )


def _order_groups(segments: list[Any]) -> list[dict[str, Any]]:
    """The segments of each order (ORC and what follows it up to the next ORC)."""
    groups: list[dict[str, Any]] = []
    for segment in segments:
        name = str(segment.name)
        if name == "ORC" or (name == "OBR" and (not groups or "OBR" in groups[-1])):
            groups.append({})
        if groups and name not in groups[-1]:
            groups[-1][name] = segment
    return [g for g in groups if "ORC" in g or "OBR" in g]


def _value(segment: Any, field: int, component: int = 1) -> str:
    """Field ``field``, component ``component`` of the first repetition, unescaped."""
    if segment is None:
        return ""
    name = f"{segment.name}_{field}"
    for child in segment.children:
        if child.name == name:
            parts = str(child.to_er7()).split("~", 1)[0].split("^")
            value = parts[component - 1] if component - 1 < len(parts) else ""
            return _unescape(value.split("&", 1)[0]).strip()
    return ""


def _order(group: dict[str, Any], number: int, source: str) -> Order | _Problem:
    orc, obr = group.get("ORC"), group.get("OBR")
    ipc, tq1, zds = group.get("IPC"), group.get("TQ1"), group.get("ZDS")
    if obr is None:
        return _Problem(101, f"order {number}: ORC without OBR (the requested procedure)", "ORC")
    raw = _value(orc, 1).upper() or "NW"
    control = _CONTROLS.get(raw)
    if control is None:
        return _Problem(
            103,
            f"order {number}: order control (ORC-1) {raw!r} is not acted on: NW, XO and CA are",
            "ORC",
            number,
            1,
        )
    order_number = next(
        (v for v in (_value(orc, 2), _value(obr, 2), _value(orc, 3), _value(obr, 3)) if v), ""
    )
    accession = _value(ipc, 1) or _value(obr, 18) or _value(orc, 2)
    study_uid = _value(ipc, 3) or _value(zds, 1)
    codes = tuple(
        dict.fromkeys(c for c in (_value(obr, 4), _value(obr, 4, 4), _value(obr, 44)) if c)
    )
    priority = next(
        (v for v in (_value(tq1, 9), _value(orc, 7, 6), _value(obr, 27, 6), _value(obr, 5)) if v),
        "R",
    )
    return Order(
        control=control,
        order_number=order_number,
        accession=accession,
        study_instance_uid=study_uid,
        codes=codes,
        priority=order_priority(priority),
        source=source,
    )


# -- answering -----------------------------------------------------------------
def _version(header: _Header) -> str:
    return header.version if header.version in (*_ORM_VERSIONS, *_OMI_VERSIONS) else "2.5.1"


def _msh(header: _Header, kind: str, acks: str = "") -> str:
    """The MSH of an answer to ``header``'s message; ``acks``: MSH-15 and MSH-16 both."""
    version = _version(header)
    msh = [
        "MSH",
        "^~\\&",
        _escape(header.receiving_app or "AIFI_EDGE"),
        _escape(header.receiving_facility),
        _escape(header.sending_app),
        _escape(header.sending_facility),
        time.strftime("%Y%m%d%H%M%S"),
        "",
        kind,
        f"ACK{time.time_ns() // 1000 % 10**15}",
        _escape(header.processing_id or "P"),
        version,
    ]
    if acks or header.charset:
        msh += ["", "", acks, acks, ""]
    if header.charset:
        msh.append(_escape(header.charset))
    return "|".join(msh)


def _ack(header: _Header, code: str, problems: list[_Problem], detail: str = "") -> str:
    """An ACK (v2.5.1 §2.14.1) answering ``header``'s message: original mode, or the accept
    acknowledgement of enhanced mode (``code`` CA, CE or CR)."""
    version = _version(header)
    # v2.3 has no message structure component (MSH-9.3)
    kind = f"ACK^{header.event or 'O01'}" + ("" if version == "2.3" else "^ACK")
    if code == "CA":
        text = "message received and its orders recorded"
    else:
        text = problems[0].text if problems else (detail or "order accepted")
    segments = [
        _msh(header, kind),
        "|".join(["MSA", code, _escape(header.control_id), _escape(text[:80])]),
        *_err(version, problems),
    ]
    return "\r".join(segments) + "\r"


# ORC-1 of the response (table 0119): (done, not done) per order control
_RESPONSE_CONTROL = {"NW": ("OK", "UA"), "XO": ("XR", "UX"), "CA": ("CR", "UC")}


def _response(
    header: _Header, code: str, problems: list[_Problem], detail: str, outcomes: list[_Outcome]
) -> str:
    """The application acknowledgement: ORI^O24 answering OMI^O23, ORR^O02 answering ORM^O01.

    v2.5.1 §4.4.11 / §4.4.2: MSH, MSA, [{ERR}], then the response group with
    each order's ORC (ORC-1 saying what became of it), its TQ1 (ORI), OBR
    and IPC (ORI, where the order has one; required there) as received.
    """
    version = _version(header)
    name = "ORI^O24" if header.message_type == "OMI" else "ORR^O02"
    kind = name + ("" if version == "2.3" else f"^{name.replace('^', '_')}")
    text = problems[0].text if problems else (detail or "order accepted")
    segments = [
        _msh(header, kind, acks="NE"),
        "|".join(["MSA", code, _escape(header.control_id), _escape(text[:80])]),
        *_err(version, problems),
    ]
    if code != "AR":
        for outcome in outcomes:
            segments += _response_order(header.message_type, outcome)
    return "\r".join(segments) + "\r"


def _response_order(message_type: str, outcome: _Outcome) -> list[str]:
    """One order of the response group; none when the order lacks what the group requires."""
    orc, obr, group = outcome.group.get("ORC"), outcome.group.get("OBR"), outcome.group
    ipc = group.get("IPC")
    if obr is None or (message_type == "OMI" and ipc is None):
        return []
    done, not_done = _RESPONSE_CONTROL.get(_CONTROLS.get(outcome.control, ""), ("OK", "UA"))
    status = done if outcome.accepted else not_done
    if orc is not None:
        fields = str(orc.to_er7()).split("|")
        fields[1:2] = [status]
        segments = ["|".join(fields)]
    else:
        segments = [f"ORC|{status}|{_escape(_value(obr, 2))}"]
    if message_type == "OMI" and group.get("TQ1") is not None:
        segments.append(str(group["TQ1"].to_er7()))
    segments.append(str(obr.to_er7()))
    if ipc is not None and message_type == "OMI":
        segments.append(str(ipc.to_er7()))
    return segments


def _err(version: str, problems: list[_Problem]) -> list[str]:
    """ERR segments: the v2.5 shape (ERR-2, -3, -4, -8) from v2.5 on, ERR-1 before."""
    modern = version not in ("2.3", "2.3.1", "2.4")
    segments: list[str] = []
    for p in problems:
        meaning = _MEANING.get(p.code, "Application internal error")
        if modern:
            location = f"{p.segment}^{p.sequence}^{p.field}" if p.segment else ""
            segments.append(
                "|".join(
                    [
                        "ERR",
                        "",
                        location,
                        f"{p.code}^{meaning}^HL70357",
                        "E",
                        "",
                        "",
                        "",
                        _escape(p.text),
                    ]
                )
            )
        else:
            where = f"{p.segment}^{p.sequence}^{p.field or ''}" if p.segment else "^^"
            # ERR-1 (ELD): the code's text component carries the reason (MSA-3 is 80 characters)
            segments.append(f"ERR|{where}^{p.code}&{_escape(p.text)}&HL70357")
    return segments


def _escape(value: str) -> str:
    """HL7 escape sequences (v2.5.1 §2.7.4) for the delimiters in ``value``."""
    out = value.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return out.replace("\r", " ").replace("\n", " ")


def _unescape(value: str) -> str:
    for seq, char in (("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~")):
        value = value.replace(seq, char)
    return value.replace("\\E\\", "\\")


def _decode(data: bytes) -> tuple[str, str]:
    """(text, codec): MSH-18 decides (v2.5.1 §2.15.9.18), else UTF-8, else ISO 8859-1."""
    head = data[:512].split(b"\r", 1)[0]
    fields = head.split(b"|")
    charset = fields[17].decode("ascii", "replace").strip() if len(fields) > 17 else ""
    codec = {"8859/1": "latin-1", "UNICODE UTF-8": "utf-8", "ASCII": "ascii"}.get(charset, "")
    for candidate in ([codec] if codec else []) + ["utf-8", "latin-1"]:
        try:
            return data.decode(candidate), candidate
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"  # pragma: no cover - latin-1 decodes anything


# -- the listener -------------------------------------------------------------------
class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    answer: Callable[[str], list[str]]
    max_bytes: int
    tls: ssl.SSLContext | None
    refused: Callable[[str], None]


class _Connection(socketserver.BaseRequestHandler):
    """One RIS connection: any number of framed messages, each answered in turn."""

    def handle(self) -> None:
        server = cast(_Server, self.server)
        sock: socket.socket = self.request
        sock.settimeout(300)
        if server.tls is not None:
            try:  # the handshake here, on this connection's thread, not the accepting one
                sock = server.tls.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                why = getattr(exc, "reason", None) or type(exc).__name__
                logger.warning("MLLP over TLS: %s refused (%s)", self.client_address[0], why)
                server.refused(
                    f"MLLP over TLS from {self.client_address[0]}: handshake failed ({why})"
                )
                return
        buffer = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while True:
                    start = buffer.find(_START)
                    if start < 0:
                        buffer = b""
                        break
                    end = buffer.find(_END, start)
                    if end < 0:
                        if len(buffer) - start > server.max_bytes:
                            logger.warning(
                                "MLLP: a message over %d bytes from %s; connection closed",
                                server.max_bytes,
                                self.client_address[0],
                            )
                            return
                        buffer = buffer[start:]
                        break
                    text, codec = _decode(buffer[start + 1 : end])
                    buffer = buffer[end + len(_END) :]
                    for reply in server.answer(text):
                        sock.sendall(_START + reply.encode(codec, "replace") + _END)
        except (TimeoutError, ConnectionError, ssl.SSLError) as exc:
            logger.debug("MLLP connection from %s ended: %s", self.client_address[0], exc)
        finally:
            if sock is not self.request:
                sock.close()


class MllpListener:
    """An MLLP server on ``host:port`` in its own thread, answering with ``answer_messages``."""

    def __init__(
        self,
        desk: OrderDesk,
        host: str,
        port: int,
        *,
        max_bytes: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: a server context (:func:`aifi.edge.tls.server_context`) for MLLP over TLS."""
        self.desk = desk
        self.host = host
        self._port = port
        self.max_bytes = max_bytes
        self.tls = tls
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._port

    def start(self) -> None:
        server = _Server((self.host, self._port), _Connection)
        server.answer = lambda text: answer_messages(text, self.desk)
        server.max_bytes = self.max_bytes
        server.tls = self.tls
        server.refused = lambda detail: self.desk.state.record_event(
            "order-connection-refused", detail
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="edge-mllp",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "HL7 orders (MLLP%s) on %s:%d", " over TLS" if self.tls else "", self.host, self.port
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
