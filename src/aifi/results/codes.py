"""aifi's private coded concepts, and the declaration of their coding scheme.

Where neither DCM, SCT, LOINC nor UCUM has a concept for what aifi reports,
aifi uses its own private coding scheme. PS3.16 §8.2 (private coding
schemes) reserves designators beginning with "99" for local use; a private
scheme used in an object is identified in the Coding Scheme Identification
Sequence (0008,0110) of the SOP Common Module (PS3.3 C.12.1.1.4), which
:data:`AIFI_CODING_SCHEME` provides.
"""

from __future__ import annotations

import highdicom as hd

from aifi.algorithms.base import Code

__all__ = [
    "AIFI_CODING_SCHEME",
    "AIFI_SCHEME",
    "DECODING_FAILURE",
    "DEMO_MODEL_NOTICE",
    "PIXEL_DATA_SHA256",
]

AIFI_SCHEME = "99AIFI"
"""Coding Scheme Designator of aifi's private concepts (PS3.16 §8.2)."""

PIXEL_DATA_SHA256 = Code("PIXSHA256", AIFI_SCHEME, "Pixel data SHA-256")
"""SHA-256 (hex) of decoded pixel data: :func:`aifi.algorithms.integrity_check.pixel_digest`."""

DECODING_FAILURE = Code("DECODEFAIL", AIFI_SCHEME, "Pixel data decoding failure")
"""Why the pixel data of an image could not be decoded."""

DEMO_MODEL_NOTICE = Code("DEMOMODEL", AIFI_SCHEME, "Demo model notice")
"""The result comes from a demonstration model and is not for clinical use."""

AIFI_CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=AIFI_SCHEME,
    name="aifi private concepts",
    responsible_organization="aifi",
)
"""Item of the Coding Scheme Identification Sequence (0008,0110) declaring ``99AIFI``."""
