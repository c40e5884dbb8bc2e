"""Where the hub keeps DICOM objects: a local folder or an S3 bucket behind one interface.

Objects are addressed by keys built only from the tenant's id and
pseudonymous UIDs (``instances/<hospital>/<study>/<series>/<sop>.dcm``), so
a key never carries identity and never escapes the store's folder or
prefix. Two stores implement :class:`ObjectStore`: :class:`LocalFolderStore`
(the embedded default) and :class:`aifi.hub.s3.S3Store` (S3-compatible
object storage at national scale); :func:`open_store` picks the configured
one. Nothing reads or writes a whole object in memory: uploads are staged in
a file and put from it, reads are chunked streams, and code that needs a
file (algorithms, pydicom) asks for one with :meth:`ObjectStore.materialize`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Protocol

from aifi.errors import StorageError

if TYPE_CHECKING:
    from aifi.hub.config import HubSettings

__all__ = ["LocalFolderStore", "ObjectStore", "is_uid", "iter_file", "object_key", "open_store"]

logger = logging.getLogger(__name__)

# PS3.5 §9.1: digits and dots, at most 64 characters, no empty component.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_HOSPITAL_ID = re.compile(r"^[0-9a-f]{32}$")
CHUNK = 1024 * 1024
STALE_STAGING_S = 24 * 3600.0
"""A staged file lives for one upload; a staging folder untouched this long is a dead process's."""


def is_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID (PS3.5 §9.1)."""
    return len(value) <= 64 and _UID.match(value) is not None


def object_key(
    area: Literal["instances", "results"],
    hospital_id: str,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> str:
    """The key of one DICOM object; refuses anything that is not a UID."""
    if not _HOSPITAL_ID.match(hospital_id):
        raise ValueError(f"hospital_id {hospital_id!r} is not a hub identifier")
    for name, uid in (
        ("study_instance_uid", study_instance_uid),
        ("series_instance_uid", series_instance_uid),
        ("sop_instance_uid", sop_instance_uid),
    ):
        if not is_uid(uid):
            raise ValueError(f"{name} {uid!r} is not a valid DICOM UID")
    return f"{area}/{hospital_id}/{study_instance_uid}/{series_instance_uid}/{sop_instance_uid}.dcm"


class ObjectStore(Protocol):
    """The operations the hub needs from an object store."""

    def new_temporary(self) -> tuple[IO[bytes], Path]:
        """An open, empty file on the store's staging area, and its path."""
        ...

    def put(self, staged: Path, key: str) -> int:
        """Move a staged file under ``key`` (replacing any object there); its size."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size in bytes; None when there is no object under ``key``."""
        ...

    def materialize(self, key: str) -> AbstractContextManager[Path]:
        """A local file holding the object while the ``with`` block runs (read it, never
        write it); a copy in staging where the store is remote, removed at the end.
        :class:`aifi.errors.StorageError` when missing."""
        ...

    def open(self, key: str) -> IO[bytes]:
        """The object for reading in chunks; :class:`aifi.errors.StorageError` when missing."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; missing objects are ignored."""
        ...

    def clear_staging(self) -> None:
        """Drop staged files a crash left: this process's, and long-abandoned ones of others."""
        ...


class LocalFolderStore:
    """Objects as files under ``root``; staging in ``root/tmp`` so a put is one rename.

    Each process stages in a folder of its own, ``root/tmp/<host>-<pid>-<random>``
    (made at its first upload), so one hub process starting never deletes what
    another is receiving: :meth:`clear_staging` removes this process's folder
    and only those of others untouched for :data:`STALE_STAGING_S`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.staging_root = self.root / "tmp"
        self.staging = (
            self.staging_root / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        try:
            self.staging_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the hub's data folder {self.root}: {exc}") from exc

    def new_temporary(self) -> tuple[IO[bytes], Path]:
        self.staging.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.staging, suffix=".part")
        return os.fdopen(handle, "wb"), Path(name)

    def put(self, staged: Path, key: str) -> int:
        target = self.local_path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            size = staged.stat().st_size
            staged.replace(target)
        except OSError as exc:
            raise StorageError(f"cannot store object {key}: {exc}") from exc
        return size

    def size(self, key: str) -> int | None:
        try:
            return self.local_path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read object {key}: {exc}") from exc

    def local_path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path.is_relative_to(self.staging_root):
            raise ValueError(f"object key {key!r} leaves the store")
        return path

    @contextlib.contextmanager
    def materialize(self, key: str) -> Iterator[Path]:
        """The object's own file: a local folder needs no copy."""
        path = self.local_path(key)
        if not path.is_file():
            raise StorageError(f"object {key} is missing from the hub's data folder")
        yield path

    def open(self, key: str) -> IO[bytes]:
        try:
            return self.local_path(key).open("rb")
        except FileNotFoundError as exc:
            raise StorageError(f"object {key} is missing from the hub's data folder") from exc

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def clear_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        cutoff = time.time() - STALE_STAGING_S
        for left in self.staging_root.iterdir():  # by processes that died long ago
            with contextlib.suppress(OSError):
                if left.stat().st_mtime < cutoff:
                    if left.is_dir():
                        shutil.rmtree(left, ignore_errors=True)
                    else:
                        left.unlink()


def iter_file(handle: IO[bytes], chunk_size: int = CHUNK) -> Iterator[bytes]:
    """Read an open file in chunks and close it at the end."""
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def open_store(settings: HubSettings) -> ObjectStore:
    """The object store ``settings`` configure; an S3 bucket is checked before it is used."""
    if settings.object_store == "s3":
        from aifi.hub.s3 import S3Store  # boto3 loads only where S3 is configured

        return S3Store.from_settings(settings)
    return LocalFolderStore(settings.data_dir)
