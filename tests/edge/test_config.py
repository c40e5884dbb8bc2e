"""edge.toml is strict: a typo is refused at start with the section and key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aifi.cli import app
from aifi.edge.config import load_edge_settings
from aifi.errors import ConfigError

GOOD = """
quiet_period_s = 2
[listener]
port = 11112
allowed_calling_aets = ["PACS"]
[hub]
url = "http://127.0.0.1:8000"
[pacs]
ae_title = "PACS"
host = "127.0.0.1"
port = 4242
[retention]
keep_delivered_days = 0.5
max_failed_age_days = 14
[[rules]]
name = "CT to PE"
algorithm = "incidental-pe"
match = { Modality = ["CT"] }
"""


def load(tmp_path: Path, text: str) -> str:
    config = tmp_path / "edge.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_edge_settings(config)
    return str(caught.value)


def test_a_good_file_loads(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(GOOD, encoding="utf-8")
    settings = load_edge_settings(config)
    assert settings.rules[0].match == {"Modality": ["CT"]}
    assert settings.retention.keep_delivered_days == 0.5
    assert settings.data_dir == tmp_path / "edge-data"


def test_a_rule_with_mach_instead_of_match_is_refused(tmp_path: Path) -> None:
    # Ignored, this rule would match every image and send a CR study to the PE algorithm.
    message = load(tmp_path, GOOD.replace("match = {", "mach = {"))
    assert "unknown key 'mach' in [[rules]] #1 (did you mean 'match'?)" in message


def test_a_misspelt_section_is_named(tmp_path: Path) -> None:
    message = load(tmp_path, GOOD.replace("[listener]", "[listner]"))
    assert "unknown section [listner] (did you mean [listener]?)" in message


def test_unknown_keys_are_refused_in_every_section(tmp_path: Path) -> None:
    for section, typo in (
        ("[listener]", "ae_tilte"),
        ("[hub]", "tokn"),
        ("[pacs]", "aetitle"),
        ("[retention]", "keep_days"),
    ):
        message = load(tmp_path, GOOD.replace(section, f'{section}\n{typo} = "x"'))
        assert f"unknown key {typo!r} in {section}" in message, message
    assert "unknown key 'quiet_period' at the top level" in load(
        tmp_path, "quiet_period = 5\n" + GOOD
    )
    ris = GOOD + '[ris]\nhost = "127.0.0.1"\nport = 2575\nreceiving_app = "RIS"\n'
    assert "unknown key 'receiving_app' in [ris]" in load(tmp_path, ris)


def test_a_rule_on_a_misspelt_dicom_keyword_is_refused(tmp_path: Path) -> None:
    message = load(tmp_path, GOOD.replace("Modality = ", "Modalty = "))
    assert "[[rules]] #1 match: Modalty is not a DICOM keyword" in message


def test_the_cli_says_what_is_wrong_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(GOOD.replace("[listener]", "[listner]"), encoding="utf-8")
    result = CliRunner().invoke(app, ["edge", "check", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown section [listner] (did you mean [listener]?)" in result.output
    assert "Traceback" not in result.output
