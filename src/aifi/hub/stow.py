"""Receive a STOW-RS request body part by part, straight to disk.

A STOW-RS request (PS3.18 §10.5.1) is ``multipart/related;
type="application/dicom"``; each part is one DICOM Part 10 file. The body is
fed from the request stream into :class:`aifi.dicom.multipart.MultipartReader`;
every part is written to a staged file as it arrives, so no instance is ever
held in memory whole. What is in each file is judged later
(:mod:`aifi.hub.ingest`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from starlette.concurrency import run_in_threadpool

from aifi.dicom.multipart import DICOM_MEDIA_TYPE, MultipartReader, boundary_of
from aifi.errors import DicomInputError
from aifi.hub.storage import ObjectStore

__all__ = ["DICOM_MEDIA_TYPE", "ReceivedPart", "receive_parts", "stow_boundary"]

logger = logging.getLogger(__name__)

_BATCH = 1024 * 1024  # bytes handed to the parser (and the disk) per thread hop
_Staged = tuple[IO[bytes], Path]


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
    return boundary_of(content_type, DICOM_MEDIA_TYPE)


def _discard(reader: MultipartReader[_Staged]) -> None:
    """Remove every staged file (the request failed as a whole)."""
    staged = [part.sink for part in reader.parts]
    if reader.current is not None:
        reader.current[0].close()
        staged.append(reader.current)
    for _file, path in staged:
        path.unlink(missing_ok=True)


async def receive_parts(
    chunks: AsyncIterator[bytes], boundary: bytes, store: ObjectStore, *, max_bytes: int
) -> list[ReceivedPart]:
    """Stream a multipart body into staged files, one per part.

    Raises :class:`DicomInputError` when the body is malformed, truncated or
    larger than ``max_bytes``; nothing stays staged then. On success the
    caller owns the files (and removes those it does not store).
    """
    reader: MultipartReader[_Staged] = MultipartReader(
        boundary,
        store.new_temporary,
        write=lambda staged, data: staged[0].write(data),
        close_part=lambda staged: staged[0].close(),
    )
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
                await run_in_threadpool(reader.feed, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(reader.feed, bytes(pending))
        reader.close()
    except BaseException:  # a MultipartError (a DicomInputError) says what is wrong
        _discard(reader)
        raise
    logger.debug("received %d parts, %d bytes", len(reader.parts), received)
    return [ReceivedPart(part.sink[1], part.media_type) for part in reader.parts]
