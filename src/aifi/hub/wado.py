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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from python_multipart.multipart import parse_options_header

from aifi.dicom.multipart import write_parts
from aifi.errors import AifiError
from aifi.hub.storage import ObjectStore, iter_file

__all__ = [
    "AS_STORED",
    "NotAcceptable",
    "Planned",
    "bulkdata",
    "metadata",
    "multipart_body",
    "negotiate",
    "plan",
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
    """A WADO-RS response body, one part per object, each part's syntax in its Content-Type."""
    return write_parts(
        (
            (f"{DICOM_MEDIA_TYPE}; transfer-syntax={item.target}", _object(store, item))
            for item in planned
        ),
        boundary,
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
