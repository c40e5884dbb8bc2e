"""Audit events exported as JSON lines, read back and verified on their own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO

from aifi.audit.chain import MAIN, AuditEvent, verify_chain
from aifi.errors import StorageError

__all__ = ["read_jsonl", "verify_jsonl"]

_FIELDS = set(AuditEvent.__dataclass_fields__)
_REQUIRED = _FIELDS - {"chain"}  # exports of one chain, and all before 0008, name none


def read_jsonl(fp: IO[str]) -> Iterator[AuditEvent]:
    """The events of an export, in file order."""
    for number, line in enumerate(fp, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise StorageError(f"line {number} of the audit export is not JSON: {exc}") from exc
        if not isinstance(record, dict) or not _REQUIRED <= set(record) <= _FIELDS:
            raise StorageError(f"line {number} of the audit export is not an audit event")
        yield AuditEvent(**record)


def verify_jsonl(fp: IO[str]) -> list[str]:
    """Problems in an exported trail: every chain in it whole, from its event 1.

    Events are taken chain by chain in file order, so an export of one
    hospital's chain verifies on its own as well as one of the whole hub.
    """
    chains: dict[str, list[AuditEvent]] = {}
    for event in read_jsonl(fp):
        chains.setdefault(event.chain, []).append(event)
    problems: list[str] = []
    for chain in sorted(chains, key=lambda c: (c != MAIN, c)):
        problems += verify_chain(chains[chain], None, chain=chain)
    return problems
