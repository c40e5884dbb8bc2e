"""Clean Descriptors to a vocabulary known to be safe (PS3.15 E.3.5), and the check of it.

PS3.15 E.3.5 lets descriptions pass once "cleaned" of identifying text. Finding
identifying words is guesswork; aifi turns it around: a cleaned text keeps
only tokens known to be safe, namely the words of ``data/descriptor_vocabulary.txt``
(anatomy, views, technique, contrast agents, units, equipment makers), small
numbers with an optional unit (``1.25``, ``120kV``, ``3mm``) and kernel codes
(``B30f``, ``FC08``). Everything else goes, so a name, an ID or a date typed into
a description never leaves.

The edge cleans (:func:`clean_descriptor`); the hub checks the same rule
(:func:`is_clean_descriptor`) independently. A hospital may pass its own,
larger vocabulary (:func:`load_vocabulary` with extra words); the hub must
know those words too, or it refuses what they let through.

Coded values (Code Value, Coding Scheme Designator, Coding Scheme Version,
PS3.3 8.1) are not free text: :func:`is_code` checks their syntax.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources

__all__ = [
    "Vocabulary",
    "clean_descriptor",
    "default_vocabulary",
    "is_clean_descriptor",
    "is_code",
    "load_vocabulary",
]

#: A set of case-folded words.
Vocabulary = frozenset[str]

_SEPARATORS = re.compile(r"[\s/,;:()\[\]{}^=_\\\-'\"*|]+")
_NUMBER = re.compile(
    r"\d{1,3}(?:[.,]\d{1,3})?(?:mm|cm|ml|kv|kvp|mas|ma|mg|mgi|ms|s|h|%|x|mgi/ml)?", re.IGNORECASE
)
_KERNEL = re.compile(r"[a-z]{1,2}\d{2,3}[a-z]?", re.IGNORECASE)
_SIZE = re.compile(r"\d{1,3}(?:cm|in)x\d{1,3}(?:cm|in)", re.IGNORECASE)  # Cassette Size 24CMX30CM
#: Coding schemes (PS3.16 Section 8) whose codes may appear in a kept code sequence.
_SCHEMES = frozenset(
    {"DCM", "SCT", "SRT", "SNM3", "LN", "UCUM", "RADLEX", "FMA", "NCIT", "ACR", "I10", "UMLS"}
)
_CODE_VALUE = re.compile(r"\d{1,18}(?:-\d)?|[A-Z]-[0-9A-Z]{4,6}|RID\d{1,8}|C\d{3,8}")
_SCHEME_VERSION = re.compile(r"[0-9.]{0,16}")


@functools.cache
def default_vocabulary() -> Vocabulary:
    """The packaged vocabulary (``data/descriptor_vocabulary.txt``)."""
    text = resources.files("aifi.deid").joinpath("data", "descriptor_vocabulary.txt")
    words = (
        word.casefold()
        for line in text.read_text(encoding="utf-8").splitlines()
        if not line.startswith("#")
        for word in line.split()
    )
    return frozenset(words)


def load_vocabulary(extra: Iterable[str] = ()) -> Vocabulary:
    """The packaged vocabulary plus ``extra`` words (a hospital's own technical terms)."""
    return default_vocabulary() | {w.strip().casefold() for w in extra if w.strip()}


def _safe_token(token: str, vocabulary: Vocabulary) -> bool:
    folded = token.casefold().strip(".")
    return (
        folded in vocabulary
        or _NUMBER.fullmatch(folded) is not None
        or _KERNEL.fullmatch(folded) is not None
        or _SIZE.fullmatch(folded) is not None
    )


def _tokens(text: str) -> list[str]:
    return [t for t in _SEPARATORS.split(text) if t.strip(".")]


@functools.lru_cache(maxsize=4096)
def _clean_default(text: str) -> str:
    return " ".join(t for t in _tokens(text) if _safe_token(t, default_vocabulary()))


def clean_descriptor(text: str, vocabulary: Vocabulary | None = None) -> str:
    """``text`` reduced to its safe tokens, joined by single spaces ('' when none is safe)."""
    if vocabulary is None or vocabulary is default_vocabulary():
        return _clean_default(text)
    return " ".join(t for t in _tokens(text) if _safe_token(t, vocabulary))


def is_clean_descriptor(text: str, vocabulary: Vocabulary | None = None) -> bool:
    """Whether every token of ``text`` is safe: what :func:`clean_descriptor` would keep whole."""
    vocabulary = default_vocabulary() if vocabulary is None else vocabulary
    return all(_safe_token(t, vocabulary) for t in _tokens(text))


def is_code(keyword: str, value: str, vocabulary: Vocabulary | None = None) -> bool:
    """Whether ``value`` has the syntax of a code (PS3.3 8.1) for ``keyword``, not free text.

    Code Value: numeric (SNOMED CT, LOINC, DCM), legacy SNOMED (``T-D8800``),
    RadLex (``RID56``), NCIt (``C12345``), or a vocabulary word (UCUM ``mm``);
    Coding Scheme Designator: a scheme of PS3.16 Section 8 or a private ``99``
    one; Coding Scheme Version: digits and dots.
    """
    value = value.strip()
    if not value:
        return True
    if keyword == "CodingSchemeDesignator":
        return value.upper() in _SCHEMES or re.fullmatch(r"99[A-Z0-9_]{1,14}", value) is not None
    if keyword == "CodingSchemeVersion":
        return _SCHEME_VERSION.fullmatch(value) is not None
    return _CODE_VALUE.fullmatch(value) is not None or (
        " " not in value and is_clean_descriptor(value, vocabulary)
    )
