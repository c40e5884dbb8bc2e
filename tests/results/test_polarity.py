"""A presentation state shows the image with its own polarity (PS3.3 C.11.6 Presentation LUT).

Rendered with dcmtk's reference renderer ``dcmp2pgm``: the image alone, and
the image with the presentation state the hub makes (``-p gsps.dcm``). The
two renderings must agree (same mean, correlation near 1), and both must
have the image's polarity: on a MONOCHROME1 image high stored values are
dark, on a MONOCHROME2 image bright (PS3.3 C.7.6.3.1.2).

Images: RG3_UNCR.dcm from pydicom-data (a real CR, MONOCHROME1, via
``pydicom.data.get_testdata_file``), the hand phantom (CR, MONOCHROME1),
the forearm phantom (DX, MONOCHROME2), CT_small.dcm of pydicom's test files
(CT, MONOCHROME2).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from aifi.algorithms.base import Findings, ImageFinding
from aifi.results.gsps import build_gsps

from .helpers import MANIFEST, saved

pytestmark = pytest.mark.dcmtk


def pgm(path: Path) -> np.ndarray:
    """The pixels of a binary PGM (P5) file, 8 or 16 bit."""
    data = path.read_bytes()
    magic, width, height, maximum = data.split(maxsplit=4)[:4]
    assert magic == b"P5"
    columns, rows = int(width), int(height)
    dtype = np.dtype(">u2") if int(maximum) > 255 else np.dtype(np.uint8)
    pixels = np.frombuffer(data[-columns * rows * dtype.itemsize :], dtype=dtype)
    return pixels.reshape(rows, columns).astype(np.float64)


def rendered(image: Path, out: Path, gsps: Path | None = None) -> np.ndarray:
    if shutil.which("dcmp2pgm") is None:
        pytest.skip("dcmtk's dcmp2pgm is not installed")
    command = ["dcmp2pgm", *(["-p", str(gsps)] if gsps else []), str(image), str(out)]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    return pgm(out)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def real_cr(folder: Path) -> Path:
    path = Path(str(get_testdata_file("RG3_UNCR.dcm")))
    copy = folder / "cr.dcm"
    shutil.copy(path, copy)
    return copy


@pytest.mark.parametrize(
    ("image", "photometric"),
    [
        ("real CR", "MONOCHROME1"),
        ("hand", "MONOCHROME1"),
        ("radiographs", "MONOCHROME2"),
        ("CT_small", "MONOCHROME2"),
    ],
)
def test_the_presentation_state_keeps_the_image_polarity(
    image: str, photometric: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if image == "real CR":
        path = real_cr(tmp_path)
    elif image == "CT_small":
        path = Path(str(get_testdata_file("CT_small.dcm")))
    else:
        path = request.getfixturevalue(image)[0]
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.PhotometricInterpretation == photometric
    findings = Findings(summary="x", images=(ImageFinding(header.SOPInstanceUID),))
    (gsps,) = build_gsps(findings, MANIFEST, [header])
    state = saved(gsps, tmp_path, "gsps")

    alone = rendered(path, tmp_path / "alone.pgm")
    with_state = rendered(path, tmp_path / "with.pgm", state)

    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    assert with_state.shape == alone.shape == stored.shape
    print(
        f"{image} {photometric}: mean alone {alone.mean():.1f}, with GSPS {with_state.mean():.1f}"
    )
    assert abs(with_state.mean() - alone.mean()) < 0.05 * max(alone.mean(), 1.0)
    assert correlation(with_state, alone) > 0.95
    own = correlation(with_state, stored)
    assert own < -0.5 if photometric == "MONOCHROME1" else own > 0.5
    expected_shape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    assert pydicom.dcmread(state).PresentationLUTShape == expected_shape
