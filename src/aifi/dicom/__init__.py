"""DICOM plumbing, once: the walker, the Part 10 writer, multipart and the status table.

* :mod:`aifi.dicom.walker` — the one walk over encoded data elements (PS3.5 §7);
* :mod:`aifi.dicom.encode` — writing data elements (PS3.5 §7.1);
* :mod:`aifi.dicom.part10` — File Meta Information with aifi's one
  Implementation Class UID (PS3.10 §7.1);
* :mod:`aifi.dicom.multipart` — multipart/related bodies of DICOMweb,
  written and read as streams (PS3.18 §8.6.1.2);
* :mod:`aifi.dicom.status` — the DICOM status codes, their names and
  classes (PS3.7 C.1, PS3.4), and the STOW-RS HTTP mapping (PS3.18 §10.5.3).

Part of the contract layer: it imports pydicom, python-multipart and
:mod:`aifi.core`, nothing else of aifi (an import-linter contract holds it
to that).
"""
