"""Value-level helpers of the profile: dummy values, cleaned text, shifted dates, age.

* Dummy values (action D, PS3.15 E.1.1) are fixed, VR-conformant, and carry
  nothing of the original.
* Cleaning (action C on descriptors, E.3.5) is :mod:`aifi.deid.descriptors`:
  a text keeps only words of a vocabulary known to be safe.
* Date shifting (E.3.6, Modified Dates) moves DA and DT values back by whole
  days; times of day stay, so intervals and ages survive.
* Age (PS3.5 Table 6.2-1, VR AS) is computed from birth date and study date.
* Form (PS3.5 Table 6.2-1): a kept coded string, number, age, time or UID
  passes only when its value has the form of its VR, so no free text hides
  in a CS or DS element.
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = [
    "AGE_CAP_YEARS",
    "FORM_VRS",
    "age_string",
    "cap_age",
    "conforms",
    "dummy_value",
    "shift_date",
    "shift_datetime",
]

_DUMMIES: dict[str, str] = {
    "PN": "ANONYMIZED",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000.00",
    "DT": "19000101000000.000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "UR": "",
}

#: One value of each VR whose form PS3.5 Table 6.2-1 restricts (bytes, padding stripped).
_FORMS = {
    "CS": re.compile(rb"[A-Z0-9 _]{0,16}"),
    "DS": re.compile(rb" *[0-9+\-Ee.]{0,16} *"),
    "IS": re.compile(rb" *[0-9+\-]{0,12} *"),
    "AS": re.compile(rb"(?:\d{3}[DWMY])?"),
    "TM": re.compile(rb"[0-9.: ]{0,28}"),
    "DA": re.compile(rb"(?:\d{8})?(?:-(?:\d{8})?)?"),
    "DT": re.compile(rb"[0-9.+\- ]{0,54}"),
    "UI": re.compile(rb"[0-9.]{0,64}"),
}
#: The VRs :func:`conforms` checks.
FORM_VRS = frozenset(_FORMS)


def conforms(vr: str, value: bytes) -> bool:
    """Whether every value of ``value`` has the form ``vr`` allows (True for unrestricted VRs)."""
    form = _FORMS.get(vr)
    if form is None:
        return True
    return all(form.fullmatch(part) for part in value.rstrip(b"\0 ").split(b"\\"))


def dummy_value(vr: str) -> str:
    """A fixed value for action D that is valid for ``vr`` (empty for binary VRs)."""
    return _DUMMIES.get(vr, "")


def _parse_da(value: str) -> dt.date | None:
    value = value.strip()
    try:
        if len(value) == 8 and value.isdigit():
            return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        if len(value) == 10 and value[4] == "." and value[7] == ".":  # ACR-NEMA form
            return dt.date(int(value[:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return None
    return None


def shift_date(value: str, days: int) -> str:
    """A DA value (or a range/multi-value of them) moved back by ``days``; unparseable -> ''."""
    out = []
    for part in value.split("\\"):
        pieces = []
        for piece in part.split("-"):
            if not piece.strip():
                pieces.append("")
                continue
            date = _parse_da(piece)
            if date is None:
                return ""
            pieces.append((date - dt.timedelta(days=days)).strftime("%Y%m%d"))
        out.append("-".join(pieces))
    return "\\".join(out)


def shift_datetime(value: str, days: int) -> str:
    """A DT value moved back by ``days``; time of day and offset kept; unparseable -> ''."""
    out = []
    for part in value.split("\\"):
        part = part.strip()
        if len(part) < 8:
            return ""
        date = _parse_da(part[:8])
        if date is None:
            return ""
        out.append((date - dt.timedelta(days=days)).strftime("%Y%m%d") + part[8:])
    return "\\".join(out)


#: Ages above this many years are given as this many years: very old people are few enough
#: to be recognised (the HIPAA Safe Harbor rule aggregates ages over 89 the same way).
AGE_CAP_YEARS = 90


def cap_age(age: str) -> str:
    """An AS value with ages of :data:`AGE_CAP_YEARS` and more written as that cap."""
    if len(age) == 4 and age[:3].isdigit() and age[3] == "Y" and int(age[:3]) >= AGE_CAP_YEARS:
        return f"{AGE_CAP_YEARS:03d}Y"
    return age


def age_string(birth_date: str, on_date: str) -> str | None:
    """Age on ``on_date`` (DA) of someone born on ``birth_date`` (DA), as an AS value.

    PS3.5 Table 6.2-1: ``nnnD`` under 4 weeks... here years from 2 years on
    (``012Y``), months under 2 years (``011M``), weeks under 2 months,
    days under 2 weeks; None when either date is missing or unparseable.
    """
    born, then = _parse_da(birth_date), _parse_da(on_date)
    if born is None or then is None or then < born:
        return None
    days = (then - born).days
    months = (then.year - born.year) * 12 + then.month - born.month - (then.day < born.day)
    if months >= 24:
        return f"{min(months // 12, 999):03d}Y"
    if days >= 61:
        return f"{months:03d}M"
    if days >= 14:
        return f"{days // 7:03d}W"
    return f"{days:03d}D"
