"""The file around the dataset: File Meta Information, and pixel data copied as bytes.

PS3.10 7.1: a DICOM file is a 128-byte preamble, ``DICM``, the File Meta
Information (group 0002, explicit VR little endian) and the dataset. The
pseudonymizer writes new File Meta Information (nothing of the source's:
no source AE title, no private information) and copies the source's Pixel
Data element byte for byte with ``os.sendfile`` (or a bounded loop), so
memory stays flat in file size. From a retired big endian file the pixel
data is copied in pieces with the bytes of each number reversed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from aifi.deid.encoding import Buffer, Reader, encode_element, swap
from aifi.errors import DicomInputError

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "copy_range",
    "copy_swapped",
    "file_meta",
    "read_file_meta",
    "temp_path",
]

IMPLEMENTATION_CLASS_UID = "2.25.160740097164212178307347393367283418923"
_VERSION_NAME = b"AIFI_DEID_1"


def read_file_meta(buf: Buffer) -> tuple[int, str]:
    """Offset of the dataset and the Transfer Syntax UID of a PS3.10 file in ``buf``."""
    if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
        raise DicomInputError("not a DICOM file: no 'DICM' after the 128-byte preamble")
    reader = Reader(buf, implicit=False)
    pos, transfer_syntax = 132, ""
    while pos + 8 <= len(buf):
        group = struct.unpack_from("<H", buf, pos)[0]
        if group != 0x0002:
            break
        element = reader.element_at(pos)
        if element.tag == 0x00020010:
            transfer_syntax = reader.value(element).decode("ascii").strip(" \0")
        pos = element.vend
    if not transfer_syntax:
        raise DicomInputError("the file has no Transfer Syntax UID (0002,0010); it is malformed")
    return pos, transfer_syntax


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and new File Meta Information (PS3.10 7.1)."""
    body = b"".join(
        (
            encode_element(0x00020001, "OB", b"\x00\x01", implicit=False),
            encode_element(0x00020002, "UI", sop_class_uid.encode("ascii"), implicit=False),
            encode_element(0x00020003, "UI", sop_instance_uid.encode("ascii"), implicit=False),
            encode_element(0x00020010, "UI", transfer_syntax.encode("ascii"), implicit=False),
            encode_element(
                0x00020012, "UI", IMPLEMENTATION_CLASS_UID.encode("ascii"), implicit=False
            ),
            encode_element(0x00020013, "SH", _VERSION_NAME, implicit=False),
        )
    )
    length = encode_element(0x00020000, "UL", struct.pack("<I", len(body)), implicit=False)
    return b"\0" * 128 + b"DICM" + length + body


def copy_range(src: BinaryIO, dst: BinaryIO, offset: int, length: int) -> None:
    """Copy ``length`` bytes of ``src`` from ``offset`` to the end of ``dst``, in bounded pieces."""
    dst.flush()
    sent = 0
    try:
        out_fd, in_fd = dst.fileno(), src.fileno()
        while sent < length:
            n = os.sendfile(out_fd, in_fd, offset + sent, length - sent)
            if n == 0:
                break
            sent += n
        dst.seek(0, os.SEEK_END)
    except (OSError, AttributeError, ValueError):
        dst.seek(0, os.SEEK_END)
    src.seek(offset + sent)
    remaining = length - sent
    while remaining:
        chunk = src.read(min(remaining, 1 << 20))
        if not chunk:
            raise DicomInputError("the file ended inside Pixel Data; ask for it to be sent again")
        dst.write(chunk)
        remaining -= len(chunk)


def copy_swapped(src: BinaryIO, dst: BinaryIO, offset: int, length: int, width: int) -> None:
    """Copy like :func:`copy_range`, reversing the byte order of each ``width``-byte number.

    For retired big endian files (PS3.5 A.3) turned little endian; the values
    are moved in 1 MiB pieces, never interpreted.
    """
    if width < 2:
        copy_range(src, dst, offset, length)
        return
    src.seek(offset)
    remaining = length
    while remaining:
        chunk = src.read(min(remaining, 1 << 20))
        if not chunk:
            raise DicomInputError("the file ended inside Pixel Data; ask for it to be sent again")
        dst.write(swap(chunk, width))
        remaining -= len(chunk)


def temp_path(dst: Path) -> Path:
    """Where to write before an atomic rename onto ``dst``."""
    return dst.with_name(f".{dst.name}.{os.getpid()}.part")
