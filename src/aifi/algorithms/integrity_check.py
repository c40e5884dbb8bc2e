"""integrity-check: a non-AI algorithm that tests a new hospital connection.

It decodes every image it receives (all frames, compressed transfer syntaxes
too, through pydicom's pixel data handlers and pylibjpeg) and reports per
image a SHA-256 of the decoded pixel data, and for the study basic
statistics. The edge computes the same digest with :func:`pixel_digest` on
what it sent; equal digests prove that the pixel data crossed the connection
(pseudonymization, upload, any lossless transcoding) unchanged.

**What the SR holds, and its size.** Per image only what the edge compares:
a measurement group referencing the image with its digest (or, for an image
that does not decode, the reason). The statistics are study-level
measurements, pooled over every decoded pixel (:func:`pooled`); per image
they are in ``Findings.details["statistics"]``. Seven TID 300 measurements
per image made a 600-slice CT's SR 280 000 data elements, which the edge
parses to re-identify it (issue 12).

**Canonical bytes of the digest.** The decoded pixel data as pydicom ≥ 3
returns it with its default options (``pydicom.pixels.iter_pixels``: one
array per frame; Modality LUT *not* applied; YCbCr converted to RGB; colour
samples last), each frame as a C-order array of its dtype in little-endian
byte order, frames concatenated in frame order. This is exactly
``ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes("C")``,
computed one frame at a time so that large multi-frame images do not need
to fit in memory twice. Big- and little-endian encodings of the same values,
and lossless compressions of them, therefore have the same digest.

**Statistics and units.** Minimum, maximum, mean and (population) standard
deviation are of the stored values above, before Rescale Slope/Intercept:
they have no unit, UCUM ``1`` ("no units"). Rows and columns are counted in
UCUM ``{pixels}``, frames in ``{frames}`` (UCUM annotations, dimensionless).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import iter_pixels

from aifi.algorithms.base import (
    AlgorithmInput,
    Code,
    Findings,
    ImageFinding,
    Manifest,
    Measurement,
    instances_of,
)
from aifi.algorithms.codes import DECODING_FAILURE, PIXEL_DATA_INTEGRITY, PIXEL_DATA_SHA256
from aifi.errors import DicomInputError

__all__ = [
    "ALGORITHM",
    "MANIFEST",
    "IntegrityCheck",
    "PixelSummary",
    "pixel_digest",
    "pixel_summary",
]

logger = logging.getLogger(__name__)

MANIFEST = Manifest(
    id="integrity-check",
    version="1.0.0",
    name="Connection integrity check",
    vendor="aifi",
    intended_use=(
        "Test a hospital's connection to the hub: decode every image received and "
        "report a SHA-256 of its pixel data and basic statistics. Not for diagnosis."
    ),
    regulatory_status="not a medical device (connection test)",
    accepts=(),
    keep_attributes=(),
    produces=("sr",),
)

NO_UNITS = Code("1", "UCUM", "no units")
PIXELS = Code("{pixels}", "UCUM", "pixels")
FRAMES = Code("{frames}", "UCUM", "frames")

ROWS = Code("110910", "DCM", "Pixel Data Rows")
COLUMNS = Code("110911", "DCM", "Pixel Data Columns")
NUMBER_OF_FRAMES = Code("121140", "DCM", "Number of Frames")
MINIMUM = Code("255605001", "SCT", "Minimum")
MAXIMUM = Code("56851009", "SCT", "Maximum")
MEAN = Code("373098007", "SCT", "Mean")
STANDARD_DEVIATION = Code("386136009", "SCT", "Standard Deviation")

_DECODING_ERRORS = (
    AttributeError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    TypeError,
    ValueError,
)
"""What pydicom and its decoder plugins raise for pixel data they cannot decode."""


@dataclass(frozen=True)
class PixelSummary:
    """Digest and statistics of one image's decoded pixel data."""

    sha256: str
    rows: int
    columns: int
    frames: int
    minimum: float
    maximum: float
    mean: float
    standard_deviation: float

    def measurements(self) -> tuple[Measurement, ...]:
        """The statistics as TID 300 measurements with UCUM units."""
        return (
            Measurement(ROWS, self.rows, PIXELS),
            Measurement(COLUMNS, self.columns, PIXELS),
            Measurement(NUMBER_OF_FRAMES, self.frames, FRAMES),
            Measurement(MINIMUM, self.minimum, NO_UNITS),
            Measurement(MAXIMUM, self.maximum, NO_UNITS),
            Measurement(MEAN, self.mean, NO_UNITS),
            Measurement(STANDARD_DEVIATION, self.standard_deviation, NO_UNITS),
        )

    def statistics(self) -> dict[str, float | int]:
        """The statistics as plain values (``Findings.details``)."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "frames": self.frames,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "mean": self.mean,
            "standard_deviation": self.standard_deviation,
        }


def pooled(summaries: Sequence[PixelSummary]) -> tuple[Measurement, ...]:
    """Study-level statistics over every pixel of ``summaries`` (none: no measurements).

    Rows and Columns only when every image has the same; Number of Frames is
    the total; mean and (population) standard deviation are of all pixels
    together, weighted by each image's pixel count.
    """
    if not summaries:
        return ()
    counts = [s.rows * s.columns * s.frames for s in summaries]
    total = sum(counts)
    mean = sum(n * s.mean for n, s in zip(counts, summaries, strict=True)) / total
    squares = sum(
        n * (s.standard_deviation**2 + s.mean**2) for n, s in zip(counts, summaries, strict=True)
    )
    measurements: list[Measurement] = []
    if len({(s.rows, s.columns) for s in summaries}) == 1:
        measurements += [
            Measurement(ROWS, summaries[0].rows, PIXELS),
            Measurement(COLUMNS, summaries[0].columns, PIXELS),
        ]
    measurements += [
        Measurement(NUMBER_OF_FRAMES, sum(s.frames for s in summaries), FRAMES),
        Measurement(MINIMUM, min(s.minimum for s in summaries), NO_UNITS),
        Measurement(MAXIMUM, max(s.maximum for s in summaries), NO_UNITS),
        Measurement(MEAN, mean, NO_UNITS),
        Measurement(
            STANDARD_DEVIATION, math.sqrt(max(squares / total - mean * mean, 0.0)), NO_UNITS
        ),
    ]
    return tuple(measurements)


def pixel_digest(ds: pydicom.Dataset) -> str:
    """SHA-256 (lower-case hex) of the canonical bytes of the decoded pixel data.

    See the module docstring for the canonical bytes. Raises
    :class:`aifi.errors.DicomInputError` when the pixel data cannot be decoded.
    """
    digest = hashlib.sha256()
    for frame in _frames(ds):
        digest.update(frame.tobytes(order="C"))
    return digest.hexdigest()


def pixel_summary(ds: pydicom.Dataset) -> PixelSummary:
    """Digest and statistics of the decoded pixel data, in one pass over the frames."""
    digest = hashlib.sha256()
    frames = 0
    count = 0
    total = 0.0
    total_squares = 0.0
    minimum = math.inf
    maximum = -math.inf
    for frame in _frames(ds):
        digest.update(frame.tobytes(order="C"))
        values = frame.astype(np.float64, copy=False)
        frames += 1
        count += values.size
        total += float(values.sum())
        total_squares += float(np.square(values).sum())
        minimum = min(minimum, float(values.min()))
        maximum = max(maximum, float(values.max()))
    if not count:
        raise DicomInputError(
            f"instance {ds.get('SOPInstanceUID', '(no SOP Instance UID)')}: pixel data is empty"
        )
    mean = total / count
    variance = max(total_squares / count - mean * mean, 0.0)
    return PixelSummary(
        sha256=digest.hexdigest(),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=frames,
        minimum=minimum,
        maximum=maximum,
        mean=mean,
        standard_deviation=math.sqrt(variance),
    )


def _frames(ds: pydicom.Dataset) -> Iterator[np.ndarray]:
    """Each decoded frame, C-order, little-endian; decoding errors become DicomInputError."""
    sop_instance_uid = ds.get("SOPInstanceUID", "(no SOP Instance UID)")
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        for frame in iter_pixels(ds):
            yield np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<"))
    except _DECODING_ERRORS as exc:
        syntax = transfer_syntax.name if transfer_syntax is not None else "unknown"
        raise DicomInputError(
            f"instance {sop_instance_uid}: pixel data cannot be decoded "
            f"(transfer syntax {syntax}): {exc}"
        ) from exc


class IntegrityCheck:
    """Decode every image; per image a pixel data digest, for the study statistics."""

    manifest = MANIFEST

    def run(self, inputs: AlgorithmInput) -> Findings:
        """Decode each input; an image that does not decode is reported, not raised."""
        images: list[ImageFinding] = []
        digests: dict[str, str] = {}
        failures: dict[str, str] = {}
        summaries: dict[str, PixelSummary] = {}
        for instance in instances_of(inputs):
            try:
                ds = instance.read()
                summary = pixel_summary(ds)
            except (DicomInputError, InvalidDicomError, OSError) as exc:
                logger.warning("integrity-check: %s", exc)
                failures[instance.sop_instance_uid] = str(exc)
                images.append(
                    ImageFinding(instance.sop_instance_uid, texts=((DECODING_FAILURE, str(exc)),))
                )
                continue
            digests[instance.sop_instance_uid] = summary.sha256
            summaries[instance.sop_instance_uid] = summary
            images.append(
                ImageFinding(
                    instance.sop_instance_uid, texts=((PIXEL_DATA_SHA256, summary.sha256),)
                )
            )
        return Findings(
            summary=_summary(len(images), len(failures)),
            finding_type=PIXEL_DATA_INTEGRITY,
            images=tuple(images),
            measurements=pooled(list(summaries.values())),
            details={
                "digests": digests,
                "failures": failures,
                "statistics": {uid: s.statistics() for uid, s in summaries.items()},
            },
        )


def _summary(total: int, failed: int) -> str:
    if not failed:
        noun = "image" if total == 1 else "images"
        return f"{total} {noun} decoded, all digests computed"
    return (
        f"{total - failed} of {total} images decoded; {failed} could not be decoded "
        "(see the per-image results)"
    )


ALGORITHM = IntegrityCheck()
"""The instance the registry offers."""
