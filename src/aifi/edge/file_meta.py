"""File Meta Information for instances stored as received (PS3.10 §7.1).

The listener writes every instance as preamble, ``DICM``, this group and the
data set bytes it received. Encoding these seven elements directly keeps
pydicom's general writer and its per-value validation off the per-instance
path; the UIDs come from the association (already checked by then).
"""

from __future__ import annotations

import struct

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "part10_header"]

# 2.25 form of uuid5(NAMESPACE_URL, "https://aifi/edge") (PS3.5 B.2)
IMPLEMENTATION_CLASS_UID = "2.25.46733464106350966073807412997716178872"
IMPLEMENTATION_VERSION_NAME = "AIFI_EDGE_01"

_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and File Meta Information group, Explicit VR Little Endian."""
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
            _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return _PREAMBLE + group_length + body
