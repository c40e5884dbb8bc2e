"""Drawing the summary image of a result with Pillow: windowed key image, boxes, text.

Two steps, both plain functions on arrays:

* :func:`display_pixels` turns one frame of a DICOM image into 8-bit RGB the
  way a viewer would show it: Modality LUT (PS3.3 C.11.1), then the image's
  first window (PS3.3 C.11.2, linear), else its VOI LUT, else a 1st-99th
  percentile window; MONOCHROME1 inverted (PS3.3 C.7.6.3.1.2).
* :func:`render_page` lays out a page: an optional red banner (demo models),
  the key image scaled to the page width with boxes and points drawn and
  labelled, and the text lines under it.

Nothing here knows DICOM result objects; :mod:`aifi.results.sc` wraps the page.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from aifi.core.findings import Box

__all__ = ["PAGE_WIDTH", "display_pixels", "plain_punctuation", "render_page"]

logger = logging.getLogger(__name__)

PAGE_WIDTH = 1024
"""Width in pixels of a rendered page; the key image is scaled to it."""

_MARGIN = 16
_BANNER_HEIGHT = 64
_BOX_COLOUR = (255, 200, 0)
_BANNER_COLOUR = (200, 0, 0)
_TEXT_COLOUR = (255, 255, 255)
_POINT_RADIUS = 14
_ASCII_PUNCTUATION = str.maketrans(
    {"\u2014": "-", "\u2013": "-", "\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'}
)


def plain_punctuation(text: str) -> str:
    """``text`` with dashes and quotes as ASCII: the glyphs every font and viewer has."""
    return text.translate(_ASCII_PUNCTUATION)


def display_pixels(ds: pydicom.Dataset, frame_number: int | None = None) -> np.ndarray:
    """One frame of ``ds`` (1-based ``frame_number``) as an 8-bit RGB array (rows, columns, 3)."""
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[(frame_number or 1) - 1]
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return _to_uint8(pixels.astype(np.float64)).reshape(*pixels.shape[:2], 3)
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    window = _window(ds)
    if window is not None:
        centre, width = window
        # PS3.3 C.11.2.1.2.1, linear function, output scaled to [0, 1]
        scaled = np.clip((values - (centre - 0.5)) / max(width - 1.0, 1.0) + 0.5, 0.0, 1.0)
    else:
        if "VOILUTSequence" in ds:
            values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
            low, high = float(values.min()), float(values.max())
        else:
            low, high = (float(v) for v in np.percentile(values, [1.0, 99.0]))
        scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    grey = np.round(scaled * 255).astype(np.uint8)
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def _window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The image's first Window Center and Width (PS3.3 C.11.2), if it has a usable one."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    if isinstance(centre, MultiValue):
        centre = centre[0]
    if isinstance(width, MultiValue):
        width = width[0]
    if float(width) < 1:
        return None
    return float(centre), float(width)


def render_page(
    image: np.ndarray | None,
    boxes: Sequence[Box],
    lines: Sequence[str],
    *,
    banner: str | None = None,
) -> np.ndarray:
    """A page (rows, PAGE_WIDTH, 3) of 8-bit RGB: banner, key image with boxes, text lines.

    ``image`` is an RGB array from :func:`display_pixels` (or None for a page
    of text only); ``boxes`` are in its pixel coordinates.
    """
    font = ImageFont.load_default(size=22)
    label_font = ImageFont.load_default(size=20)
    wrapped = [
        part for line in lines for part in textwrap.wrap(plain_punctuation(line), 80) or [""]
    ]
    line_height = 30
    text_height = 2 * _MARGIN + line_height * len(wrapped)
    top = _BANNER_HEIGHT if banner else 0
    picture = _scaled(image) if image is not None else None
    picture_height = picture.height if picture is not None else 0
    page = Image.new("RGB", (PAGE_WIDTH, top + picture_height + text_height), (0, 0, 0))
    draw = ImageDraw.Draw(page)
    if banner:
        draw.rectangle((0, 0, PAGE_WIDTH - 1, _BANNER_HEIGHT - 1), fill=_BANNER_COLOUR)
        banner_font = ImageFont.load_default(size=32)
        width = draw.textlength(banner, font=banner_font)
        draw.text(
            ((PAGE_WIDTH - width) / 2, _BANNER_HEIGHT / 2),
            banner,
            font=banner_font,
            fill=_TEXT_COLOUR,
            anchor="lm",
        )
    if picture is not None and image is not None:
        page.paste(picture, ((PAGE_WIDTH - picture.width) // 2, top))
        scale = picture.width / image.shape[1]
        offset = ((PAGE_WIDTH - picture.width) // 2, top)
        for box in boxes:
            _draw_box(draw, box, scale, offset, label_font)
    y = top + picture_height + _MARGIN
    for line in wrapped:
        draw.text((_MARGIN, y), line, font=font, fill=_TEXT_COLOUR)
        y += line_height
    return np.asarray(page, dtype=np.uint8)


def _scaled(image: np.ndarray) -> Image.Image:
    """The image scaled to fit PAGE_WIDTH wide and at most PAGE_WIDTH high."""
    picture = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    scale = min(PAGE_WIDTH / picture.width, PAGE_WIDTH / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS)


def _draw_box(
    draw: ImageDraw.ImageDraw,
    box: Box,
    scale: float,
    offset: tuple[int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    x0, x1 = sorted((box.x0 * scale + offset[0], box.x1 * scale + offset[0]))
    y0, y1 = sorted((box.y0 * scale + offset[1], box.y1 * scale + offset[1]))
    if x0 == x1 and y0 == y1:
        r = _POINT_RADIUS
        draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), outline=_BOX_COLOUR, width=3)
        draw.line((x0 - r / 2, y0, x0 + r / 2, y0), fill=_BOX_COLOUR, width=2)
        draw.line((x0, y0 - r / 2, x0, y0 + r / 2), fill=_BOX_COLOUR, width=2)
        x0, y0 = x0 - r, y0 - r
    else:
        draw.rectangle((x0, y0, x1, y1), outline=_BOX_COLOUR, width=3)
    label = plain_punctuation(f"{box.label} {box.score:.2f}")
    left, top, right, bottom = draw.textbbox((x0, y0 - 4), label, font=font, anchor="lb")
    if top < offset[1]:  # no room above the box: write inside it
        left, top, right, bottom = draw.textbbox((x0 + 4, y0 + 4), label, font=font, anchor="lt")
    shift = min(0.0, PAGE_WIDTH - 4 - right)  # keep the label on the page
    left, right = left + shift, right + shift
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((left, top), label, font=font, fill=_BOX_COLOUR, anchor="lt")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= 255 and low >= 0:
        return values.astype(np.uint8)
    return np.round((values - low) / max(high - low, 1e-9) * 255).astype(np.uint8)
