"""The coded concepts aifi's algorithms report, one table for all of them.

Results are coded as IHE AI Results (AIR) and DICOM TID 1500 ask: the
headline finding, the "Finding" (121071, DCM) of every measurement group,
the measurements and the procedure reported use SNOMED CT (``SCT``), LOINC
(``LN``), DICOM's own codes (``DCM``) or UCUM units wherever the concept
exists there; aifi's private scheme ``99AIFI`` (PS3.16 §8.2: designators
beginning with "99" are private; declared in each object's Coding Scheme
Identification Sequence, PS3.3 C.12.1.1.4) is used only where none does.

Findings and presence (TID 1501 "Finding" and the qualitative evaluation
"Presence of property", values from CID 240 Presence Indicators):

=======================  =========  ==========  ====================================
concept                  scheme     value       meaning
=======================  =========  ==========  ====================================
finding (concept name)   DCM        121071      Finding
presence (concept name)  DCM        121052      Presence of property
present                  SCT        52101004    Present
absent                   SCT        272519000   Absent
doubtful                 SCT        42425007    Equivocal
pulmonary embolism       SCT        59282003    Pulmonary embolism
fracture                 SCT        125605004   Fracture of bone
bone age                 LN         85151-9     Bone age
normality (name)         DCM        121402      Normality
normal                   SCT        17621005    Normal
abnormal                 SCT        263654008   Abnormal
=======================  =========  ==========  ====================================

Measurements:

=======================  =========  ==========  ====================================
probability of PE        DCM        122157      Probability
chronological age        LN         30525-0     Age
bone age method (name)   LN         85150-1     Bone age method
fracture score           99AIFI     FXSCORE     Fracture likelihood score
bone age SDS             99AIFI     BASDS       Bone age standard deviation score
bone age assessment      99AIFI     BAASSESS    Bone age assessment
=======================  =========  ==========  ====================================

The fracture score is the detector's uncalibrated maximum, not a
probability, and the SDS is against the Greulich & Pyle atlas: no standard
concept says either, hence the private codes.

Procedure Reported (TID 1500 row 4, CID 100 style LOINC imaging procedures):

==========================  ======  ========  ==============================
study                       scheme  value     meaning
==========================  ======  ========  ==============================
chest CT (PE)               LN      24627-2   CT Chest
upper limb radiographs      LN      24689-2   XR Upper extremity Views
other limb radiographs      LN      43468-8   XR unspecified body region
hand for bone age           LN      37362-1   Bones X-ray bone age
connection test (any)       SCT     363679005 Imaging procedure
==========================  ======  ========  ==============================

Connection test (integrity-check), all private except the statistics it
reports with DCM and SCT codes (:mod:`aifi.algorithms.integrity_check`):

=====================  =========  ============  ==================================
pixel data digest      99AIFI     PIXSHA256     Pixel data SHA-256
decoding failure       99AIFI     DECODEFAIL    Pixel data decoding failure
finding                99AIFI     PIXINTEGRITY  Pixel data integrity
demo model notice      99AIFI     DEMOMODEL     Demo model notice
=====================  =========  ============  ==================================
"""

from __future__ import annotations

from aifi.core.findings import Code

__all__ = [
    "ABNORMAL",
    "ABSENT",
    "AIFI_SCHEME",
    "BONE_AGE",
    "BONE_AGE_ASSESSMENT",
    "BONE_AGE_METHOD",
    "BONE_AGE_SDS",
    "CHRONOLOGICAL_AGE",
    "CT_CHEST",
    "DECODING_FAILURE",
    "DEMO_MODEL_NOTICE",
    "EQUIVOCAL",
    "FINDING",
    "FRACTURE",
    "FRACTURE_SCORE",
    "IMAGING_PROCEDURE",
    "MONTHS",
    "NORMAL",
    "NORMALITY",
    "NO_UNITS",
    "PIXEL_DATA_INTEGRITY",
    "PIXEL_DATA_SHA256",
    "PRESENCE",
    "PRESENT",
    "PROBABILITY",
    "PULMONARY_EMBOLISM",
    "XR_BONE_AGE",
    "XR_UNSPECIFIED",
    "XR_UPPER_EXTREMITY",
]

AIFI_SCHEME = "99AIFI"
"""Coding Scheme Designator of aifi's private concepts (PS3.16 §8.2)."""

FINDING = Code("121071", "DCM", "Finding")
PRESENCE = Code("121052", "DCM", "Presence of property")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
EQUIVOCAL = Code("42425007", "SCT", "Equivocal")
NORMALITY = Code("121402", "DCM", "Normality")
NORMAL = Code("17621005", "SCT", "Normal")
ABNORMAL = Code("263654008", "SCT", "Abnormal")

PULMONARY_EMBOLISM = Code("59282003", "SCT", "Pulmonary embolism")
FRACTURE = Code("125605004", "SCT", "Fracture of bone")
BONE_AGE = Code("85151-9", "LN", "Bone age")

PROBABILITY = Code("122157", "DCM", "Probability")
CHRONOLOGICAL_AGE = Code("30525-0", "LN", "Age")
BONE_AGE_METHOD = Code("85150-1", "LN", "Bone age method")
FRACTURE_SCORE = Code("FXSCORE", AIFI_SCHEME, "Fracture likelihood score")
BONE_AGE_SDS = Code("BASDS", AIFI_SCHEME, "Bone age standard deviation score")
BONE_AGE_ASSESSMENT = Code("BAASSESS", AIFI_SCHEME, "Bone age assessment")

NO_UNITS = Code("1", "UCUM", "no units")
MONTHS = Code("mo", "UCUM", "month")

CT_CHEST = Code("24627-2", "LN", "CT Chest")
XR_UPPER_EXTREMITY = Code("24689-2", "LN", "XR Upper extremity Views")
XR_UNSPECIFIED = Code("43468-8", "LN", "XR unspecified body region")
XR_BONE_AGE = Code("37362-1", "LN", "Bones X-ray bone age")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")

PIXEL_DATA_SHA256 = Code("PIXSHA256", AIFI_SCHEME, "Pixel data SHA-256")
"""SHA-256 (hex) of decoded pixel data: :func:`aifi.algorithms.integrity_check.pixel_digest`."""

DECODING_FAILURE = Code("DECODEFAIL", AIFI_SCHEME, "Pixel data decoding failure")
"""Why the pixel data of an image could not be decoded."""

PIXEL_DATA_INTEGRITY = Code("PIXINTEGRITY", AIFI_SCHEME, "Pixel data integrity")
"""What the connection test examines: whether pixel data crossed the connection unchanged."""

DEMO_MODEL_NOTICE = Code("DEMOMODEL", AIFI_SCHEME, "Demo model notice")
"""The result comes from a demonstration model and is not for clinical use."""
