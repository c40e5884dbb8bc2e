"""Test-wide configuration: real DICOM peers as fixtures.

``peers.orthanc`` provides the ``orthanc`` fixture (a fresh Orthanc on
loopback), ``peers.dcmtk`` the ``storescp`` fixture and the ``storescu`` /
``echoscu`` helpers. This folder is put on ``sys.path`` so that test modules
anywhere under ``tests/`` can ``from peers.dcmtk import storescu``.

A test that uses the ``orthanc`` or ``storescp`` fixture is marked
``orthanc`` or ``dcmtk`` automatically, so ``-m "not orthanc"`` deselects it;
``peers.postgres`` provides a throwaway PostgreSQL (``postgres_cluster``,
``postgres_database``), and a test using it is marked ``postgresql``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

pytest_plugins = ["peers.orthanc", "peers.dcmtk", "peers.postgres"]

_FIXTURE_MARKERS = {
    "orthanc": "orthanc",
    "storescp": "dcmtk",
    "postgres_cluster": "postgresql",
    "postgres_database": "postgresql",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in _FIXTURE_MARKERS:
                item.add_marker(_FIXTURE_MARKERS[fixture])
