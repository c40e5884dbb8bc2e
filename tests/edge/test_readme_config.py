"""The edge.toml of the README is a configuration the edge accepts, as written."""

from __future__ import annotations

import re
from pathlib import Path

from aifi.edge.config import load_edge_settings

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_edge_toml_is_accepted(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"`edge\.toml`:\s*```toml\n(.*?)```", text, re.S)
    assert block is not None, "the README lost its edge.toml block"
    (tmp_path / "edge.toml").write_text(block.group(1), encoding="utf-8")
    settings = load_edge_settings(tmp_path / "edge.toml")
    assert settings.environment == "production"
    assert settings.ris is not None and settings.fhir is not None
    assert settings.rules[0].algorithm == "integrity-check"
