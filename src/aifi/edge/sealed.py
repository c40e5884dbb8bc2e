"""Identity-bearing columns of ``edge.db`` sealed with AES-256-GCM, like the pseudonym map.

What would link the hub's data back to the hospital is kept apart from the
plain state: the pseudonymous UIDs beside the original ones (tasks,
task instances) and the routing attributes of each series (descriptions,
age, sex). Each such value is stored as ``enc1:`` and base64 of nonce and
ciphertext under a key derived (HKDF-SHA256) from the hospital's key, which
lives outside the data folder; a copy of ``edge.db`` alone pairs nothing.

Sealed values are opened by the connection's row factory, so every query
of :class:`~aifi.edge.state.EdgeState` reads them as before; values written
by an earlier release (plain) read as they are.
"""

from __future__ import annotations

import base64
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aifi.errors import StorageError

__all__ = ["PREFIX", "ColumnSeal", "OpenedRow"]

PREFIX = "enc1:"


class ColumnSeal:
    """Seal and open text values of the edge's state under the hospital's key."""

    def __init__(self, key: bytes) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"aifi edge state v1 columns"
        ).derive(key)
        self._aead = AESGCM(derived)

    def seal(self, value: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), None)
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, value: Any) -> Any:
        """The plain value of a sealed one; anything else as it is."""
        if not isinstance(value, str) or not value.startswith(PREFIX):
            return value
        raw = base64.b64decode(value[len(PREFIX) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], None).decode("utf-8")
        except InvalidTag as exc:
            raise StorageError(
                "a sealed value in edge.db does not decrypt: the edge runs with another key "
                "than the one that wrote its state (check key_file / AIFI_EDGE_KEY)"
            ) from exc

    def row_factory(self, cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> OpenedRow:
        names = tuple(d[0] for d in cursor.description)
        return OpenedRow(names, tuple(self.open(v) for v in row))


class OpenedRow:
    """A result row with sealed values opened; indexed by position or column name."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            return self._values[key]
        try:
            return self._values[self._names.index(key)]
        except ValueError:
            raise IndexError(f"no column {key!r}") from None

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)
