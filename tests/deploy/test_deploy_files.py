"""The deployment files name commands that exist and parse as what they claim to be.

What runs here: ``systemd-analyze verify`` on each unit (with the venv's
``aifi`` in place of /opt/aifi), the Kubernetes manifests parsed and each
container's command checked against ``aifi hub <kind> --help``. Not run here:
a container build and a cluster (no container runtime, no Kubernetes on the
development machine; docs/deployment.md says so).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aifi.hub.config import load_hub_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
KINDS = {"api", "worker", "janitor", "migrate"}


def _aifi_help(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aifi", "hub", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_there_is_a_unit_per_process_kind() -> None:
    assert {re.sub(r"@?\.service$", "", u.name).removeprefix("aifi-hub-") for u in UNITS} == KINDS


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_each_systemd_unit_verifies(unit: Path, tmp_path: Path) -> None:
    aifi = Path(sys.executable).with_name("aifi")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/aifi/venv/bin/aifi", str(aifi)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in done.stderr.splitlines()
        if "aifi-hub-migrate.service" not in line  # the sibling unit is not installed here
    ]
    assert problems == [], done.stderr
    command = re.search(r"^ExecStart=\S+ hub (.+?) --config", unit.read_text(), re.M)
    assert command is not None
    args = command.group(1).replace("%i", "cpu").split()
    assert _aifi_help(*args).returncode == 0, args


def test_the_kubernetes_layout_runs_each_kind_with_commands_that_exist(tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "hub.yaml").read_text()))
    kinds = {d["kind"] for d in documents}
    assert {"Job", "Deployment", "Service", "ConfigMap"} <= kinds
    seen = set()
    for document in documents:
        if document["kind"] not in ("Job", "Deployment"):
            continue
        spec = document["spec"]["template"]["spec"]
        for container in spec["containers"]:
            kind = re.search(r"aifi-hub-([a-z]+)", container["image"])
            assert kind is not None
            seen.add(kind.group(1))
            assert _aifi_help(kind.group(1), *container["args"]).returncode == 0, container
        if document["metadata"]["name"] == "aifi-hub-janitor":
            assert document["spec"]["replicas"] == 1
        if document["metadata"]["name"].endswith("-gpu"):
            assert "nodeSelector" in spec
    assert seen == KINDS
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["hub.toml"]
    (tmp_path / "hub.toml").write_text(config)
    settings = load_hub_settings(tmp_path / "hub.toml", environ={})
    assert settings.object_store == "s3"
    assert settings.environment == "production"
