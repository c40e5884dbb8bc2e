"""Pinned ONNX models: a file that does not match its manifest's SHA-256 is not run."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from aifi.algorithms.fracture import FractureDetection
from aifi.algorithms.fracture.algorithm import DEMO_STORE
from aifi.algorithms.onnx_model import PinnedModel, load_model_spec, sha256_of
from aifi.errors import ConfigError, ModelIntegrityError
from aifi.phantoms import fracture_study, write_study
from aifi.phantoms.write import as_algorithm_input


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A copy of the fracture demo model store."""
    return Path(shutil.copytree(DEMO_STORE, tmp_path / "store"))


def test_demo_weights_match_their_pins() -> None:
    for app, algorithm_id in (
        ("fracture", "fracture"),
        ("bone_age", "bone-age"),
        ("incidental_pe", "incidental-pe"),
    ):
        folder = DEMO_STORE.parent.parent / app / "weights"
        spec = load_model_spec(folder, algorithm_id)
        assert spec.demo is True
        assert sha256_of(spec.path.read_bytes()) == spec.sha256
        assert spec.path.stat().st_size < 2_000_000


def test_tampered_model_raises_model_integrity_error(store: Path, tmp_path: Path) -> None:
    algorithm = FractureDetection(model_store=store)
    inputs = as_algorithm_input(write_study(fracture_study(fracture=False, seed=2), tmp_path / "s"))
    algorithm.run(inputs)  # runs while the file matches
    model_file = store / "fracture-demo.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="but its manifest pins"):
        algorithm.run(inputs)
    with pytest.raises(ModelIntegrityError, match="it is not run"):
        FractureDetection(model_store=store).run(inputs)


def test_missing_model_file_raises_model_integrity_error(store: Path) -> None:
    (store / "fracture-demo.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match="cannot be read"):
        PinnedModel(load_model_spec(store, "fracture")).verify()


def test_missing_manifest_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no model manifest fracture\.toml"):
        FractureDetection(model_store=tmp_path)


def test_vendor_model_with_json_manifest(store: Path, tmp_path: Path) -> None:
    """A non-demo model: no demo flag, no disclaimer, the vendor's version in the manifest."""
    manifest = tomllib.loads((store / "fracture.toml").read_text(encoding="utf-8"))
    (store / "fracture.toml").unlink()
    (store / "fracture-demo.onnx").rename(store / "vendor.onnx")
    manifest.update(
        file="vendor.onnx",
        version="2.3.1",
        vendor="Example Vendor",
        demo=False,
        regulatory_status="CE class IIa (example)",
    )
    (store / "fracture.json").write_text(json.dumps(manifest), encoding="utf-8")
    algorithm = FractureDetection(model_store=store)
    assert algorithm.manifest.version == "2.3.1"
    assert algorithm.manifest.regulatory_status == "CE class IIa (example)"
    inputs = as_algorithm_input(write_study(fracture_study(fracture=False, seed=2), tmp_path / "s"))
    findings = algorithm.run(inputs)
    assert findings.demo_model is False
    assert "demo model" not in findings.summary


def test_bad_pin_is_a_config_error(store: Path) -> None:
    text = (store / "fracture.toml").read_text(encoding="utf-8")
    spec = load_model_spec(store, "fracture")
    (store / "fracture.toml").write_text(text.replace(spec.sha256, "abc"), encoding="utf-8")
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_model_spec(store, "fracture")
