"""Deflated data sets, inflated with a bound (PS3.5 A.5).

The element-level reading and writing the pseudonymizer does lives in
:mod:`aifi.dicom.walker` and :mod:`aifi.dicom.encode`; what stays here is
the pseudonymizer's own refusal of a deflate bomb.
"""

from __future__ import annotations

import zlib

from aifi.errors import PseudonymizationError

__all__ = ["MAX_INFLATED_BYTES", "inflate_bounded"]

#: The largest data set a Deflated Explicit VR Little Endian file may inflate to: a
#: deflate bomb (a few hundred KB that inflate to gigabytes) is refused, not inflated.
MAX_INFLATED_BYTES = 256 << 20


def inflate_bounded(data: bytes, limit: int | None = None) -> bytes:
    """``data`` inflated (raw deflate, PS3.5 A.5), refused past ``limit`` bytes.

    ``limit`` defaults to :data:`MAX_INFLATED_BYTES`.
    """
    limit = MAX_INFLATED_BYTES if limit is None else limit
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise PseudonymizationError(f"its deflated data set cannot be inflated ({exc})") from exc
    if len(inflated) > limit:
        raise PseudonymizationError(
            f"its deflated data set inflates past {limit >> 20} MiB: refused as a deflate bomb"
        )
    return inflated
