"""The layers' import directions (shared/STYLE.md, "The layers"), held by import-linter.

The contracts are in pyproject.toml (``[tool.importlinter]``): the contract
layer (``aifi.core``, ``aifi.protocol``; ``aifi.dicom``, which imports only
``aifi.core``) imports nothing else of aifi, the edge never imports the hub,
algorithms and results do not import each other.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 kept, 0 broken" in done.stdout
