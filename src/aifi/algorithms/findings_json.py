"""Findings as JSON, the form the hub stores and remote algorithms answer with.

The JSON is :func:`dataclasses.asdict` of :class:`~aifi.algorithms.base.Findings`
made plain (tuples become arrays), so what a vendor's service returns, what
the hub records with a completed task and what the edge reads are one shape::

    {"summary": "1 suspected fracture (score 0.91)",
     "finding": {"value": "72704001", "scheme": "SCT", "meaning": "Fracture"},
     "urgent": false,
     "measurements": [{"concept": {...}, "value": 0.91, "unit": {...}}],
     "images": [{"sop_instance_uid": "1.2.3", "frame_number": null,
                 "measurements": [], "texts": [[{...code...}, "positive"]],
                 "boxes": [{"x0": 10, "y0": 20, "x1": 50, "y1": 60,
                            "label": "fracture", "score": 0.87}]}],
     "demo_model": false,
     "details": {},
     "finding_type": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
     "presence": {"value": "52101004", "scheme": "SCT", "meaning": "Present"},
     "evaluations": [],
     "procedure": {"value": "24689-2", "scheme": "LN", "meaning": "XR Upper extremity Views"}}

``finding_type``, ``presence``, ``evaluations`` and ``procedure`` (and an
image's ``evaluations``: ``[[name code, value code], ...]``) are optional:
an older vendor's answer without them is read as before.

``docs/remote-algorithm.openapi.json`` describes the same shape as the
``Findings`` schema. Reading is strict: a missing or mistyped field is
refused with ``ValueError`` naming the field, since these findings become
DICOM in a patient's record.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from typing import Any

from aifi.algorithms.base import Box, Code, Findings, ImageFinding, Measurement

__all__ = ["findings_from_json", "findings_on", "findings_to_json"]


def findings_to_json(findings: Findings) -> dict[str, Any]:
    """``findings`` as plain JSON values (what ``json.dumps`` writes unchanged)."""
    plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(findings), default=_plain))
    return plain


def findings_from_json(value: Mapping[str, Any] | str | bytes) -> Findings:
    """The :class:`Findings` a JSON document (text or parsed) describes.

    Raises ``ValueError`` naming the first field that is missing or of the
    wrong type.
    """
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"findings are not JSON: {exc.msg} at position {exc.pos}") from exc
    document = _object(value, "findings")
    finding = document.get("finding")
    return Findings(
        finding_type=_optional_code(document, "finding_type", "findings"),
        presence=_optional_code(document, "presence", "findings"),
        evaluations=tuple(
            _coded_pair(item, f"findings.evaluations[{index}]")
            for index, item in enumerate(_array(document, "evaluations", "findings"))
        ),
        procedure=_optional_code(document, "procedure", "findings"),
        summary=_text(document, "summary", "findings"),
        finding=None if finding is None else _code(finding, "findings.finding"),
        urgent=_flag(document, "urgent", "findings", default=False),
        measurements=tuple(
            _measurement(item, f"findings.measurements[{index}]")
            for index, item in enumerate(_array(document, "measurements", "findings"))
        ),
        images=tuple(
            _image(item, f"findings.images[{index}]")
            for index, item in enumerate(_array(document, "images", "findings"))
        ),
        demo_model=_flag(document, "demo_model", "findings", default=False),
        details=dict(_object(document.get("details", {}), "findings.details")),
    )


def findings_on(value: Mapping[str, Any] | str | bytes, inputs: Collection[str]) -> Findings:
    """:func:`findings_from_json`, each image finding on one of ``inputs`` (SOP Instance UIDs).

    How the hub reads findings made away from it (a remote algorithm's, an
    outside performer's): raises ``ValueError`` naming the first field that is
    wrong, or the first image finding on an instance that was not an input.
    """
    findings = findings_from_json(value)
    for index, image in enumerate(findings.images):
        if image.sop_instance_uid not in inputs:
            raise ValueError(
                f"findings.images[{index}] refers to instance {image.sop_instance_uid}, "
                "which was not sent to it as an input"
            )
    return findings


def _plain(value: object) -> object:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    return str(value)


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a JSON object")
    return value


def _array(document: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}.{key} must be an array")
    return list(value)


def _text(document: Mapping[str, Any], key: str, where: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key} must be a string")
    return value


def _number(document: Mapping[str, Any], key: str, where: str) -> float:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.{key} must be a number")
    return float(value)


def _flag(document: Mapping[str, Any], key: str, where: str, *, default: bool) -> bool:
    value = document.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key} must be true or false")
    return value


def _code(value: object, where: str) -> Code:
    document = _object(value, where)
    return Code(
        value=_text(document, "value", where),
        scheme=_text(document, "scheme", where),
        meaning=_text(document, "meaning", where),
    )


def _optional_code(document: Mapping[str, Any], key: str, where: str) -> Code | None:
    value = document.get(key)
    return None if value is None else _code(value, f"{where}.{key}")


def _coded_pair(value: object, where: str) -> tuple[Code, Code]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{where} must be a [name code, value code] pair")
    return _code(value[0], f"{where}[0]"), _code(value[1], f"{where}[1]")


def _measurement(value: object, where: str) -> Measurement:
    document = _object(value, where)
    return Measurement(
        concept=_code(document.get("concept"), f"{where}.concept"),
        value=_number(document, "value", where),
        unit=_code(document.get("unit"), f"{where}.unit"),
    )


def _box(value: object, where: str) -> Box:
    document = _object(value, where)
    return Box(
        x0=_number(document, "x0", where),
        y0=_number(document, "y0", where),
        x1=_number(document, "x1", where),
        y1=_number(document, "y1", where),
        label=_text(document, "label", where),
        score=_number(document, "score", where),
    )


def _coded_text(value: object, where: str) -> tuple[Code, str]:
    if not isinstance(value, list | tuple) or len(value) != 2 or not isinstance(value[1], str):
        raise ValueError(f"{where} must be a [code, text] pair")
    return _code(value[0], f"{where}[0]"), value[1]


def _image(value: object, where: str) -> ImageFinding:
    document = _object(value, where)
    frame = document.get("frame_number")
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 1):
        raise ValueError(f"{where}.frame_number must be a positive integer or null")
    return ImageFinding(
        sop_instance_uid=_text(document, "sop_instance_uid", where),
        measurements=tuple(
            _measurement(item, f"{where}.measurements[{index}]")
            for index, item in enumerate(_array(document, "measurements", where))
        ),
        texts=tuple(
            _coded_text(item, f"{where}.texts[{index}]")
            for index, item in enumerate(_array(document, "texts", where))
        ),
        boxes=tuple(
            _box(item, f"{where}.boxes[{index}]")
            for index, item in enumerate(_array(document, "boxes", where))
        ),
        frame_number=frame,
        evaluations=tuple(
            _coded_pair(item, f"{where}.evaluations[{index}]")
            for index, item in enumerate(_array(document, "evaluations", where))
        ),
    )
