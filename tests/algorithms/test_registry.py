"""The registry: algorithms by manifest id."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifi.algorithms import registry
from aifi.algorithms.base import Algorithm
from aifi.algorithms.fracture.algorithm import DEMO_STORE
from aifi.errors import AlgorithmError, ConfigError, ModelIntegrityError


def test_integrity_check_is_registered() -> None:
    algorithm = registry.get("integrity-check")

    assert isinstance(algorithm, Algorithm)
    assert algorithm.manifest.id == "integrity-check"
    assert "integrity-check" in registry.available()
    assert "integrity-check" in [m.id for m in registry.manifests()]


def test_unknown_id_names_the_available_ones() -> None:
    with pytest.raises(AlgorithmError, match=r"no algorithm 'nope'.*integrity-check"):
        registry.get("nope")


def test_available_is_a_copy() -> None:
    registry.available().clear()

    assert "integrity-check" in registry.available()


def test_every_registered_algorithm_is_keyed_by_its_manifest_id() -> None:
    algorithms = registry.available()

    assert algorithms
    for algorithm_id, algorithm in algorithms.items():
        assert algorithm.manifest.id == algorithm_id
    assert [m.id for m in registry.manifests()] == sorted(algorithms)


def test_an_entry_may_name_a_class_that_makes_the_algorithm() -> None:
    algorithm = registry._make("aifi.algorithms.integrity_check:IntegrityCheck")

    assert algorithm.manifest.id == "integrity-check"


def test_an_entry_that_is_no_algorithm_is_refused() -> None:
    with pytest.raises(AlgorithmError, match="MANIFEST"):
        registry._make("aifi.algorithms.integrity_check:MANIFEST")


def model_store(folder: Path, *, version: str = "2.3.1", damage: bool = False) -> Path:
    """A model store holding the fracture demo model as a vendor's release ``version``."""
    demo = DEMO_STORE
    folder.mkdir(exist_ok=True)
    onnx = (demo / "fracture-demo.onnx").read_bytes()
    (folder / "fracture-vendor.onnx").write_bytes(onnx + (b"\0" if damage else b""))
    manifest = (demo / "fracture.toml").read_text(encoding="utf-8")
    manifest = manifest.replace('version = "0.1.0-demo"', f'version = "{version}"')
    manifest = manifest.replace('file = "fracture-demo.onnx"', 'file = "fracture-vendor.onnx"')
    manifest = manifest.replace('vendor = "aifi project (demo weights)"', 'vendor = "Example AB"')
    (folder / "fracture.toml").write_text(manifest, encoding="utf-8")
    return folder


def test_a_model_in_the_store_replaces_the_built_in_one(tmp_path: Path) -> None:
    store = model_store(tmp_path / "models")

    installation = registry.install(model_dir=store)

    assert installation("fracture").manifest.version == "2.3.1"
    assert installation("fracture").manifest.vendor == "Example AB"
    assert installation.entries["fracture"].source == str(store / "fracture.toml")
    assert installation.entries["bone-age"].source == "built-in"
    assert installation.runnable("fracture") is installation("fracture")
    assert registry.get("fracture").manifest.version == "0.1.0-demo"


def test_a_model_not_matching_its_pin_is_refused_and_the_others_still_run(
    tmp_path: Path,
) -> None:
    store = model_store(tmp_path / "models", damage=True)

    installation = registry.install(model_dir=store)

    refused = installation.entries["fracture"]
    assert refused.refused is not None
    assert "SHA-256" in refused.refused and "it is not run" in refused.refused
    assert installation("fracture").manifest.version == "2.3.1"  # the catalog still lists it
    with pytest.raises(ModelIntegrityError, match="manifest pins"):
        installation.runnable("fracture")
    assert installation.runnable("bone-age").manifest.id == "bone-age"
    assert installation.entries["bone-age"].refused is None


def test_a_store_file_for_no_algorithm_is_refused(tmp_path: Path) -> None:
    store = model_store(tmp_path / "models")
    (store / "fracture.toml").rename(store / "fractur.toml")

    with pytest.raises(ConfigError, match=r"fractur\.toml, but no algorithm 'fractur'"):
        registry.install(model_dir=store)


def test_a_remote_algorithm_may_not_take_a_built_in_id(tmp_path: Path) -> None:
    (tmp_path / "fracture.remote.toml").write_text(
        'id = "fracture"\nversion = "1"\nname = "x"\nvendor = "v"\nintended_use = "u"\n'
        'regulatory_status = "r"\nendpoint = "https://vendor.example"\ntoken_env = "T"\n',
        encoding="utf-8",
    )

    with pytest.raises(AlgorithmError, match="also an in-process algorithm"):
        registry.install(remote_dir=tmp_path, environ={"T": "secret"})
    with pytest.raises(ConfigError, match="set the environment variable T"):
        registry.install(remote_dir=tmp_path, environ={})
