"""The map back from pseudonyms to originals, kept at the edge only.

A SQLite file holds, per pseudonymous UID or patient pseudonym, the original
encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from the
hospital's secret. Rows are found by an HMAC of the pseudonym, so a lookup
decrypts one row and never scans. Every lookup is recorded in the
``lookups`` table: when, who (``actor``), why (``purpose``), which
pseudonym, and whether it was found.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aifi.errors import StorageError

__all__ = ["Lookup", "PseudonymMap"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uids (
    pseudo_index BLOB PRIMARY KEY, nonce BLOB NOT NULL, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS patients (
    pseudo_index BLOB PRIMARY KEY, nonce BLOB NOT NULL, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS lookups (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
    purpose TEXT NOT NULL, kind TEXT NOT NULL, pseudonym TEXT NOT NULL, found INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Lookup:
    """One recorded lookup in the map."""

    at: str
    actor: str
    purpose: str
    kind: str
    pseudonym: str
    found: bool


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


class PseudonymMap:
    """Pseudonym → original, encrypted at rest in the SQLite file at ``path``."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self._aead = AESGCM(_derive(key, b"aifi pseudonym map v1 encryption"))
        self._index_key = _derive(key, b"aifi pseudonym map v1 index")
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._connect() as db:
                db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"pseudonym map {self.path} cannot be opened: {exc}") from exc
        for suffix in ("", "-wal", "-shm"):  # encrypted anyway; still nobody else's to read
            companion = self.path.with_name(self.path.name + suffix)
            if companion.exists():
                companion.chmod(0o600)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> PseudonymMap:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The connection, in one transaction, one thread at a time."""
        with self._lock, self._db:
            yield self._db

    def _index(self, kind: str, pseudonym: str) -> bytes:
        return hmac.new(self._index_key, f"{kind}:{pseudonym}".encode(), hashlib.sha256).digest()

    def _seal(self, kind: str, pseudonym: str, plain: str) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        aad = f"{kind}:{pseudonym}".encode()
        return nonce, self._aead.encrypt(nonce, plain.encode("utf-8"), aad)

    def _store(self, table: str, kind: str, pairs: Mapping[str, str]) -> None:
        rows = [(self._index(kind, p), *self._seal(kind, p, o)) for p, o in pairs.items()]
        try:
            with self._connect() as db:
                db.executemany(
                    f"INSERT OR REPLACE INTO {table} (pseudo_index, nonce, sealed) "
                    "VALUES (?, ?, ?)",
                    rows,
                )
        except sqlite3.Error as exc:
            raise StorageError(f"pseudonym map {self.path} cannot be written: {exc}") from exc

    def _fetch(
        self, table: str, kind: str, pseudonyms: Iterable[str], purpose: str, actor: str
    ) -> dict[str, str | None]:
        if not purpose.strip():
            raise ValueError("purpose must say why the original is looked up")
        found: dict[str, str | None] = {}
        at = dt.datetime.now(dt.UTC).isoformat()
        try:
            with self._connect() as db:
                for pseudonym in pseudonyms:
                    row = db.execute(
                        f"SELECT nonce, sealed FROM {table} WHERE pseudo_index = ?",
                        (self._index(kind, pseudonym),),
                    ).fetchone()
                    found[pseudonym] = None if row is None else self._open(kind, pseudonym, row)
                    db.execute(
                        "INSERT INTO lookups (at, actor, purpose, kind, pseudonym, found) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (at, actor, purpose, kind, pseudonym, row is not None),
                    )
        except sqlite3.Error as exc:
            raise StorageError(f"pseudonym map {self.path} cannot be read: {exc}") from exc
        return found

    def _open(self, kind: str, pseudonym: str, row: tuple[bytes, bytes]) -> str:
        try:
            plain = self._aead.decrypt(row[0], row[1], f"{kind}:{pseudonym}".encode())
        except InvalidTag as exc:
            raise StorageError(
                f"pseudonym map {self.path} entry for {pseudonym} does not decrypt: "
                "the map was written with another key or was altered"
            ) from exc
        return plain.decode("utf-8")

    # -- public ------------------------------------------------------------------
    def remember(self, uid_map: Mapping[str, str]) -> None:
        """Store ``original → pseudonymous`` UIDs (as given by PseudonymizedInstance.uid_map)."""
        self._store("uids", "uid", {pseudo: original for original, pseudo in uid_map.items()})

    def original_uids(
        self, pseudos: Iterable[str], *, purpose: str, actor: str = "edge"
    ) -> dict[str, str | None]:
        """Originals of many pseudonymous UIDs in one transaction; each lookup is recorded."""
        return self._fetch("uids", "uid", list(dict.fromkeys(pseudos)), purpose, actor)

    def remember_patient(self, pseudonym: str, attributes: Mapping[str, str]) -> None:
        """Store the original patient module values (keyword → value) behind a patient pseudonym."""
        self._store("patients", "patient", {pseudonym: json.dumps(dict(attributes))})

    def original_patient(
        self, pseudonym: str, *, purpose: str, actor: str = "edge"
    ) -> dict[str, str] | None:
        """The original patient attributes behind ``pseudonym``, or None; the lookup is recorded."""
        plain = self._fetch("patients", "patient", [pseudonym], purpose, actor)[pseudonym]
        return None if plain is None else dict(json.loads(plain))

    def lookups(self) -> list[Lookup]:
        """Every recorded lookup, oldest first (for audit)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT at, actor, purpose, kind, pseudonym, found FROM lookups ORDER BY id"
            ).fetchall()
        return [Lookup(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]
