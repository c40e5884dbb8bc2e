"""The hub's objects in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW).

:class:`S3Store` implements :class:`aifi.hub.storage.ObjectStore` with boto3:

* ``put`` uploads a staged file with S3 multipart upload in parts of
  ``s3_part_size_mib`` (two parts in flight at once), so memory stays two
  parts whatever the object's size; the staged file is removed once the
  bucket has the object;
* ``open`` returns the object's body as a stream read in chunks (WADO-RS
  serves it without a copy on disk);
* ``materialize`` downloads the object into this process's staging folder
  for the ``with`` block (algorithms and pydicom read files) and removes the
  copy afterwards;
* staging is a folder per process under ``<data_dir>/tmp``, exactly as the
  local store's, so uploads are received and checked on disk before they
  enter the bucket, and nothing else stays on the hub's disk.

Keys are the store's keys under ``s3_prefix``; the bucket is the operator's
(the hub checks it at start and never creates one). Credentials come from
``s3_access_key_id`` / ``s3_secret_access_key`` or, unset, from boto3's
standard chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, profiles,
instance roles). boto3's errors are translated here, once, into
:class:`aifi.errors.StorageError` with a message naming the bucket and key
(keys hold only pseudonymous UIDs) and what to check.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from aifi.errors import StorageError
from aifi.hub.storage import LocalFolderStore

if TYPE_CHECKING:
    from aifi.hub.config import HubSettings

__all__ = ["S3Store"]

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
DICOM_MEDIA_TYPE = "application/dicom"
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_REFUSED = frozenset(
    {"AccessDenied", "403", "SignatureDoesNotMatch", "InvalidAccessKeyId", "Forbidden"}
)


class S3Store:
    """Objects in ``bucket`` under ``prefix``; staging on local disk in ``staging_root/tmp``."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        staging_root: Path,
        prefix: str = "",
        part_size: int = 8 * MIB,
        endpoint: str = "AWS S3",
    ) -> None:
        if part_size < 5 * MIB:
            raise ValueError("part_size must be at least 5 MiB (the S3 minimum for a part)")
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = endpoint
        self._staging = LocalFolderStore(staging_root)
        self._transfer = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=2,  # parts in memory per transfer: two
            use_threads=True,
        )

    @classmethod
    def from_settings(cls, settings: HubSettings) -> S3Store:
        """The store ``settings`` name, after checking that the bucket answers."""
        assert settings.s3_bucket, "HubSettings refuses object_store='s3' without s3_bucket"
        secret = settings.s3_secret_access_key
        session = boto3.session.Session(
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
            region_name=settings.s3_region,
        )
        client = session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            config=Config(
                # most S3-compatible servers serve buckets as paths, not as host names
                s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=32,
            ),
        )
        store = cls(
            client,
            settings.s3_bucket,
            staging_root=settings.data_dir,
            prefix=settings.s3_prefix,
            part_size=settings.s3_part_size_mib * MIB,
            endpoint=settings.s3_endpoint_url or "AWS S3",
        )
        store.check()
        return store

    def check(self) -> None:
        """Raise :class:`StorageError` unless the bucket exists and these credentials reach it."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            if _code(exc) in _MISSING or _code(exc) == "NoSuchBucket":
                raise StorageError(
                    f"S3 bucket {self.bucket} does not exist at {self.endpoint}; create it "
                    "(the hub does not create buckets) or correct s3_bucket"
                ) from exc
            raise self._failed("open", None, exc) from exc

    def new_temporary(self) -> tuple[IO[bytes], Path]:
        return self._staging.new_temporary()

    def put(self, staged: Path, key: str) -> int:
        """Upload ``staged`` under ``key`` (multipart above one part), then remove it."""
        name = self._name(key)
        try:
            size = staged.stat().st_size
            self._client.upload_file(
                str(staged),
                self.bucket,
                name,
                ExtraArgs={"ContentType": DICOM_MEDIA_TYPE},
                Config=self._transfer,
            )
        except OSError as exc:
            raise StorageError(f"cannot read staged object for {key}: {exc}") from exc
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._failed("store", key, exc) from exc
        staged.unlink(missing_ok=True)
        return size

    def size(self, key: str) -> int | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._name(key))
        except (BotoCoreError, ClientError) as exc:
            if _code(exc) in _MISSING:
                return None
            raise self._failed("read", key, exc) from exc
        return int(head["ContentLength"])

    def open(self, key: str) -> IO[bytes]:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._name(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("read", key, exc) from exc
        return cast("IO[bytes]", response["Body"])  # botocore's StreamingBody: an io.IOBase

    @contextlib.contextmanager
    def materialize(self, key: str) -> Iterator[Path]:
        """A copy of the object in this process's staging folder, removed after the block."""
        handle, path = self._staging.new_temporary()
        handle.close()
        try:
            try:
                self._client.download_file(
                    self.bucket, self._name(key), str(path), Config=self._transfer
                )
            except (BotoCoreError, ClientError) as exc:
                raise self._failed("read", key, exc) from exc
            yield path
        finally:
            path.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (BotoCoreError, ClientError) as exc:
            if _code(exc) in _MISSING:
                return
            raise self._failed("delete", key, exc) from exc

    def clear_staging(self) -> None:
        self._staging.clear_staging()

    def _name(self, key: str) -> str:
        """The bucket's key for a store key; a key that could leave the prefix is refused."""
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
            raise ValueError(f"object key {key!r} leaves the store")
        return self.prefix + key

    def _failed(self, doing: str, key: str | None, exc: Exception) -> StorageError:
        where = f"{self.bucket}/{self.prefix}{key}" if key else f"bucket {self.bucket}"
        code = _code(exc)
        if code in _MISSING:
            return StorageError(f"object {key} is missing from S3 bucket {self.bucket}")
        if code in _REFUSED:
            return StorageError(
                f"S3 at {self.endpoint} refused to {doing} {where} ({code}); check the "
                "credentials (s3_access_key_id / AWS_ACCESS_KEY_ID) and the bucket's policy"
            )
        if isinstance(exc, EndpointConnectionError):
            return StorageError(
                f"cannot reach S3 at {self.endpoint} to {doing} {where}; check "
                "s3_endpoint_url and the network"
            )
        detail = code or type(exc).__name__
        logger.debug("S3 failure on %s", where, exc_info=exc)
        return StorageError(f"S3 at {self.endpoint} failed to {doing} {where}: {detail}")


def _code(exc: Exception) -> str:
    """The S3 error code of a boto3 failure ('' when it carries none)."""
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        exc = exc.__context__
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""
