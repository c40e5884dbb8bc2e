"""The pseudonymizer the edge and ``aifi pseudonymize`` call: one instance in, one out.

PS3.15 Annex E Basic Application Level Confidentiality Profile with the
options of :class:`~aifi.deid.options.DeidOptions`, data minimisation per
algorithm (``keep``), keyed pseudonyms (:mod:`aifi.deid.keys`) and the
Clean Pixel Data policy (:mod:`aifi.deid.pixels`). ``pseudonymize_file``
rewrites the encoded header (:mod:`aifi.deid.engine`) and copies the pixel
data untouched (:mod:`aifi.deid.filecopy`); it never decodes pixels.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import mmap
import os
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aifi.deid.descriptors import Vocabulary
from aifi.deid.encoding import inflate_bounded
from aifi.deid.engine import ProfileRun, resolve_keep
from aifi.deid.filecopy import copy_range, copy_swapped, temp_path
from aifi.deid.options import DeidOptions
from aifi.deid.pixels import burned_in_text_reason
from aifi.dicom.encode import SWAP_WIDTH, element_header, swap
from aifi.dicom.part10 import file_meta, read_file_meta
from aifi.dicom.walker import Element, NeedMoreData, Walker, WalkError, looks_implicit
from aifi.errors import ConfigError, DicomInputError, PseudonymizationError

__all__ = ["PseudonymizedInstance", "Pseudonymizer"]

logger = logging.getLogger(__name__)

_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class PseudonymizedInstance:
    """What came out of pseudonymizing one instance.

    ``uid_map`` maps every original UID that was replaced (top level and
    nested) to its pseudonymous UID; the edge stores it in its
    :class:`~aifi.deid.pseudomap.PseudonymMap`. ``dataset`` is set by
    :meth:`Pseudonymizer.pseudonymize_dataset` only.
    """

    uid_map: dict[str, str]
    patient_pseudonym: str
    dataset: pydicom.Dataset | None
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str = ""


@dataclass(frozen=True)
class _Output:
    meta_and_header: bytes
    pixel: Element | None
    result: PseudonymizedInstance
    tail: bytes = b""  # pixel data already in memory (deflated files)
    pixel_header: bytes = b""  # big endian source: the pixel data's new header ...
    swap_width: int = 0  # ... and the width of the numbers whose bytes are reversed


class _NotPlain(Exception):
    """The file needs pydicom's tolerance (no File Meta Information, VR mislabelled)."""


#: How much of a file is read before the header is parsed; larger headers map the file.
_HEAD_BYTES = 64 * 1024


