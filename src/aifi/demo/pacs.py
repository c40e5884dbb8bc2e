"""The demo's small built-in PACS: a Storage SCP that keeps what it receives.

In ``aifi demo`` it plays the hospital's archive: the edge delivers results
(SR, presentation states, secondary captures) into it, and tests read them
back from its folder. It is a pynetdicom Storage SCP (PS3.4 Annex B) and
Verification SCP (PS3.4 Annex A) that accepts every storage SOP class in
every transfer syntax pynetdicom knows, and writes each instance to
``<folder>/<SOP Instance UID>.dcm`` exactly as received: the dataset is not
decoded, only prefixed with File Meta Information (PS3.10 §7.1), and the
file is complete on disk before the C-STORE is answered with success.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from types import TracebackType
from typing import cast

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from aifi.dicom.association import application_entity
from aifi.dicom.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS
from aifi.errors import ConfigError
from aifi.netutil import set_nodelay

__all__ = ["DemoPacs"]

logger = logging.getLogger(__name__)

#: A UID (PS3.5 §9.1): digits and dots, at most 64 characters. Checked before
#: a peer-supplied SOP Instance UID becomes a file name.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _on_conn_open(event: Event) -> None:
    """Turn Nagle's algorithm off: small DIMSE responses otherwise wait for ACKs."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        set_nodelay(transport.socket)


def _on_echo(event: Event) -> int:
    """C-ECHO: always success (PS3.4 A.4)."""
    return SUCCESS


def _on_store(event: Event, folder: Path) -> int:
    """C-STORE: write the instance as received, then answer (PS3.4 B.2.3)."""
    request = cast(C_STORE, event.request)
    sop_instance_uid = str(request.AffectedSOPInstanceUID)
    if len(sop_instance_uid) > 64 or not _UID.fullmatch(sop_instance_uid):
        logger.warning("refused an instance whose SOP Instance UID is not a valid UID")
        return CANNOT_UNDERSTAND
    path = folder / f"{sop_instance_uid}.dcm"
    partial = folder / f".{sop_instance_uid}.{threading.get_ident()}.part"
    try:
        partial.write_bytes(event.encoded_dataset())
        partial.replace(path)
    except OSError:
        logger.exception("demo PACS could not write instance %s", sop_instance_uid)
        partial.unlink(missing_ok=True)
        return OUT_OF_RESOURCES
    logger.debug("demo PACS stored %s", sop_instance_uid)
    return SUCCESS


class DemoPacs:
    """A Storage SCP on ``host:port`` writing every received instance to ``folder``.

    ``port=0`` lets the system choose a free port; :attr:`port` tells which
    once started. Use as a context manager or call :meth:`start` and
    :meth:`stop`.
    """

    def __init__(
        self,
        folder: Path,
        *,
        ae_title: str = "DEMOPACS",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not ae_title or len(ae_title) > 16 or "\\" in ae_title:
            raise ValueError(f"ae_title {ae_title!r} must be 1 to 16 characters, no backslash")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} must be between 0 and 65535")
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.host = host
        self._requested_port = port
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the requested one until started)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen for associations in a background thread; returns at once."""
        if self._server is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = application_entity(self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, _on_conn_open),
            (evt.EVT_C_ECHO, _on_echo),
            (evt.EVT_C_STORE, _on_store, [self.folder]),
        ]
        try:
            server = ae.start_server(
                (self.host, self._requested_port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            raise ConfigError(
                f"the demo PACS cannot listen on {self.host}:{self._requested_port} ({exc}); "
                "choose another port or stop what uses it"
            ) from exc
        self._server = cast(ThreadedAssociationServer, server)  # block=False returns it
        logger.info("demo PACS %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        """Stop listening and end open associations."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            logger.info("demo PACS %s stopped", self.ae_title)

    def instances(self) -> list[Path]:
        """The stored instances, sorted by file name."""
        if not self.folder.exists():
            return []
        return sorted(self.folder.glob("*.dcm"))

    def __enter__(self) -> DemoPacs:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
