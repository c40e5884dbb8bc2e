"""DICOM plumbing, once: the walker, the Part 10 writer, multipart and the status table.

* :mod:`aifi.dicom.walker` — the one walk over encoded data elements (PS3.5 §7);
* :mod:`aifi.dicom.encode` — writing data elements (PS3.5 §7.1);
* :mod:`aifi.dicom.part10` — File Meta Information with aifi's one
  Implementation Class UID (PS3.10 §7.1);

Part of the contract layer: it imports pydicom, pynetdicom and
:mod:`aifi.core`, nothing else of aifi (an import-linter contract holds it
to that).
"""
