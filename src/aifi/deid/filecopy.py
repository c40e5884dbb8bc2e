"""Pixel data copied as bytes, from the source file into the pseudonymized one.

The pseudonymizer writes new File Meta Information
(:func:`aifi.dicom.part10.file_meta`) and copies the source's Pixel
Data element byte for byte with ``os.sendfile`` (or a bounded loop), so
memory stays flat in file size. From a retired big endian file the pixel
data is copied in pieces with the bytes of each number reversed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from aifi.dicom.encode import swap
from aifi.errors import DicomInputError

__all__ = ["copy_range", "copy_swapped", "temp_path"]


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
