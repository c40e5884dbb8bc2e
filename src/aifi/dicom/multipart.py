"""multipart/related bodies of DICOMweb, written and read as streams (PS3.18 §8.6.1.2).

STOW-RS requests and WADO-RS responses carry DICOM objects as the parts of
a ``multipart/related`` body (RFC 2387), each part delimited by the
boundary (RFC 2046 §5.1.1) and typed by its Content-Type. Neither side
holds a body whole:

* :func:`write_parts` yields the body chunk by chunk from iterables of
  chunks (:func:`file_chunks` reads a file in 1 MiB pieces), so a study of
  any size goes out in bounded memory;
* :class:`MultipartReader` is fed the body as it arrives (python-multipart's
  low-level parser) and writes each part's bytes into a sink the caller
  opens, a staged file for the hub; the caller gets each part as soon as
  its closing delimiter has been read.

A body that is not multipart/related, lacks its boundary or ends before the
closing delimiter is a :class:`MultipartError` (a
:class:`~aifi.core.errors.DicomInputError`) that says so.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from aifi.core.errors import DicomInputError

__all__ = [
    "CHUNK_BYTES",
    "DICOM_MEDIA_TYPE",
    "BodyPart",
    "MultipartError",
    "MultipartReader",
    "boundary_of",
    "coalesced",
    "content_type",
    "dicom_files",
    "file_chunks",
    "handle_chunks",
    "new_boundary",
    "split",
    "write_parts",
]

DICOM_MEDIA_TYPE = "application/dicom"
#: Bytes per chunk read from a file into a body.
CHUNK_BYTES = 1 << 20

S = TypeVar("S")


class MultipartError(DicomInputError):
    """A body (or its Content-Type) is not the multipart/related it should be."""


def new_boundary() -> str:
    """A fresh boundary: 32 hex digits, which no DICOM object is likely to contain."""
    return secrets.token_hex(16)


def content_type(boundary: str, part_type: str = DICOM_MEDIA_TYPE) -> str:
    """The Content-Type of a body of ``part_type`` parts (PS3.18 §8.6.1.2)."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def boundary_of(header: str | None, part_type: str | None = DICOM_MEDIA_TYPE) -> bytes:
    """The boundary of a ``multipart/related`` Content-Type whose ``type`` is ``part_type``.

    A missing ``type`` parameter is taken as ``part_type``; ``part_type``
    None accepts any. Raises :class:`MultipartError` naming what is wrong.
    """
    wanted = f'multipart/related; type="{part_type or "..."}"'
    if not header:
        raise MultipartError(f"no Content-Type: the body must be {wanted}")
    media_type, params = parse_options_header(header)
    if media_type.decode("latin-1").lower() != "multipart/related":
        raise MultipartError(f"the body must be {wanted}, not {media_type.decode('latin-1')!r}")
    if part_type is not None:
        given = params.get(b"type", part_type.encode()).decode("latin-1").lower()
        if given != part_type:
            raise MultipartError(f"the parts must be {part_type}, not {given}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("the multipart/related Content-Type has no boundary parameter")
    return bytes(boundary)


def file_chunks(path: Path, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of the file at ``path``, ``size`` at a time (opened when iterated)."""
    with Path(path).open("rb") as handle:
        yield from handle_chunks(handle, size)


def handle_chunks(handle: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The rest of an open binary file, ``size`` bytes at a time."""
    while chunk := handle.read(size):
        yield chunk


def write_parts(parts: Iterable[tuple[str, Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """A multipart/related body of ``(Content-Type, chunks)`` parts (RFC 2046 §5.1.1).

    Each part's chunks are consumed only when the body reaches them.
    """
    for part_type, chunks in parts:
        yield f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode("ascii")
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def coalesced(pieces: Iterable[bytes], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """``pieces`` joined into chunks of at least ``size`` bytes (the last may be smaller).

    A body of many small pieces (boundaries, headers, small objects) costs
    its sender one write, or one pull from a pool thread, per piece; memory
    stays below ``size`` plus one piece.
    """
    buffered: list[bytes] = []
    held = 0
    for piece in pieces:
        buffered.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(buffered)
            buffered, held = [], 0
    if buffered:
        yield b"".join(buffered)


def dicom_files(paths: Iterable[Path], boundary: str) -> Iterator[bytes]:
    """The files as an ``application/dicom`` body (a STOW-RS request, PS3.18 §10.5.1.2)."""
    return write_parts(((DICOM_MEDIA_TYPE, file_chunks(path)) for path in paths), boundary)


@dataclass
class BodyPart(Generic[S]):
    """One part read: the sink its bytes went to, its media type (no parameters), its headers."""

    sink: S
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


class MultipartReader(Generic[S]):
    """Reads a multipart body fed in chunks; each part's bytes go to a sink of its own.

    ``open_part()`` gives the sink of a new part; ``write(sink, data)`` puts
    bytes into it (default: ``sink.write``); ``close_part(sink)`` is called
    when the part's closing delimiter is read. Nothing of the body is kept
    here beyond the parser's own small buffer.
    """

    def __init__(
        self,
        boundary: bytes,
        open_part: Callable[[], S],
        *,
        write: Callable[[S, bytes], object] | None = None,
        close_part: Callable[[S], object] | None = None,
    ) -> None:
        self._open_part = open_part
        self._write = write or (lambda sink, data: sink.write(data))  # type: ignore[attr-defined]
        self._close_part = close_part or (lambda sink: None)
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )
        #: the sink of the part being read, if one is
        self.current: S | None = None
        #: every part read to its end, in order
        self.parts: list[BodyPart[S]] = []
        #: whether the closing delimiter was read
        self.finished = False
        self._ready: list[BodyPart[S]] = []
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()

    def feed(self, data: bytes) -> list[BodyPart[S]]:
        """Parse ``data``; the parts that ended in it."""
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            raise MultipartError(f"the body is not valid multipart/related: {exc}") from exc
        ready, self._ready = self._ready, []
        return ready

    def close(self) -> None:
        """The body ended: :class:`MultipartError` unless its closing delimiter was read."""
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise MultipartError(f"the body is not valid multipart/related: {exc}") from exc
        if not self.finished:
            raise MultipartError("the body ended before its closing boundary; send it again")

    # -- python-multipart's callbacks ----------------------------------------------------
    def _on_part_begin(self) -> None:
        self.current = self._open_part()
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self.current is not None
        self._write(self.current, data[start:end])

    def _on_part_end(self) -> None:
        assert self.current is not None
        sink, self.current = self.current, None
        self._close_part(sink)
        media_type, _ = parse_options_header(self._headers.get("content-type", ""))
        part = BodyPart(sink, media_type.decode("latin-1").lower(), self._headers)
        self.parts.append(part)
        self._ready.append(part)

    def _on_end(self) -> None:
        self.finished = True


def split(body: bytes, boundary: bytes) -> list[bytes]:
    """The payloads of a body already in memory (a small WADO-RS response)."""
    reader: MultipartReader[BytesIO] = MultipartReader(boundary, BytesIO)
    reader.feed(body)
    reader.close()
    return [part.sink.getvalue() for part in reader.parts]
