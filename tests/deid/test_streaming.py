"""Pixel data is streamed, never decoded; what follows it is dropped; memory stays flat."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pydicom
from deid_support import KEY, make_instance, write
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from aifi.deid import Pseudonymizer, check_deidentified
from aifi.deid.testcorpus import radiograph


def test_trailing_padding_and_signatures_after_pixel_data_are_dropped(tmp_path: Path) -> None:
    ds = make_instance()
    ds.add_new(0xFFFCFFFC, "OB", b"Doe^Jane padding")  # Data Set Trailing Padding
    src = write(ds, tmp_path / "in.dcm")
    assert b"Doe^Jane padding" in src.read_bytes()
    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    raw = (tmp_path / "out.dcm").read_bytes()
    assert b"Doe^Jane padding" not in raw
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.PixelData == ds.PixelData and 0xFFFCFFFC not in out


def test_encapsulated_pixel_data_is_copied_item_by_item(tmp_path: Path) -> None:
    ds = make_instance()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    frames = [b"\xff\x4f\xff\x51" + bytes(61), b"\xff\x4f\xff\x51" + bytes(17)]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 2
    ds.add_new(0xFFFCFFFC, "OB", b"tail")
    src = write(ds, tmp_path / "in.dcm")
    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.PixelData == ds.PixelData
    assert out.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert check_deidentified(out) == []


def test_memory_stays_flat_for_a_10_mb_radiograph(tmp_path: Path) -> None:
    src = radiograph(tmp_path / "dx.dcm")
    assert src.stat().st_size > 10_000_000
    pseudonymizer = Pseudonymizer(KEY)
    tracemalloc.start()
    try:
        pseudonymizer.pseudonymize_file(src, tmp_path / "out.dcm")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert (tmp_path / "out.dcm").stat().st_size > 10_000_000
    assert pydicom.dcmread(tmp_path / "out.dcm").PixelData == pydicom.dcmread(src).PixelData


def test_a_header_larger_than_the_first_read_is_handled(tmp_path: Path) -> None:
    ds = make_instance()
    ds.add_new(0x00091010, "OB", b"\x01" * 200_000)  # a big private blob before the pixels
    ds.add_new(0x00090010, "LO", "ACME")
    ds.ImageComments = "x" * 9000
    src = write(ds, tmp_path / "in.dcm")
    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.PixelData == ds.PixelData and check_deidentified(out) == []
    assert (tmp_path / "out.dcm").stat().st_size < 10_000


def test_non_atomic_writes_straight_to_the_destination(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "no_meta.dcm", "SC_rgb_jpeg.dcm"):
        src = Path(get_testdata_file(name))  # type: ignore[arg-type]
        dst = tmp_path / f"{name}.out"
        try:
            Pseudonymizer(KEY, known_clean_pixels=True).pseudonymize_file(src, dst, atomic=False)
        except Exception:  # no_meta.dcm has no SOP Instance UID: refused
            assert not dst.exists()
            continue
        assert check_deidentified(pydicom.dcmread(dst)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CT_small.dcm.out", "SC_rgb_jpeg.dcm.out"]
