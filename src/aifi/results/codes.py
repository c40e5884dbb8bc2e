"""The declaration of aifi's private coding scheme, for the objects that use it.

The concepts themselves, standard and private, are tabled in
:mod:`aifi.algorithms.codes` (what the algorithms report). Where neither
DCM, SCT, LOINC nor UCUM has a concept for what aifi reports, aifi uses its
own private coding scheme ``99AIFI``: PS3.16 §8.2 (private coding schemes)
reserves designators beginning with "99" for local use; a private scheme
used in an object is identified in the Coding Scheme Identification
Sequence (0008,0110) of the SOP Common Module (PS3.3 C.12.1.1.4), which
:data:`AIFI_CODING_SCHEME` provides.
"""

from __future__ import annotations

import highdicom as hd

from aifi.core.codes import (
    AIFI_SCHEME,
    DECODING_FAILURE,
    DEMO_MODEL_NOTICE,
    PIXEL_DATA_SHA256,
)

__all__ = [
    "AIFI_CODING_SCHEME",
    "AIFI_SCHEME",
    "DECODING_FAILURE",
    "DEMO_MODEL_NOTICE",
    "PIXEL_DATA_SHA256",
]

AIFI_CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=AIFI_SCHEME,
    name="aifi private concepts",
    responsible_organization="aifi",
)
"""Item of the Coding Scheme Identification Sequence (0008,0110) declaring ``99AIFI``."""
