"""The CLI starts without the heavy parts of the programs it fronts.

``aifi --help`` and every sub-command's ``--help`` must not import the
database layer, the web framework, the DICOM network stack or the inference
runtime: a script that calls ``aifi pseudonymize`` should not pay for the
hub. Checked structurally (``sys.modules`` after the command ran, in a fresh
interpreter), not by timing; ``bench/cli_start.py`` measures the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("sqlalchemy", "fastapi", "starlette", "uvicorn", "pynetdicom", "onnxruntime", "pydicom")

_PROBE = """
import json, sys
from aifi.cli import app
try:
    app(sys.argv[1:], prog_name="aifi")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _modules_after(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, done.stdout + done.stderr
    assert "Usage" in done.stdout
    return {name.split(".")[0] for name in report["modules"]}


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("hub", "--help"),
        ("hub", "serve", "--help"),
        ("edge", "--help"),
        ("edge", "serve", "--help"),
        ("edge", "policy", "--help"),
        ("audit", "--help"),
        ("pseudonymize", "--help"),
        ("demo", "--help"),
    ],
    ids=lambda args: " ".join(args),
)
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    loaded = _modules_after(*args)
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_help_does_not_build_typers_pydantic_coercion() -> None:
    """typer builds pydantic adapters for absent flags unless told to wait (aifi.cli._startup)."""
    assert "pydantic" not in _modules_after("hub", "--help")


def test_values_are_still_coerced_and_checked(tmp_path: Path) -> None:
    """The deferred coercion is typer's own once a value arrives: bad values are refused."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aifi",
            "pseudonymize",
            "--key-file",
            str(tmp_path / "k"),
            "--jobs",
            "many",
            str(tmp_path),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Invalid value for '--jobs'" in done.stderr
