"""Real DICOM peers for tests: Orthanc and dcmtk, started on loopback ports.

Registered as pytest plugins by ``tests/conftest.py``, so the fixtures
``orthanc`` and ``storescp`` are available in every test directory; import
helpers as ``from peers.dcmtk import storescu`` or
``from peers.orthanc import Orthanc``.
"""
