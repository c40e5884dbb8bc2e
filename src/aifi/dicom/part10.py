"""DICOM files: preamble, ``DICM`` and File Meta Information (PS3.10 §7.1).

A DICOM file is a 128-byte preamble, the prefix ``DICM``, the File Meta
Information (group 0002, always Explicit VR Little Endian) and the data
set. Everything aifi writes as a file, the listener's instances stored as
received and the pseudonymizer's output alike, starts with
:func:`file_meta`: new File Meta Information that names aifi as the
implementation (one Implementation Class UID and Version Name, PS3.7
D.3.3.2) and carries nothing of the source (no Source AE Title, no private
information). The seven elements are encoded directly, which keeps
pydicom's general writer off the per-instance path; the caller has checked
the UIDs.
"""

from __future__ import annotations

import struct

from aifi.core.errors import DicomInputError
from aifi.dicom.encode import encode_element
from aifi.dicom.walker import Buffer, Walker

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "PREAMBLE",
    "file_meta",
    "read_file_meta",
]

#: aifi's Implementation Class UID: the 2.25 form (PS3.5 B.2) of uuid5(NAMESPACE_URL, "https://aifi").
IMPLEMENTATION_CLASS_UID = "2.25.105506188841985937484218161433133195924"
#: aifi's Implementation Version Name (SH, at most 16 characters).
IMPLEMENTATION_VERSION_NAME = "AIFI_DICOM_1"
PREAMBLE = b"\0" * 128 + b"DICM"

_UID = IMPLEMENTATION_CLASS_UID.encode("ascii")
_NAME = IMPLEMENTATION_VERSION_NAME.encode("ascii")
_VERSION = encode_element(0x00020001, "OB", b"\x00\x01", implicit=False)
_IMPLEMENTATION = encode_element(0x00020012, "UI", _UID, implicit=False) + encode_element(
    0x00020013, "SH", _NAME, implicit=False
)


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group of one instance."""
    body = b"".join(
        (
            _VERSION,
            encode_element(0x00020002, "UI", sop_class_uid.encode("ascii"), implicit=False),
            encode_element(0x00020003, "UI", sop_instance_uid.encode("ascii"), implicit=False),
            encode_element(0x00020010, "UI", transfer_syntax_uid.encode("ascii"), implicit=False),
            _IMPLEMENTATION,
        )
    )
    length = encode_element(0x00020000, "UL", struct.pack("<I", len(body)), implicit=False)
    return PREAMBLE + length + body


def read_file_meta(buf: Buffer) -> tuple[int, str]:
    """Offset of the data set and the Transfer Syntax UID of a PS3.10 file in ``buf``."""
    if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
        raise DicomInputError("not a DICOM file: no 'DICM' after the 128-byte preamble")
    walker = Walker(buf, implicit=False)
    pos, transfer_syntax = 132, ""
    while pos + 8 <= len(buf):
        group = struct.unpack_from("<H", buf, pos)[0]
        if group != 0x0002:
            break
        element = walker.element_at(pos)
        if element.tag == 0x00020010:
            transfer_syntax = walker.value(element).decode("ascii", "replace").strip(" \0")
        pos = element.vend
    if not transfer_syntax:
        raise DicomInputError("the file has no Transfer Syntax UID (0002,0010); it is malformed")
    return pos, transfer_syntax
