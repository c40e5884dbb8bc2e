"""No raw channel: identifiers planted everywhere a file can hide them, for every shipped keep list.

The corpus is made here (:func:`aifi.deid.testcorpus.planted_file`): every
plantable Table E.1-1 attribute, nested sequences, sequences sent as UN of
defined and undefined length, private blocks, three character sets, a tag
sent twice, elements after Pixel Data, identity in the File Meta
Information, names in safe-listed text and in attributes an algorithm may
ask for. A byte scan of the pseudonymized file finds none of them, and the
hub's own check accepts the file.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from deid_support import KEY
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aifi.algorithms import registry
from aifi.deid import Pseudonymizer, check_deidentified_file
from aifi.deid.testcorpus import CHARSETS, planted_file

KEEP_LISTS = {m.id: m.keep_attributes for m in registry.manifests()}


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("charset", CHARSETS)
@pytest.mark.parametrize("algorithm", sorted(KEEP_LISTS))
def test_no_planted_identifier_survives_any_keep_list(
    tmp_path: Path, algorithm: str, charset: str, transfer_syntax: str
) -> None:
    src = tmp_path / "in.dcm"
    planted = planted_file(src, charset, transfer_syntax)
    raw_in = src.read_bytes()
    assert [n for n, m in planted.markers.items() if m not in raw_in] == []  # the scan sees them
    assert len(planted.markers) > 750

    Pseudonymizer(KEY, keep=KEEP_LISTS[algorithm]).pseudonymize_file(src, tmp_path / "out.dcm")

    raw_out = (tmp_path / "out.dcm").read_bytes()
    assert sorted(n for n, m in planted.markers.items() if m in raw_out) == []
    assert check_deidentified_file(tmp_path / "out.dcm") == []


def test_sequences_sent_as_un_are_walked_not_dropped_or_copied(tmp_path: Path) -> None:
    src = tmp_path / "in.dcm"
    planted = planted_file(src, "ISO_IR 100")
    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    out = pydicom.dcmread(tmp_path / "out.dcm")
    (defined,) = out.ViewCodeSequence  # defined length, read as implicit VR
    assert defined.ReferencedSOPInstanceUID.startswith("2.25.")
    assert defined.CodeMeaning == "" and defined.PatientName == ""
    (undefined,) = out.DimensionIndexSequence  # undefined length
    assert undefined.PatientID == ""
    assert out.AnatomicRegionSequence[0].CodeMeaning == "Hand"  # vocabulary words stay
    assert "Manufacturer" not in out  # sent twice: every copy removed
    assert "PatientComments" not in out  # after Pixel Data: never copied
    assert out.PixelData == planted.dataset.PixelData


def test_a_sequence_sent_as_un_that_cannot_be_read_is_removed(tmp_path: Path) -> None:
    from deid_support import make_instance, write

    src = write(make_instance(), tmp_path / "in.dcm")
    raw = src.read_bytes()
    # View Code Sequence (0054,0220) as UN whose 12 bytes are no item at all
    garbage = b"\x54\x00\x20\x02UN\x00\x00" + (12).to_bytes(4, "little") + b"\x01\x02" * 6
    pixel = raw.index(b"\xe0\x7f\x10\x00")
    src.write_bytes(raw[:pixel] + garbage + raw[pixel:])
    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    assert "ViewCodeSequence" not in pydicom.dcmread(tmp_path / "out.dcm")


def test_a_coded_string_outside_its_defined_terms_is_neither_copied_nor_accepted(
    tmp_path: Path,
) -> None:
    """A sender that re-encodes a tag sent twice keeps one copy: ``Modality = DUP0004``.

    The form of CS alone would let it through; the defined terms of PS3.3 do not.
    """
    from deid_support import make_instance, write

    ds = make_instance()
    ds.Modality = "DUP0004"
    ds.PatientPosition = "ALICE"
    src = write(ds, tmp_path / "in.dcm")
    Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    raw = (tmp_path / "out.dcm").read_bytes()
    assert b"DUP0004" not in raw and b"ALICE" not in raw
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert "Modality" not in out and "PatientPosition" not in out

    hostile = pydicom.dcmread(tmp_path / "out.dcm")
    hostile.Modality = "DUP0004"
    hostile.save_as(tmp_path / "hostile.dcm")
    (problem,) = check_deidentified_file(tmp_path / "hostile.dcm")
    assert "Modality" in problem and "defined terms" in problem and "DUP0004" not in problem


def test_a_deflate_bomb_is_refused_not_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zlib

    from aifi.deid import encoding
    from aifi.dicom.part10 import read_file_meta
    from aifi.errors import PseudonymizationError

    monkeypatch.setattr(encoding, "MAX_INFLATED_BYTES", 1 << 20)
    from deid_support import make_instance, write

    ds = make_instance()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    sound = write(ds, tmp_path / "deflated.dcm")
    raw = sound.read_bytes()
    start, _syntax = read_file_meta(raw)
    plain = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw[start:])
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = deflater.compress(plain + b"\0" * (8 << 20)) + deflater.flush()  # ~8 KB → 8 MiB
    (tmp_path / "bomb.dcm").write_bytes(raw[:start] + bomb)
    with pytest.raises(PseudonymizationError, match="deflate bomb"):
        Pseudonymizer(KEY).pseudonymize_file(tmp_path / "bomb.dcm", tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()


def test_sequences_nested_too_deep_are_a_named_refusal(tmp_path: Path) -> None:
    from deid_support import make_instance, write

    from aifi.errors import PseudonymizationError

    src = write(make_instance(), tmp_path / "in.dcm")
    raw = src.read_bytes()
    sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    pixel = raw.index(b"\xe0\x7f\x10\x00")
    deep = (sequence + item) * 3000 + ends * 3000
    src.write_bytes(raw[:pixel] + deep + raw[pixel:])
    with pytest.raises(PseudonymizationError, match="nested too deeply"):
        Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()
    (problem,) = check_deidentified_file(src)  # the hub's check: a refusal, not a crash
    assert "nested too deeply" in problem
