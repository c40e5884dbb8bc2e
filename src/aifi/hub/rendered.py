"""Rendered images and thumbnails of WADO-RS (PS3.18 §10.4 rendered resources, §8.3.5).

A rendered instance (or frame) is a consumer image, JPEG by default or PNG,
made from one decoded frame (:func:`aifi.hub.wado.decoded_frame`) by the
grayscale pipeline of PS3.3 §C.11 (PS3.4 Annex N):

1. Modality LUT: Rescale Slope/Intercept or the Modality LUT Sequence
   (PS3.3 §C.11.1), with :func:`pydicom.pixels.apply_modality_lut`;
2. VOI: the ``window=center,width,function`` query parameter (PS3.18
   §8.3.5.1.5), else the header's first Window Center/Width with its VOI LUT
   Function, else its VOI LUT Sequence, else the frame's own range; the
   functions LINEAR, LINEAR_EXACT and SIGMOID of PS3.3 §C.11.2.1.2-3 map to
   8 bits;
3. MONOCHROME1 is inverted, so that white is always the highest value.

Colour frames (RGB; YBR decoded to RGB; PALETTE COLOR through its LUTs) are
passed through, scaled to 8 bits. ``viewport=vw,vh`` scales the image to fit
inside vw x vh, keeping its aspect ratio; ``quality`` (1-100) is the JPEG
quality. Query parameters this hub does not know (``annotation``,
``charset``, ...) are ignored, as PS3.18 §8.3 asks of an origin server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from python_multipart.multipart import parse_options_header

from aifi.errors import AifiError
from aifi.hub.wado import NotAcceptable

__all__ = [
    "JPEG",
    "PNG",
    "THUMBNAIL_VIEWPORT",
    "RenderError",
    "RenderParams",
    "choose_media_type",
    "render",
]

JPEG = "image/jpeg"
PNG = "image/png"
#: The size a thumbnail fits in when the request names no viewport.
THUMBNAIL_VIEWPORT = (128, 128)
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


class RenderError(AifiError):
    """A rendering query parameter whose value cannot be used (HTTP 400)."""


@dataclass(frozen=True)
class RenderParams:
    """The rendering query parameters of PS3.18 §8.3.5.1 this hub applies."""

    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90

    @classmethod
    def parse(
        cls, items: Iterable[tuple[str, str]], viewport: tuple[int, int] | None = None
    ) -> RenderParams:
        """From the query string; ``viewport`` is the default when it names none."""
        window = None
        quality = 90
        for name, value in items:
            if name == "window":
                window = _window(value)
            elif name == "viewport":
                viewport = _viewport(value)
            elif name == "quality":
                if not value.isdigit() or not 1 <= int(value) <= 100:
                    raise RenderError(f"quality={value!r}: give an integer from 1 to 100")
                quality = int(value)
        return cls(window, viewport, quality)


def _window(value: str) -> tuple[float, float, str]:
    parts = [p.strip() for p in value.split(",")]
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise RenderError(
            f"window={value!r}: give center,width[,function], e.g. window=40,400,linear"
        ) from None
    function = _FUNCTIONS.get(parts[2].lower() if len(parts) == 3 else "linear")
    if function is None:
        raise RenderError(f"window={value!r}: the function is linear, linear-exact or sigmoid")
    if width < 1 if function == "LINEAR" else width <= 0:
        raise RenderError(f"window={value!r}: the width must be at least 1 (PS3.3 C.11.2.1.2)")
    return center, width, function


def _viewport(value: str) -> tuple[int, int]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise RenderError(f"viewport={value!r}: give the width and height, e.g. viewport=512,512")
    return int(parts[0]), int(parts[1])


def choose_media_type(accept: str | None) -> str:
    """JPEG or PNG, as the Accept header prefers (JPEG for none or ``*/*``); else 406."""
    if not accept:
        return JPEG
    ranked: list[tuple[float, int, str]] = []
    for position, entry in enumerate(accept.split(",")):
        media, params = parse_options_header(entry.strip())
        media_type = media.decode("latin-1").lower()
        try:
            quality = float(params.get(b"q", b"1"))
        except ValueError:
            quality = 1.0
        chosen = {"*/*": JPEG, "image/*": JPEG, "image/": JPEG, JPEG: JPEG, PNG: PNG}
        if quality > 0 and media_type in chosen:
            ranked.append((-quality, position, chosen[media_type]))
    if not ranked:
        raise NotAcceptable(f"this hub renders images as {JPEG} or {PNG} only")
    return sorted(ranked)[0][2]


def render(ds: Dataset, frame: Any, params: RenderParams, media_type: str) -> bytes:
    """One decoded frame as a JPEG or PNG image, through the pipeline of the module docstring."""
    if int(ds.get("SamplesPerPixel", 1)) == 1 and ds.PhotometricInterpretation in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        pixels = _grayscale(ds, frame, params)
        image = Image.fromarray(pixels)  # 8-bit grayscale: mode L
    else:
        image = Image.fromarray(_colour(ds, frame))  # mode RGB
    if params.viewport is not None:
        image = _fit(image, params.viewport)
    out = BytesIO()
    if media_type == PNG:
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=params.quality)
    return out.getvalue()


def _grayscale(ds: Dataset, frame: Any, params: RenderParams) -> Any:
    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    if params.window is not None:
        center, width, function = params.window
        shown = _voi(values, center, width, function)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        shown = _voi(
            values,
            float(_first(ds.WindowCenter)),
            float(_first(ds.WindowWidth)),
            str(ds.get("VOILUTFunction", "LINEAR")).upper(),
        )
    elif "VOILUTSequence" in ds:
        indexes = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
        shown = _stretch(np.asarray(apply_voi(indexes, ds), dtype=np.float64))
    else:
        shown = _stretch(values)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 255.0 - shown
    return np.clip(np.rint(shown), 0, 255).astype(np.uint8)


def _first(value: Any) -> Any:
    """The first of a multi-valued Window Center/Width (PS3.3 C.11.2.1.2)."""
    return value[0] if isinstance(value, MultiValue | list) else value


def _voi(values: Any, center: float, width: float, function: str) -> Any:
    """The VOI LUT Functions of PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.1 (LINEAR_EXACT),
    C.11.2.1.3.2 (SIGMOID), with an output range of 0 to 255."""
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip(((values - center) / width + 0.5) * 255.0, 0, 255)
    width = max(width, 1.0)
    if width == 1.0:  # the step function C.11.2.1.2.1 degenerates to
        return np.where(values < center - 0.5, 0.0, 255.0)
    scaled = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(scaled, 0, 255)


def _stretch(values: Any) -> Any:
    """The frame's own range onto 0-255: no VOI was given or stored."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _colour(ds: Dataset, frame: Any) -> Any:
    """RGB at 8 bits: palette colour looked up, deeper samples scaled down."""
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        depth = 16 if frame.dtype.itemsize > 1 else 8
    else:
        depth = int(ds.get("BitsStored", 8))
    if frame.ndim == 2:
        frame = np.stack([frame] * 3, axis=-1)
    if depth > 8 or frame.dtype.itemsize > 1:
        scaled = frame.astype(np.float64) * (255.0 / (2**depth - 1))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frame, dtype=np.uint8)


def _fit(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    """Scaled to fit inside the viewport, aspect ratio kept (PS3.18 §8.3.5.1.3)."""
    scale = min(viewport[0] / image.width, viewport[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
