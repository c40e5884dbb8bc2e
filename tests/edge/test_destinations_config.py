"""``edge.toml`` for DICOM TLS, the called AE title and several result destinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.edge.config import EdgeSettings, load_edge_settings
from aifi.errors import ConfigError

BASE = """
[listener]
allowed_calling_aets = ["PACS"]
check_called_ae_title = true

[listener.tls]
cert = "/etc/aifi/edge.pem"
key = "/etc/aifi/edge.key"
ca_bundle = "/etc/aifi/hospital-ca.pem"
require_client_cert = true

[pacs]
ae_title = "PACS"
host = "pacs.hospital.example"
port = 2762
commitment = true

[pacs.tls]
cert = "/etc/aifi/edge.pem"
key = "/etc/aifi/edge.key"
ca_bundle = "/etc/aifi/hospital-ca.pem"
"""


def _load(tmp_path: Path, text: str) -> EdgeSettings:
    path = tmp_path / "edge.toml"
    path.write_text(text, encoding="utf-8")
    return load_edge_settings(path)


def test_pacs_is_the_first_destination_and_the_others_follow(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        BASE
        + """
[[destinations]]
name = "vna"
ae_title = "VNA"
host = "vna.hospital.example"
port = 104
result_kinds = ["sr", "sc"]
transfer_syntax = ["1.2.840.10008.1.2.1"]
max_attempts = 10

[[destinations]]
name = "research"
ae_title = "RESEARCH"
host = "10.0.0.9"
port = 11112
""",
    )
    destinations = settings.result_destinations
    assert [d.name for d in destinations] == ["pacs", "vna", "research"]
    assert destinations[0].commitment and destinations[0].tls is not None
    assert destinations[1].result_kinds == ["sr", "sc"] and destinations[1].max_attempts == 10
    assert destinations[2].result_kinds is None  # the hospital's result_kinds apply
    assert settings.listener.check_called_ae_title
    assert settings.listener.tls is not None and settings.listener.tls.require_client_cert


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[[destinations]]\nname = "pacs"\nae_title = "X"\nhost = "h"\nport = 1\n',
            "name 'pacs' is used twice",
        ),
        (
            '[[query_retrieve]]\nmethod = "dicomweb"\nurl = "http://pacs/dicom-web"\n'
            '[query_retrieve.tls]\ncert = "edge.pem"\n',
            "with a tls table needs an https:// url",
        ),
        (
            '[[destinations]]\nname = "vna"\nae_title = "X"\nhost = "h"\nport = 1\n'
            'transfer_syntax = ["1.2.840.10008.5.1.4.1.1.2"]\n',
            "is not a transfer syntax UID",
        ),
        (
            '[[destinations]]\nname = "vna"\nae_title = "X"\nhost = "h"\nport = 1\n'
            'result_kind = ["sr"]\n',
            "did you mean 'result_kinds'",
        ),
    ],
)
def test_a_wrong_destination_is_refused_with_a_reason(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, BASE + extra)


def test_missing_certificate_files_are_named(tmp_path: Path) -> None:
    from aifi.edge.tls import TlsSettings, server_context

    with pytest.raises(ConfigError, match="cannot load the certificate files"):
        server_context(TlsSettings(cert=tmp_path / "none.pem", key=tmp_path / "none.key"))


def test_relative_certificate_paths_are_read_from_the_files_folder(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        '[listener]\nallowed_calling_aets = ["PACS"]\n\n[listener.tls]\n'
        'cert = "certs/edge.pem"\nkey = "certs/edge.key"\nca_bundle = "/etc/ca.pem"\n',
    )
    tls = settings.listener.tls
    assert tls is not None
    assert tls.cert == tmp_path / "certs" / "edge.pem"
    assert tls.ca_bundle == Path("/etc/ca.pem")


def test_each_destination_may_ask_for_commitment_and_a_pull_peer_for_tls(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        BASE + '[[destinations]]\nname = "vna"\nae_title = "VNA"\nhost = "h"\nport = 1\n'
        "commitment = true\n\n"
        '[[query_retrieve]]\nae_title = "PACS"\nhost = "h"\nport = 104\n'
        '[query_retrieve.tls]\ncert = "certs/edge.pem"\nkey = "certs/edge.key"\n',
    )
    assert [d.commitment for d in settings.result_destinations][-1]
    tls = settings.query_retrieve[0].tls
    assert tls is not None and tls.cert == tmp_path / "certs" / "edge.pem"
