"""The object-store contract, held against both stores: a local folder and S3 (SeaweedFS).

Every test of the contract runs twice (``store`` is parametrized): once on
:class:`LocalFolderStore`, once on :class:`S3Store` against a real SeaweedFS
on loopback (``peers.seaweedfs``), each S3 test in a bucket of its own.
No database is opened here (the store alone), so nothing runs per database.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from aifi.errors import StorageError
from aifi.hub.config import HubSettings
from aifi.hub.s3 import S3Store
from aifi.hub.storage import LocalFolderStore, ObjectStore, iter_file, object_key, open_store
from peers.seaweedfs import S3Server, s3_bucket, s3_server  # noqa: F401 (fixtures)

MIB = 1024 * 1024
HOSPITAL = "0123456789abcdef0123456789abcdef"


def _s3_settings(tmp_path: Path, server: S3Server, bucket: str, **more: object) -> HubSettings:
    return HubSettings(
        data_dir=tmp_path / "hub-data",
        object_store="s3",
        s3_endpoint_url=server.endpoint_url,
        s3_bucket=bucket,
        s3_prefix="national/",
        s3_access_key_id=server.access_key_id,
        s3_secret_access_key=server.secret_access_key,
        s3_region="us-east-1",
        s3_part_size_mib=5,
        **more,
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield open_store(HubSettings(data_dir=tmp_path / "hub-data"))
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    yield open_store(_s3_settings(tmp_path, server, bucket))


def _key(sop: str = "1.2.3.4.5") -> str:
    return object_key("instances", HOSPITAL, "1.2.3", "1.2.3.4", sop)


def _staged(store: ObjectStore, data: bytes) -> Path:
    handle, path = store.new_temporary()
    with handle:
        handle.write(data)
    return path


def _read(store: ObjectStore, key: str) -> bytes:
    return b"".join(iter_file(store.open(key), 64 * 1024))


def test_put_then_open_gives_the_bytes_back(store: ObjectStore) -> None:
    data = os.urandom(300_000)
    staged = _staged(store, data)
    assert store.put(staged, _key()) == len(data)
    assert not staged.exists(), "a put consumes the staged file"
    assert _read(store, _key()) == data


def test_put_replaces_the_object(store: ObjectStore) -> None:
    store.put(_staged(store, b"first"), _key())
    store.put(_staged(store, b"second"), _key())
    assert _read(store, _key()) == b"second"


def test_size_is_the_objects_bytes_or_none_when_missing(store: ObjectStore) -> None:
    assert store.size(_key()) is None
    store.put(_staged(store, b"y" * 1234), _key())
    assert store.size(_key()) == 1234


def test_missing_object_is_a_storage_error(store: ObjectStore) -> None:
    with pytest.raises(StorageError, match="missing"):
        store.open(_key("9.9.9"))
    with pytest.raises(StorageError, match="missing"), store.materialize(_key("9.9.9")):
        pass


def test_delete_removes_and_ignores_missing(store: ObjectStore) -> None:
    store.put(_staged(store, b"x" * 10), _key())
    store.delete(_key())
    store.delete(_key())
    with pytest.raises(StorageError):
        store.open(_key())


def test_materialize_gives_a_local_file_for_the_block(store: ObjectStore) -> None:
    data = os.urandom(50_000)
    store.put(_staged(store, data), _key())
    with store.materialize(_key()) as path:
        assert path.read_bytes() == data
    if isinstance(store, S3Store):
        assert not path.exists(), "the S3 store's copy is removed after the block"
    assert _read(store, _key()) == data


def test_keys_that_leave_the_store_are_refused(store: ObjectStore) -> None:
    for key in ("../outside.dcm", "instances/../../x", "/etc/passwd"):
        with pytest.raises(ValueError, match="leaves the store"):
            store.put(_staged(store, b"x"), key)


def test_clear_staging_drops_this_process_leftovers(store: ObjectStore) -> None:
    staged = _staged(store, b"left by a crash")
    store.clear_staging()
    assert not staged.exists()


def test_large_object_streams_in_parts_not_in_memory(store: ObjectStore) -> None:
    """96 MiB in and out; Python allocations peak at a few parts, not at the object.

    The S3 store moves 8 MiB parts, two in flight each way (``S3Store``); with
    the transfer's own queues, up to four parts were seen at once (27.5 MiB),
    so the bound is four parts: a third of the object.
    """
    size = 96 * MIB
    handle, staged = store.new_temporary()
    digest = hashlib.sha256()
    with handle:
        for _ in range(size // MIB):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            handle.write(chunk)
    tracemalloc.start()
    try:
        store.put(staged, _key())
        read = hashlib.sha256()
        for chunk in iter_file(store.open(_key())):
            read.update(chunk)
        with store.materialize(_key()) as path:
            assert path.stat().st_size == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read.digest() == digest.digest()
    assert peak < 4 * 8 * MIB, f"peak {peak / MIB:.1f} MiB for a {size // MIB} MiB object"


def test_s3_uses_multipart_upload_and_the_prefix(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    s3_bucket: str,  # noqa: F811
) -> None:
    store = open_store(_s3_settings(tmp_path, s3_server, s3_bucket))
    store.put(_staged(store, os.urandom(12 * MIB)), _key())
    assert s3_server.keys(s3_bucket) == [f"national/{_key()}"]
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"national/{_key()}")
    assert head["ETag"].strip('"').endswith("-3"), "12 MiB in 5 MiB parts: three parts"
    assert head["ContentType"] == "application/dicom"
    staging = tmp_path / "hub-data" / "tmp"
    assert [p for p in staging.rglob("*") if p.is_file()] == [], "nothing stays on local disk"


def test_s3_missing_bucket_is_named_at_start(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
) -> None:
    with pytest.raises(StorageError, match=r"does not exist.*create it"):
        open_store(_s3_settings(tmp_path, s3_server, "no-such-bucket"))


def test_s3_wrong_secret_is_refused_with_what_to_check(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    s3_bucket: str,  # noqa: F811
) -> None:
    settings = _s3_settings(tmp_path, s3_server, s3_bucket).model_copy(
        update={"s3_secret_access_key": SecretStr("wrong")}
    )
    with pytest.raises(StorageError, match="credentials"):
        S3Store.from_settings(settings)


def test_s3_credentials_from_the_standard_aws_variables(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    s3_bucket: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    settings = _s3_settings(tmp_path, s3_server, s3_bucket).model_copy(
        update={"s3_access_key_id": None, "s3_secret_access_key": None}
    )
    store = open_store(settings)
    store.put(_staged(store, b"via env"), _key())
    assert _read(store, _key()) == b"via env"


def test_local_is_the_default(tmp_path: Path) -> None:
    assert isinstance(open_store(HubSettings(data_dir=tmp_path)), LocalFolderStore)


def test_purge_command_opens_the_configured_store(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
) -> None:
    """'aifi hub purge' uses the store hub.toml names, and says what is wrong with it."""
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\nobject_store = "s3"\n'
        f's3_endpoint_url = "{s3_server.endpoint_url}"\ns3_bucket = "not-made-yet"\n'
        f's3_access_key_id = "{s3_server.access_key_id}"\n'
        f's3_secret_access_key = "{s3_server.secret_access_key}"\ns3_region = "us-east-1"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "aifi", "hub", "purge", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "S3 bucket not-made-yet does not exist" in done.stderr
    assert "Traceback" not in done.stderr
