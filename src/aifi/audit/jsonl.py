"""Audit events exported as JSON lines, read back and verified on their own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO

from aifi.audit.chain import AuditEvent, verify_chain
from aifi.errors import StorageError

__all__ = ["read_jsonl", "verify_jsonl"]

_FIELDS = set(AuditEvent.__dataclass_fields__)


def read_jsonl(fp: IO[str]) -> Iterator[AuditEvent]:
    """The events of an export, in file order."""
    for number, line in enumerate(fp, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise StorageError(f"line {number} of the audit export is not JSON: {exc}") from exc
        if not isinstance(record, dict) or set(record) != _FIELDS:
            raise StorageError(f"line {number} of the audit export is not an audit event")
        yield AuditEvent(**record)


def verify_jsonl(fp: IO[str]) -> list[str]:
    """Problems in an exported chain (a full export, starting at event 1)."""
    return verify_chain(read_jsonl(fp), None)
