"""Which options of the Basic Application Level Confidentiality Profile apply.

DICOM PS3.15 E.3 describes the options; PS3.16 CID 7050 "De-identification
Method" holds the code that marks each one in Deidentification Method Code
Sequence (0012,0064). A hospital chooses options per algorithm; the edge
builds one :class:`DeidOptions` for each.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CID_7050", "DeidOptions"]

#: PS3.16 CID 7050 De-identification Method: code value -> code meaning (scheme DCM).
CID_7050: dict[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}


@dataclass(frozen=True)
class DeidOptions:
    """The profile options applied on top of the Basic Profile (PS3.15 E.3).

    ``DeidOptions()`` is the Basic Profile with the Clean Pixel Data Option,
    which here means: an instance that has, or may have, burned-in text is
    refused rather than sent.

    * ``retain_patient_characteristics`` — E.3.6: sex, age, size, weight,
      smoking and pregnancy status, ethnic group are kept.
    * ``retain_longitudinal_modified_dates`` — E.3.6: dates and times are
      shifted by a keyed, per-patient number of days instead of removed, so
      intervals between studies survive.
    * ``clean_descriptors`` — E.3.5: descriptions are kept once identifying
      text (names, IDs, dates, numbers of the same instance) is removed.
    * ``clean_graphics`` — E.3.3: overlays, curves and graphic annotations
      are removed entirely (the Basic Profile already removes overlay and
      curve data and empties graphic annotations of their text).
    * ``clean_pixel_data`` — E.3.1: instances with burned-in text are refused.
    """

    retain_patient_characteristics: bool = False
    retain_longitudinal_modified_dates: bool = False
    clean_descriptors: bool = False
    clean_graphics: bool = False
    clean_pixel_data: bool = True

    def codes(self) -> list[str]:
        """CID 7050 code values of the profile and of every option applied, in code order."""
        chosen = ["113100"]
        if self.clean_pixel_data:
            chosen.append("113101")
        if self.clean_graphics:
            chosen.append("113103")
        if self.clean_descriptors:
            chosen.append("113105")
        if self.retain_longitudinal_modified_dates:
            chosen.append("113107")
        if self.retain_patient_characteristics:
            chosen.append("113108")
        return chosen
