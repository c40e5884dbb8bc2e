"""The round trip with the hub's objects in S3: Orthanc → edge → hub (SeaweedFS) → edge → Orthanc.

The hub is ``aifi hub serve`` with ``object_store = "s3"`` in its hub.toml
and credentials in the standard ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` variables; the bucket is on a real SeaweedFS on
loopback (``peers.seaweedfs``). Instances enter the bucket from the hub's
staging file (STOW-RS), the algorithm reads them through ``materialize``,
the edge fetches the SR streamed from the bucket (WADO-RS), and after the
edge acknowledges, retention deletes the images from the bucket. The hub's
own folder keeps its database and nothing of the study.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from peers.orthanc import Orthanc
from peers.seaweedfs import S3Server, s3_bucket, s3_server  # noqa: F401 (fixtures)

from .conftest import HubProcess
from .test_round_trip import edge, send_study_through_orthanc, wait_delivered  # noqa: F401

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]

PREFIX = "hub/"


def _database_or_key(path: Path) -> bool:
    """What the data folder may hold: the SQLite database (and its -wal, -shm, lock files)
    and the console's signing key."""
    return path.name.startswith("hub.sqlite") or path.name == "console-secret"


@pytest.fixture
def hub(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    s3_bucket: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[HubProcess]:
    """``aifi hub serve`` storing in ``s3_bucket``; credentials from the AWS variables."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    folder = tmp_path / "hub"
    folder.mkdir()
    process = HubProcess(folder)
    with process.config.open("a", encoding="utf-8") as toml:
        toml.write(
            'object_store = "s3"\n'
            f's3_endpoint_url = "{s3_server.endpoint_url}"\n'
            f's3_bucket = "{s3_bucket}"\n'
            f's3_prefix = "{PREFIX}"\n'
        )
    process.start()
    yield process
    process.stop()


def test_objects_live_in_the_bucket_and_the_data_folder_holds_only_the_database(
    tmp_path: Path,
    orthanc: Orthanc,
    hub: HubProcess,
    edge,  # noqa: F811
    s3_server: S3Server,  # noqa: F811
    s3_bucket: str,  # noqa: F811
) -> None:
    files = send_study_through_orthanc(orthanc, tmp_path)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    seen: set[str] = set()  # every key the bucket held while the task ran
    deadline = time.monotonic() + 90
    while not orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR"):
        assert time.monotonic() < deadline, f"no SR in Orthanc; hub log: {hub.log.read_text()}"
        ended = [t for t in edge.state.tasks() if t.state in ("CANCELED", "failed")]
        assert not ended, f"{ended[0].reason}; hub log: {hub.log.read_text()[-3000:]}"
        seen |= set(s3_server.keys(s3_bucket))
        time.sleep(0.1)
    wait_delivered(edge)
    (task,) = edge.state.tasks()
    assert task.verified is True, task.verification

    instances = {k for k in seen if k.startswith(f"{PREFIX}instances/")}
    assert len(instances) == len(files), sorted(seen)
    results = {k for k in s3_server.keys(s3_bucket) if k.startswith(f"{PREFIX}results/")}
    assert results, "the SR and its companions are objects in the bucket"
    assert all(k.startswith(PREFIX) for k in s3_server.keys(s3_bucket))

    # acknowledged: retention removes the images from the bucket, the results stay
    deadline = time.monotonic() + 30
    while any(k.startswith(f"{PREFIX}instances/") for k in s3_server.keys(s3_bucket)):
        assert time.monotonic() < deadline, "acknowledged images are still in the bucket"
        time.sleep(0.2)
    assert results <= set(s3_server.keys(s3_bucket))

    held = {p.relative_to(hub.data_dir) for p in hub.data_dir.rglob("*") if p.is_file()}
    assert {p for p in held if not _database_or_key(p)} == set(), sorted(map(str, held))
    assert not (hub.data_dir / "instances").exists()
    assert not (hub.data_dir / "results").exists()
