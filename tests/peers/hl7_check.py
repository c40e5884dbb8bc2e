"""Strict HL7 v2.5.1 validation of what a RIS received (hl7apy)."""

from __future__ import annotations

from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hl7apy.validation import Validator

__all__ = ["strict"]


def strict(message: str) -> Any:
    """The message parsed by hl7apy with v2.5.1 strict validation (raises when invalid)."""
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert Validator.validate(parsed)  # the ORU_R01 structure, required groups included
    return parsed
