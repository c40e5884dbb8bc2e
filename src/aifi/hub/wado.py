"""WADO-RS transfer syntax negotiation and transcoding, and ``/metadata`` (PS3.18 §10.4, §8.7).

A retrieval's Accept header lists ``multipart/related; type="application/dicom"``
entries, each with an optional ``transfer-syntax`` parameter (PS3.18
§8.7.3.5.2): none means Explicit VR Little Endian, ``*`` means whatever is
stored, and a UID asks for that syntax. :func:`negotiate` turns the header
into the ordered list of syntaxes the client takes; :func:`plan` picks, per
object, the first of those it is stored in or that pydicom can transcode it
to (decoding with pylibjpeg, encoding with pydicom's own RLE or its
pylibjpeg-openjpeg/pyjpegls encoders, lossless only); where none fits the
request is 406 (:class:`NotAcceptable`). A transcoded object is written to
a staged file and streamed from it, one object at a time.

Metadata (PS3.18 §10.4.1.1.2) is each header as DICOM JSON (PS3.18 Annex F)
with bulk data left out: Pixel Data and any long binary value become a
BulkDataURI, which :func:`bulkdata` answers (PS3.18 §10.4.1.1.5) as
uncompressed little-endian octets, decompressing encapsulated pixel data.

Frames (PS3.18 §10.4, Retrieve Frames) are sent one part per frame: native
little-endian octets (``application/octet-stream``, decoded one frame at a
time where stored compressed), or the stored bitstream of one frame in its
own media type (``image/jp2``, ``image/jls``, ... PS3.18 §8.7.3) when the
Accept header asks for it. Only the frames asked for are read: at their
offset in native pixel data, through the offset tables of encapsulated
pixel data. :func:`decoded_frame` gives one decoded frame to
:mod:`aifi.hub.rendered`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, get_encoder, pack_bits, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from python_multipart.multipart import parse_options_header

from aifi.dicom.multipart import coalesced, write_parts
from aifi.errors import AifiError
from aifi.hub.storage import ObjectStore, iter_file

__all__ = [
    "AS_STORED",
    "FRAME_MEDIA_TYPES",
    "FrameError",
    "FramePlan",
    "NotAcceptable",
    "Planned",
    "bulkdata",
    "decoded_frame",
    "frames_body",
    "metadata",
    "multipart_body",
    "negotiate",
    "parse_frame_list",
    "plan",
    "plan_frames",
    "transcoded",
]

AS_STORED = "*"
DICOM_MEDIA_TYPE = "application/dicom"
_UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_ENCODABLE = {JPEG2000Lossless, JPEGLSLossless, RLELossless}
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_BULK_THRESHOLD = 1024
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


class NotAcceptable(AifiError):
    """No representation the Accept header allows can be produced (HTTP 406)."""


@dataclass(frozen=True)
class Planned:
    """One object to send: its storage key, stored syntax and the syntax it goes out in."""

    key: str
    stored: str
    target: str

    @property
    def as_stored(self) -> bool:
        return self.target == self.stored


def negotiate(accept: str | None) -> list[str]:
    """The transfer syntaxes an Accept header takes, best first (PS3.18 §8.7.3.5).

    No Accept, ``*/*`` or ``multipart/*`` leave the choice to the hub (as
    stored); :class:`NotAcceptable` when no entry asks for DICOM parts.
    """
    if not accept:
        return [AS_STORED]
    ranked: list[tuple[float, int, str]] = []
    for position, entry in enumerate(accept.split(",")):
        media, params = parse_options_header(entry.strip())
        media_type = media.decode("latin-1").lower()
        options = {k.decode().lower(): v.decode("latin-1") for k, v in params.items()}
        try:
            quality = float(options.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality <= 0:
            continue
        if media_type in ("*/*", "multipart/*"):
            syntax = AS_STORED
        elif media_type == "multipart/related" and options.get(
            "type", DICOM_MEDIA_TYPE
        ).lower() in (
            DICOM_MEDIA_TYPE,
            "application/*",
        ):
            syntax = options.get("transfer-syntax", ExplicitVRLittleEndian).strip()
        else:
            continue
        ranked.append((-quality, position, syntax))
    if not ranked:
        raise NotAcceptable('this hub returns multipart/related; type="application/dicom" only')
    return [syntax for _, _, syntax in sorted(ranked)]


def _can_transcode(stored: str, target: str, has_pixels: bool) -> bool:
    if target == stored:
        return True
    if target not in _UNCOMPRESSED | _ENCODABLE:
        return False
    if not has_pixels:
        return target in _UNCOMPRESSED and UID(stored) in _UNCOMPRESSED | {
            pydicom.uid.DeflatedExplicitVRLittleEndian
        }
    if UID(stored).is_compressed and not get_decoder(stored).is_available:
        return False
    return target in _UNCOMPRESSED or get_encoder(target).is_available


def plan(store: ObjectStore, keys: list[str], syntaxes: list[str]) -> list[Planned]:
    """For each object, the syntax it is sent in; :class:`NotAcceptable` if one has none."""
    planned = []
    for key in keys:
        with store.materialize(key) as path:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            stored = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
            has_pixels = "Rows" in ds and "Columns" in ds
        for syntax in syntaxes:
            target = stored if syntax == AS_STORED else syntax
            if _can_transcode(stored, target, has_pixels):
                planned.append(Planned(key, stored, target))
                break
        else:
            raise NotAcceptable(
                f"an object stored as {stored} cannot be sent in any of the transfer syntaxes "
                f"asked for ({', '.join(syntaxes)}); ask for {ExplicitVRLittleEndian} "
                "(Explicit VR Little Endian) or transfer-syntax=*"
            )
    return planned


@contextlib.contextmanager
def transcoded(store: ObjectStore, planned: Planned) -> Iterator[IO[bytes]]:
    """The object in its target syntax, open for reading: the stored file, or a staged copy."""
    if planned.as_stored:
        with store.open(planned.key) as handle:
            yield handle
        return
    with store.materialize(planned.key) as path:
        ds = pydicom.dcmread(path)
    target = UID(planned.target)
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # to Explicit VR LE, with pylibjpeg
    if target in _ENCODABLE:
        ds.compress(target, generate_instance_uid=False)  # lossless only: same instance
    else:
        ds.file_meta.TransferSyntaxUID = target
    handle, staged = store.new_temporary()
    try:
        with handle:
            ds.save_as(handle, enforce_file_format=True)
        del ds
        with staged.open("rb") as reading:
            yield reading
    finally:
        staged.unlink(missing_ok=True)


def multipart_body(store: ObjectStore, planned: list[Planned], boundary: str) -> Iterator[bytes]:
    """A WADO-RS response body, one part per object, each part's syntax in its Content-Type.

    Pieces are joined up to a megabyte (:func:`aifi.dicom.multipart.coalesced`): the
    server pulls each piece of a plain iterator on a pool thread, so one small result is
    one pull, not five.
    """
    return coalesced(
        write_parts(
            (
                (f"{DICOM_MEDIA_TYPE}; transfer-syntax={item.target}", _object(store, item))
                for item in planned
            ),
            boundary,
        )
    )


def _object(store: ObjectStore, item: Planned) -> Iterator[bytes]:
    """One object's bytes in its planned transfer syntax, read when the body reaches it."""
    with transcoded(store, item) as handle:
        yield from iter_file(handle)


def metadata(store: ObjectStore, key: str, instance_url: str) -> dict[str, Any]:
    """One object's header as DICOM JSON, bulk data as BulkDataURI (PS3.18 §10.4.1.1.2)."""
    with store.materialize(key) as path:
        ds = pydicom.dcmread(path, defer_size=_BULK_THRESHOLD)
        result: dict[str, Any] = {}
        for tag in list(ds.keys()):
            raw = ds.get_item(tag, keep_deferred=True)
            vr = str(raw.VR) if raw is not None and raw.VR else ""
            if int(tag) in _PIXEL_TAGS or (
                vr in _BULK_VRS and raw is not None and raw.value is None
            ):
                result[f"{int(tag):08X}"] = {
                    "vr": vr or "OB",
                    "BulkDataURI": f"{instance_url}/bulkdata/{int(tag):08X}",
                }
                continue
            element: DataElement = ds[tag]
            result[f"{int(tag):08X}"] = element.to_json_dict(
                bulk_data_element_handler=lambda e: f"{instance_url}/bulkdata/{int(e.tag):08X}",
                bulk_data_threshold=_BULK_THRESHOLD,
            )
    return result


def bulkdata(store: ObjectStore, key: str, tag: int) -> bytes | None:
    """One element's value as uncompressed octets; None when the object has no such element.

    Encapsulated Pixel Data is decompressed (pylibjpeg) to the native form
    PS3.18 §8.7.3.3.2 gives ``application/octet-stream``. One element of
    one instance is held in memory, never a study.
    """
    with store.materialize(key) as path:
        ds = pydicom.dcmread(path, defer_size=_BULK_THRESHOLD)
        if tag not in ds:
            return None
        if tag == 0x7FE00010 and ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        value = ds[tag].value
    return value if isinstance(value, bytes) else None


# --- Frames (PS3.18 §10.4, Retrieve Frames; media types of bulk data, §8.7.3) ---------

#: The media type of each compressed syntax's frames (PS3.18 Table 8.7.3-4/-5).
FRAME_MEDIA_TYPES: dict[str, str] = {
    RLELossless: "image/dicom-rle",
    pydicom.uid.JPEGBaseline8Bit: "image/jpeg",
    pydicom.uid.JPEGExtended12Bit: "image/jpeg",
    pydicom.uid.JPEGLossless: "image/jpeg",
    pydicom.uid.JPEGLosslessSV1: "image/jpeg",
    JPEGLSLossless: "image/jls",
    pydicom.uid.JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
    pydicom.uid.JPEG2000: "image/jp2",
    pydicom.uid.JPEG2000MCLossless: "image/jpx",
    pydicom.uid.JPEG2000MC: "image/jpx",
}
_MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
OCTETS = "application/octet-stream"


class FrameError(AifiError):
    """A frame list that names no frame of the instance, or an instance without frames (400)."""


@dataclass(frozen=True)
class FramePlan:
    """Frames of one object to send: 0-based indexes, and whether as the stored bitstream."""

    key: str
    stored: str
    indexes: tuple[int, ...]
    as_stored: bool

    @property
    def part_type(self) -> str:
        """Each part's Content-Type: native octets, or the stored syntax's media type."""
        if not self.as_stored or not UID(self.stored).is_encapsulated:
            return f"{OCTETS}; transfer-syntax={ExplicitVRLittleEndian}"
        return f"{FRAME_MEDIA_TYPES[self.stored]}; transfer-syntax={self.stored}"


def parse_frame_list(text: str) -> list[int]:
    """The 1-based frame numbers of a ``{frameList}`` path segment (PS3.18 §10.4.1)."""
    numbers = []
    for item in text.split(","):
        if not item.strip().isdigit() or int(item) < 1:
            raise FrameError(
                f"frame list {text!r}: each frame number is a positive integer (1 is the first)"
            )
        numbers.append(int(item))
    return numbers


def _accepts_frames_as_stored(accept: str | None, stored: str) -> bool:
    """Whether the Accept header takes ``stored``'s compressed bitstream before native octets.

    Entries are ``multipart/related; type=...; transfer-syntax=...``, best
    q-value first. ``*/*``, ``type="*/*"`` or ``transfer-syntax=*`` take what
    is stored; ``type="application/octet-stream"`` takes native (Explicit VR
    Little Endian) octets; an image media type (``image/jp2``, ``image/jls``,
    ``image/dicom-rle``, ``image/jpeg``, ``image/jpx``) takes the stored
    bitstream of a syntax of that media type, and without ``transfer-syntax``
    any of them. :class:`NotAcceptable` when no entry can be met.
    """
    if not accept:
        return True
    ranked: list[tuple[float, int, bool]] = []
    stored_media = FRAME_MEDIA_TYPES.get(stored)
    decodable = not UID(stored).is_compressed or get_decoder(stored).is_available
    for position, entry in enumerate(accept.split(",")):
        media, params = parse_options_header(entry.strip())
        media_type = media.decode("latin-1").lower()
        options = {k.decode().lower(): v.decode("latin-1") for k, v in params.items()}
        try:
            quality = float(options.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality <= 0:
            continue
        part = media_type
        if media_type == "multipart/related":
            part = options.get("type", "*/*").lower()
        part = _MEDIA_ALIASES.get(part, part)
        syntax = options.get("transfer-syntax", "").strip()
        choice: bool | None = None
        if part in ("*/*", "multipart/*") or syntax == AS_STORED:
            choice = True
        elif part == OCTETS and syntax in ("", ExplicitVRLittleEndian):
            choice = False if decodable else None
        elif part in ("image/*", stored_media) and syntax in ("", stored):
            choice = True if stored_media else None
        if choice is not None:
            ranked.append((-quality, position, choice))
    if not ranked:
        kinds = f'type="{OCTETS}"' + (f' or type="{stored_media}"' if stored_media else "")
        raise NotAcceptable(
            f"the frames are stored as {stored} and can be sent as multipart/related; {kinds} only"
        )
    return sorted(ranked)[0][2]


def plan_frames(store: ObjectStore, key: str, frames: list[int], accept: str | None) -> FramePlan:
    """What :func:`frames_body` will send; :class:`FrameError` for a frame out of range."""
    with store.materialize(key) as path:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    stored = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    _check_frames(ds, frames)
    as_stored = _accepts_frames_as_stored(accept, stored)
    return FramePlan(key, stored, tuple(n - 1 for n in frames), as_stored)


def _check_frames(ds: pydicom.Dataset, frames: list[int]) -> None:
    """:class:`FrameError` unless the instance is an image with each of ``frames`` (1-based)."""
    if "Rows" not in ds or "Columns" not in ds:
        raise FrameError("the instance has no pixel data, so no frames")
    count = int(ds.get("NumberOfFrames") or 1)
    beyond = [n for n in frames if n > count]
    if beyond:
        raise FrameError(
            f"frame {beyond[0]} is out of range: the instance has {count} frame(s), numbered from 1"
        )


def frames_body(store: ObjectStore, plan: FramePlan, boundary: str) -> Iterator[bytes]:
    """A Retrieve Frames body, one part per frame, each read when the body reaches it."""
    return write_parts(((plan.part_type, [frame]) for frame in _frames(store, plan)), boundary)


def _frames(store: ObjectStore, plan: FramePlan) -> Iterator[bytes]:
    """Each planned frame's bytes, reading only that frame from the file where it can.

    Native little-endian pixel data is read at the frame's offset; an
    encapsulated frame is found through the Basic (or Extended) Offset Table
    with :func:`pydicom.encaps.get_frame`, and decoded with pydicom's pixel
    handlers (:func:`pydicom.pixels.pixel_array` with ``index``, one frame)
    when native octets were asked for.
    """
    syntax = UID(plan.stored)
    with store.materialize(plan.key) as path, path.open("rb") as handle:
        ds = pydicom.dcmread(handle, stop_before_pixels=True)
        start = handle.tell()
        raw_native = syntax in _UNCOMPRESSED and int(ds.BitsAllocated) % 8 == 0
        encapsulated = plan.as_stored and syntax.is_encapsulated
        if raw_native or encapsulated:
            _check_pixel_data(handle, syntax)
        for index in plan.indexes:
            if raw_native:
                size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                size *= int(ds.BitsAllocated) // 8
                handle.seek(start + _header_bytes(syntax) + index * size)
                yield handle.read(size)
            elif encapsulated:
                handle.seek(start + _header_bytes(syntax))  # at the Basic Offset Table item
                offsets = None
                if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
                    offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
                yield get_frame(
                    handle,
                    index,
                    extended_offsets=offsets,
                    number_of_frames=int(ds.get("NumberOfFrames") or 1),
                )
            else:
                yield _native_octets(ds, pixel_array(handle, index=index))


def _header_bytes(syntax: UID) -> int:
    return 8 if syntax.is_implicit_VR else 12


def _check_pixel_data(handle: IO[bytes], syntax: UID) -> None:
    """The element the handle is at is Pixel Data (7FE0,0010), not Float Pixel Data."""
    if handle.read(4) != b"\xe0\x7f\x10\x00":
        raise FrameError("the instance has no Pixel Data (7FE0,0010), so no frames")


def _native_octets(ds: pydicom.Dataset, frame: Any) -> bytes:
    """A decoded frame as the native little-endian octets of PS3.5 §8.1.1."""
    if int(ds.BitsAllocated) == 1:
        return pack_bits(frame)
    return bytes(frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes())


def decoded_frame(store: ObjectStore, key: str, number: int) -> tuple[pydicom.Dataset, Any]:
    """The header and frame ``number`` (1-based) decoded, colour as RGB, for rendering.

    Only that frame is read and decoded (:func:`pydicom.pixels.pixel_array`
    with ``index``); :class:`FrameError` when the instance has no such frame.
    """
    with store.materialize(key) as path:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        _check_frames(ds, [number])
        return ds, pixel_array(path, index=number - 1)
