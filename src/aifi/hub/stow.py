"""Receive a STOW-RS request body part by part, straight to disk.

A STOW-RS request (PS3.18 §10.5.1) is ``multipart/related;
type="application/dicom"``; each part is one DICOM Part 10 file. The body is
fed from the request stream into python-multipart's low-level parser; every
part is written to a staged file as it arrives, so no instance is ever held
in memory whole. What is in each file is judged later
(:mod:`aifi.hub.ingest`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from aifi.errors import DicomInputError
from aifi.hub.storage import ObjectStore

__all__ = ["DICOM_MEDIA_TYPE", "ReceivedPart", "receive_parts", "stow_boundary"]

logger = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
_BATCH = 1024 * 1024  # bytes handed to the parser (and the disk) per thread hop


@dataclass(frozen=True)
class ReceivedPart:
    """One body part, staged on disk; ``media_type`` is its Content-Type without parameters."""

    path: Path
    media_type: str


def stow_boundary(content_type: str | None) -> bytes:
    """The multipart boundary of a STOW-RS request, or :class:`DicomInputError` (→ 415).

    PS3.18 §10.5.1.2: the request is ``multipart/related`` whose ``type``
    parameter, when given, is ``application/dicom`` (the only payload this
    hub stores; metadata+bulk data is not accepted).
    """
    if not content_type:
        raise DicomInputError(
            'STOW-RS needs Content-Type: multipart/related; type="application/dicom"'
        )
    media_type, params = parse_options_header(content_type)
    if media_type.decode("latin-1").lower() != "multipart/related":
        raise DicomInputError(
            f'STOW-RS accepts multipart/related; type="application/dicom", not {media_type!r}'
        )
    part_type = params.get(b"type", DICOM_MEDIA_TYPE.encode()).decode("latin-1").lower()
    if part_type != DICOM_MEDIA_TYPE:
        raise DicomInputError(f"STOW-RS parts must be {DICOM_MEDIA_TYPE}, not {part_type}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise DicomInputError("the multipart/related Content-Type has no boundary parameter")
    return boundary


@dataclass
class _PartWriter:
    """python-multipart callbacks that stage each part in its own file."""

    store: ObjectStore
    parts: list[ReceivedPart] = field(default_factory=list)
    finished: bool = False
    _file: IO[bytes] | None = None
    _path: Path | None = None
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _media_type: str = ""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._file, self._path = self.store.new_temporary()
        self._media_type = ""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.decode("latin-1").strip().lower() == "content-type":
            media_type, _ = parse_options_header(bytes(self._value))
            self._media_type = media_type.decode("latin-1").lower()
        self._field.clear()
        self._value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._file is not None
        self._file.write(data[start:end])

    def on_part_end(self) -> None:
        assert self._file is not None and self._path is not None
        self._file.close()
        self.parts.append(ReceivedPart(self._path, self._media_type))
        self._file = self._path = None

    def on_end(self) -> None:
        self.finished = True

    def discard(self) -> None:
        """Remove every staged file (the request failed as a whole)."""
        if self._file is not None:
            self._file.close()
        for path in [p.path for p in self.parts] + ([self._path] if self._path else []):
            path.unlink(missing_ok=True)
        self.parts.clear()


async def receive_parts(
    chunks: AsyncIterator[bytes], boundary: bytes, store: ObjectStore, *, max_bytes: int
) -> list[ReceivedPart]:
    """Stream a multipart body into staged files, one per part.

    Raises :class:`DicomInputError` when the body is malformed, truncated or
    larger than ``max_bytes``; nothing stays staged then. On success the
    caller owns the files (and removes those it does not store).
    """
    writer = _PartWriter(store)
    parser = MultipartParser(boundary, writer.callbacks())  # type: ignore[arg-type]
    received = 0
    pending = bytearray()
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise DicomInputError(
                    f"the STOW-RS body is larger than the hub accepts ({max_bytes} bytes); "
                    "send the study in several requests"
                )
            pending += chunk
            if len(pending) >= _BATCH:
                await run_in_threadpool(parser.write, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(parser.write, bytes(pending))
        parser.finalize()
    except MultipartParseError as exc:
        writer.discard()
        raise DicomInputError(f"the STOW-RS body is not valid multipart/related: {exc}") from exc
    except BaseException:
        writer.discard()
        raise
    if not writer.finished:
        writer.discard()
        raise DicomInputError("the STOW-RS body ended before its closing boundary; send it again")
    logger.debug("received %d parts, %d bytes", len(writer.parts), received)
    return writer.parts
