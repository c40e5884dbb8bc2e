"""dicom3tools' IOD verifier, used to check that phantom instances are valid DICOM."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["dciodvfy_errors"]

DCIODVFY = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of ``dciodvfy`` for one file (warnings are allowed)."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
