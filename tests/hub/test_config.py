"""hub.toml: one typed settings object, placeholder secrets refused outside development.

These read settings only and open no database, so they run once; the
settings reaching a real PostgreSQL are tested by test_cli.py and
test_process_kinds.py on both databases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.errors import ConfigError
from aifi.hub.config import load_hub_settings


def test_settings_from_a_hub_table_with_a_relative_data_dir(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nport = 9443\nworkers = 4\ndata_dir = "var/hub"\n', encoding="utf-8")

    settings = load_hub_settings(config)

    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 9443, 4)
    assert settings.data_dir == tmp_path / "var" / "hub"
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'var' / 'hub' / 'hub.sqlite'}"


def test_placeholder_database_password_is_refused_in_production(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        'environment = "production"\n'
        'database_url = "postgresql+psycopg://aifi:change-me@db.example/aifi"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="placeholder"):
        load_hub_settings(config)


def test_placeholder_password_is_accepted_in_development(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        'database_url = "postgresql+psycopg://aifi:change-me@localhost/aifi"\n', encoding="utf-8"
    )
    assert load_hub_settings(config).environment == "development"


@pytest.mark.parametrize(
    ("text", "message"),
    [("port = 'eighty'", "port"), ("unknown_key = 1", "unknown_key"), ("port = ", "TOML")],
)
def test_invalid_settings_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_hub_settings(config)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_hub_settings(tmp_path / "nope.toml")


def test_environment_variables_win_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "other-models").mkdir()
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nport = 9443\nworkers = 4\nmodel_dir = "models"\n', encoding="utf-8")

    settings = load_hub_settings(
        config,
        {"AIFI_HUB_PORT": "9555", "AIFI_HUB_MODEL_DIR": str(tmp_path / "other-models")},
    )

    assert settings.port == 9555
    assert settings.workers == 4
    assert settings.model_dir == tmp_path / "other-models"
    assert load_hub_settings(config, {}).model_dir == tmp_path / "models"


def test_algorithm_folders_are_taken_from_the_files_folder(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "remote").mkdir()
    config = tmp_path / "hub.toml"
    config.write_text('model_dir = "models"\nremote_algorithms_dir = "remote"\n', encoding="utf-8")

    settings = load_hub_settings(config, {})

    assert (settings.model_dir, settings.remote_algorithms_dir) == (
        tmp_path / "models",
        tmp_path / "remote",
    )
    assert settings.data_dir == tmp_path / "hub-data"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hub]\nport = 9000\n[listner]\nport = 1\n", r"section \[listner\] sits outside"),
        ("port = 9000\n[hubb]\nport = 1\n", r"section \[hubb\] is not a hub setting"),
        ('[hub]\nmodel_dirs = "models"\n', "key 'model_dirs' is not a hub setting"),
        ('model_dir = "no-such-folder"\n', "no-such-folder is not a folder"),
    ],
)
def test_unknown_keys_and_sections_are_refused(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_hub_settings(config, {})


def test_an_unknown_or_invalid_variable_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AIFI_HUB_MODEL_DIRS is not a hub setting"):
        load_hub_settings(None, {"AIFI_HUB_MODEL_DIRS": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"port \(from AIFI_HUB_PORT\)"):
        load_hub_settings(None, {"AIFI_HUB_PORT": "eighty"})