class Pseudonymizer:
    """Pseudonymize instances for one hospital (its ``key``) and one use (``options``, ``keep``).

    ``keep`` are attribute keywords an algorithm's manifest needs (data
    minimisation): they are kept although the profile would remove them.
    ``PatientAge`` kept means it is computed from birth and study dates when
    absent; the birth date itself is never sent. ``known_clean_pixels`` says
    the source's images carry no burned-in text (Burned In Annotation YES is
    refused even then). ``vocabulary`` is the set of words a cleaned text may
    keep (:func:`aifi.deid.descriptors.load_vocabulary`; the packaged one by
    default): every kept text attribute is reduced to it.
    """

    def __init__(
        self,
        key: bytes,
        *,
        options: DeidOptions | None = None,
        keep: Iterable[str] = (),
        known_clean_pixels: bool = False,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) < 16:
            raise ConfigError("key must be at least 16 bytes; use load_or_create_key(path)")
        self._key = bytes(key)
        self.options = options or DeidOptions()
        self.keep = tuple(keep)
        self._keep_tags = resolve_keep(self.keep)
        self.known_clean_pixels = known_clean_pixels
        self.vocabulary = vocabulary
        self._decisions: dict[int, str] = {}

    # -- files -----------------------------------------------------------------
    def pseudonymize_file(
        self, src: Path, dst: Path, *, atomic: bool = True
    ) -> PseudonymizedInstance:
        """Write the pseudonymized ``src`` to ``dst``; pixel data copied, not parsed.

        With ``atomic`` (the default) the file is written beside ``dst`` and
        renamed onto it, so ``dst`` is either complete or absent; a caller that
        stages files itself may pass ``atomic=False``.

        Raises :class:`~aifi.errors.PseudonymizationError` when the instance
        must not leave (burned-in text, ...) and
        :class:`~aifi.errors.DicomInputError` when ``src`` is not usable DICOM.
        """
        src, dst = Path(src), Path(dst)
        part = temp_path(dst) if atomic else dst
        written = False
        try:
            with src.open("rb") as fp:
                size = os.fstat(fp.fileno()).st_size
                head = fp.read(_HEAD_BYTES)
                try:
                    output = self._rewrite_file(head, size, fp)
                except RecursionError:
                    raise PseudonymizationError(
                        f"{src.name}: its sequences are nested too deeply to be walked safely"
                    ) from None
                except WalkError as exc:
                    if exc.problem != "too-deep":
                        raise
                    raise PseudonymizationError(
                        f"{src.name}: its sequences are nested too deeply to be walked safely"
                    ) from None
                except _NotPlain:
                    if head[128:132] != b"DICM" and head[:2] not in (b"\x08\x00", b"\x02\x00"):
                        raise DicomInputError(f"{src.name} is not a DICOM file") from None
                    result = self._via_pydicom(src, dst, part)
                    written = True
                    return result
                with _create(part) as out:
                    out.write(output.meta_and_header)
                    if output.tail:
                        out.write(output.tail)
                    elif output.pixel is not None and output.pixel_header:
                        out.write(output.pixel_header)
                        length = output.pixel.vend - output.pixel.vstart
                        copy_swapped(fp, out, output.pixel.vstart, length, output.swap_width)
                    elif output.pixel is not None:
                        length = output.pixel.vend - output.pixel.start
                        copy_range(fp, out, output.pixel.start, length)
            if atomic:
                part.replace(dst)
            written = True
            return output.result
        finally:
            if not written:
                part.unlink(missing_ok=True)

    def _rewrite_file(self, head: bytes, size: int, fp: BinaryIO) -> _Output:
        """Rewrite from the file's head; map the whole file only when the head is not enough."""
        try:
            start, transfer_syntax = read_file_meta(head)
        except DicomInputError:
            raise _NotPlain from None
        implicit = transfer_syntax == ImplicitVRLittleEndian
        if transfer_syntax == _DEFLATED:
            rest = head[start:] + fp.read()
            inflated = inflate_bounded(rest)
            output = self._rewrite(Walker(inflated, implicit=False), 0, transfer_syntax)
            pixel = output.pixel
            tail = inflated[pixel.start : pixel.vend] if pixel else b""
            return _Output(output.meta_and_header, None, output.result, tail)
        if transfer_syntax != _BIG_ENDIAN and looks_implicit(head, start) != implicit:
            raise _NotPlain  # an implicit VR dataset labelled explicit, or the reverse
        big = transfer_syntax == _BIG_ENDIAN
        try:
            reader = Walker(head, implicit=implicit, size=size, big_endian=big)
            return self._rewrite(reader, start, transfer_syntax)
        except NeedMoreData:
            with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                reader = Walker(mm, implicit=implicit, big_endian=big)
                return self._rewrite(reader, start, transfer_syntax)

    def _via_pydicom(self, src: Path, dst: Path, part: Path) -> PseudonymizedInstance:
        """Files pydicom reads with tolerance (no File Meta Information, VR mislabelled).

        pydicom parses the whole file and re-encodes it as its transfer syntax
        says; the engine then runs on that. Slower, and rare.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns about what it tolerates
                ds = pydicom.dcmread(src, force=True)
                for _ in ds.iterall():  # decode every raw element so it can be re-encoded
                    pass
            ds.SOPInstanceUID  # noqa: B018 - a non-DICOM file read with force has none
        except (
            InvalidDicomError,
            AttributeError,
            EOFError,
            ValueError,
            OSError,
            KeyError,
            NotImplementedError,
            struct.error,
        ) as exc:
            raise DicomInputError(f"{src.name} is not a DICOM file") from exc
        result = self.pseudonymize_dataset(ds)
        assert result.dataset is not None
        buffer = io.BytesIO()
        result.dataset.save_as(buffer, enforce_file_format=True)
        _write(part, buffer.getvalue())
        part.replace(dst)
        return dataclasses.replace(result, dataset=None)

    # -- in memory -----------------------------------------------------------
    def pseudonymize_dataset(self, ds: pydicom.Dataset) -> PseudonymizedInstance:
        """Pseudonymize ``ds`` in memory; the result is in ``.dataset``, ``ds`` is not changed."""
        meta = getattr(ds, "file_meta", None)
        transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta else ""
        if not transfer_syntax:
            implicit = (
                bool(ds.original_encoding[0]) if ds.original_encoding[0] is not None else False
            )
            transfer_syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        big = transfer_syntax == _BIG_ENDIAN or ds.original_encoding[1] is False
        if big:
            transfer_syntax = _BIG_ENDIAN
        if transfer_syntax == _DEFLATED:
            transfer_syntax = ExplicitVRLittleEndian
        implicit = transfer_syntax == ImplicitVRLittleEndian
        if ds.original_encoding != (implicit, not big):
            for _ in ds.iterall():  # decode every raw element so pydicom can re-encode it
                pass
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = not big, implicit
        write_dataset(fp, ds)
        data = fp.getvalue()
        output = self._rewrite(Walker(data, implicit=implicit, big_endian=big), 0, transfer_syntax)
        pixel = output.pixel
        if pixel is None:
            tail = b""
        elif output.pixel_header:
            value = swap(data[pixel.vstart : pixel.vend], output.swap_width)
            tail = output.pixel_header + value
        else:
            tail = data[pixel.start : pixel.vend]
        out = pydicom.dcmread(io.BytesIO(output.meta_and_header + tail))
        return dataclasses.replace(output.result, dataset=out)

    # -- shared ------------------------------------------------------------------
    def _rewrite(self, reader: Walker, start: int, transfer_syntax: str) -> _Output:
        pixel_header, swap_width = b"", 0
        if transfer_syntax in (_DEFLATED, _BIG_ENDIAN):
            transfer_syntax = ExplicitVRLittleEndian  # what is written: inflated, little endian
        run = ProfileRun(
            self._key,
            self.options,
            self._keep_tags,
            decisions=self._decisions,
            vocabulary=self.vocabulary,
        )
        elements, pixel = run.top_level(reader, start)
        summary = run.summary(reader, elements)
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not summary.get(keyword):
                raise DicomInputError(
                    f"the instance has no {keyword}; it cannot be pseudonymized consistently. "
                    "Check the sending modality's configuration"
                )
        known_clean = self.known_clean_pixels or not self.options.clean_pixel_data
        reason = burned_in_text_reason(summary, known_clean=known_clean)
        if reason is not None:
            pseudo = run.map_uid(summary["SOPInstanceUID"])
            raise PseudonymizationError(f"instance {pseudo} is not sent: {reason}")
        header = run.rewrite(reader, elements)
        sop_instance = run.map_uid(summary["SOPInstanceUID"])
        sop_class = summary.get("SOPClassUID", "")
        result = PseudonymizedInstance(
            uid_map=dict(run.uid_map),
            patient_pseudonym=run.patient_pseudonym,
            dataset=None,
            sop_instance_uid=sop_instance,
            study_instance_uid=run.map_uid(summary["StudyInstanceUID"]),
            series_instance_uid=run.map_uid(summary["SeriesInstanceUID"]),
            sop_class_uid=sop_class,
        )
        if reader.big_endian and pixel is not None:
            if pixel.undefined:
                raise DicomInputError(
                    "encapsulated Pixel Data in a big endian file is not valid DICOM "
                    "(PS3.5 A.4); ask the sender for a little endian transfer syntax"
                )
            pixel_header = element_header(pixel.tag, pixel.vr, pixel.vend - pixel.vstart)
            swap_width = SWAP_WIDTH.get(pixel.vr, 1)
            bits = _bits_allocated(reader, elements)
            if pixel.tag == 0x7FE00010 and pixel.vr == "OW" and bits in (32, 64):
                swap_width = bits // 8  # numbers wider than OW's words (as pydicom reads them)
        meta = file_meta(sop_class, sop_instance, transfer_syntax)
        return _Output(meta + header, pixel, result, b"", pixel_header, swap_width)


def _bits_allocated(reader: Walker, elements: list[Element]) -> int | None:
    """Bits Allocated (0028,0100) of the top-level dataset, read in the reader's byte order."""
    for element in elements:
        if element.tag == 0x00280100 and element.vend - element.vstart == 2:
            value = reader.value(element)
            return int.from_bytes(value, "big" if reader.big_endian else "little")
    return None


def _create(path: Path) -> BinaryIO:
    """``path`` opened for writing, its folder created when missing."""
    try:
        return path.open("wb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("wb")


def _write(path: Path, data: bytes) -> None:
    with _create(path) as out:
        out.write(data)
