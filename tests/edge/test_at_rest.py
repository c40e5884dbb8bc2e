"""At rest at the edge: owner-only files, sealed identity columns, the key kept apart.

Checked on a running edge that received a study over DICOM and sent it to a
real hub app on loopback.
"""

from __future__ import annotations

import base64
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from privacy_support import PLANTED_BIRTH, HostileHub, edge_settings, planted_study, send, wait_for

from aifi.edge.config import EdgeSettings, HubPeer, load_edge_settings
from aifi.edge.service import EdgeService
from aifi.edge.state import EdgeState
from aifi.errors import ConfigError


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HostileHub]:
    hub = HostileHub(tmp_path / "hub")
    hub.server.start()
    yield hub
    hub.server.stop()


@pytest.fixture
def sent(tmp_path: Path, hub: HostileHub) -> Iterator[EdgeService]:
    """An edge that received a study and handed it to the hub (still running)."""
    edge = EdgeService(edge_settings(tmp_path, hub, hub.register("St. Example")))
    edge.start()
    try:
        send(edge, planted_study(2))
        wait_for(lambda: any(t.hub_task_id for t in edge.state.tasks()))
        yield edge
    finally:
        edge.stop()


def test_every_file_the_running_edge_wrote_is_owner_only(sent: EdgeService) -> None:
    data_dir = sent.settings.data_dir
    paths = [data_dir, *data_dir.rglob("*")]
    names = {p.name for p in paths}
    for expected in ("edge.db", "edge.db-wal", "audit.db", "pseudonyms.db", "received"):
        assert expected in names, f"{expected} not written"
    assert any(p.suffix == ".dcm" for p in paths), "no received instance on disk"
    loose = [
        (str(p.relative_to(data_dir.parent)), oct(stat.S_IMODE(p.stat().st_mode)))
        for p in paths
        if stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert loose == []
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    key = sent.settings.secret_key_path
    assert not key.is_relative_to(data_dir)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_edge_db_pairs_no_original_with_its_pseudonym_and_holds_no_birth_date(
    sent: EdgeService,
) -> None:
    db = sqlite3.connect(sent.settings.data_dir / "edge.db")
    try:
        pseudo_sops = [
            r[0] for r in db.execute("SELECT pseudo_sop_instance_uid FROM task_instances")
        ]
        pseudo_studies = [r[0] for r in db.execute("SELECT pseudo_study_uid FROM tasks")]
        attrs = [r[0] for r in db.execute("SELECT attrs FROM series")]
    finally:
        db.close()
    assert pseudo_sops and all(v.startswith("enc1:") for v in pseudo_sops)
    assert pseudo_studies and all(v.startswith("enc1:") for v in pseudo_studies)
    assert attrs and all(v.startswith("enc1:") for v in attrs)
    raw = (sent.settings.data_dir / "edge.db").read_bytes()
    raw += (sent.settings.data_dir / "edge.db-wal").read_bytes()
    assert PLANTED_BIRTH.encode() not in raw
    # the edge itself reads them as before; the birth date became the age rules need
    task = sent.state.tasks()[0]
    assert task.pseudo_study_uid is not None and task.pseudo_study_uid.startswith("2.25.")
    series = next(iter(sent.state.series_of(task.study_instance_uid).values()))
    assert "PatientBirthDate" not in series and series["PatientAge"]


def test_a_key_from_the_environment_is_used_and_nothing_is_written(
    tmp_path: Path, hub: HostileHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = bytes(range(32))
    monkeypatch.setenv("AIFI_EDGE_KEY", base64.b64encode(key).decode())
    settings = edge_settings(tmp_path, hub, hub.register("St. Example"))
    edge = EdgeService(settings)
    try:
        assert not settings.secret_key_path.exists()
        state = EdgeState(settings.data_dir / "edge.db", key=key)  # opens what the edge sealed
        state.close()
    finally:
        edge.stop()


def test_a_key_file_named_by_the_environment_is_where_the_key_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kms = tmp_path / "kms" / "edge.key"
    monkeypatch.setenv("AIFI_EDGE_KEY_FILE", str(kms))
    (tmp_path / "edge.toml").write_text('data_dir = "edge-data"\n', encoding="utf-8")
    assert load_edge_settings(tmp_path / "edge.toml").secret_key_path == kms


def test_production_refuses_a_key_inside_the_data_folder(tmp_path: Path) -> None:
    (tmp_path / "edge.toml").write_text(
        'environment = "production"\ndata_dir = "edge-data"\nkey_file = "edge-data/secret.key"\n'
        '[hub]\nurl = "https://hub.example"\ntoken = "a-real-token-from-the-hub"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="inside the data folder"):
        load_edge_settings(tmp_path / "edge.toml")


def test_production_refuses_plain_http_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain http"):
        EdgeSettings(
            environment="production",
            data_dir=tmp_path / "d",
            key_file=tmp_path / "k",
            hub=HubPeer(url="http://127.0.0.1:8000", token="a-real-token-from-the-hub"),
        )
    with pytest.raises(ValueError, match="plain http"):
        EdgeSettings(hub=HubPeer(url="http://hub.example"))  # development, not loopback
    ok = EdgeSettings(
        environment="production",
        data_dir=tmp_path / "d",
        key_file=tmp_path / "k",
        hub=HubPeer(url="https://hub.example", token="a-real-token-from-the-hub"),
    )
    assert ok.hub.url.startswith("https://")


def test_an_earlier_releases_readable_files_are_tightened_at_start(
    tmp_path: Path, hub: HostileHub
) -> None:
    settings = edge_settings(tmp_path, hub, hub.register("St. Example"))
    old = settings.data_dir / "received" / "old.dcm"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x")
    old.chmod(0o644)
    settings.data_dir.chmod(0o755)
    edge = EdgeService(settings)
    edge.stop()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
