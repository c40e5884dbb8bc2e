"""hub.toml: one typed settings object, placeholder secrets refused outside development."""

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
