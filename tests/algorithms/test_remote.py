"""Remote algorithms against a small vendor service started on loopback.

The vendor service (``tests/peers/vendor.py``) is a FastAPI app under a real
uvicorn server on a free 127.0.0.1 port. It implements the contract of
``docs/remote-algorithm.openapi.json``: it reads the DICOM instances it is
sent (pydicom), answers "busy" as configured, and reports findings on the
instances it received. The images are pydicom's own test files CT_small.dcm
and MR_small.dcm (``pydicom.data.get_testdata_file``) rewritten into one
pseudonymous study.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from aifi.algorithms import registry
from aifi.algorithms.base import (
    Algorithm,
    AlgorithmInput,
    InputInstance,
    Manifest,
    Resources,
    SelectionRule,
)
from aifi.algorithms.findings_json import findings_from_json, findings_to_json
from aifi.algorithms.remote import RemoteAlgorithm, remote_from_file
from aifi.errors import AlgorithmError, ConfigError
from peers.vendor import TOKEN, Served, Vendor, expected_findings, vendor_app

OPENAPI = Path(__file__).parents[2] / "docs" / "remote-algorithm.openapi.json"

MANIFEST = Manifest(
    id="vendor-nodule",
    version="4.2.0",
    name="Lung nodule detection",
    vendor="Example Imaging AB",
    intended_use="Detection of lung nodules on chest CT (test vendor).",
    regulatory_status="test fixture; not a medical device",
    accepts=(SelectionRule("Modality", any_of=("CT", "MR")),),
    produces=("sr", "gsps", "sc"),
    resources=Resources(time_limit_s=20.0),
)


@pytest.fixture
def vendor() -> Vendor:
    return Vendor()


@pytest.fixture
def service(vendor: Vendor) -> Iterator[Served]:
    with Served(vendor_app(vendor)) as served:
        yield served


@pytest.fixture
def study(make_instance: Callable[..., InputInstance]) -> AlgorithmInput:
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = tuple(
        make_instance(name, study_uid=study_uid, series_uid=series_uid, PatientID="P-7F3A")
        for name in ("CT_small.dcm", "MR_small.dcm")
    )
    return AlgorithmInput(study_uid, instances)


def remote(service: Served, **options: Any) -> RemoteAlgorithm:
    options.setdefault("poll_interval_s", 0.05)
    return RemoteAlgorithm(MANIFEST, service.url, options.pop("token", TOKEN), **options)


def test_a_busy_vendor_is_waited_out_and_its_findings_come_back(
    vendor: Vendor, service: Served, study: AlgorithmInput
) -> None:
    vendor.busy_submits = 1
    vendor.busy_polls = 1
    algorithm = remote(service)
    assert isinstance(algorithm, Algorithm)

    started = time.monotonic()
    findings = algorithm.run(study)

    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert vendor.busy_answers == 2
    first = min(study.instances, key=lambda i: (i.series_instance_uid, i.sop_instance_uid))
    assert findings == expected_findings(first.sop_instance_uid)
    assert sorted(str(ds.SOPInstanceUID) for ds in vendor.received) == sorted(
        i.sop_instance_uid for i in study.instances
    )
    assert all(ds.PatientID == "P-7F3A" for ds in vendor.received)
    assert vendor.content_types[0].startswith('multipart/related; type="application/dicom"')
    assert len(vendor.idempotency_keys[0]) == 64


def test_the_same_study_gets_the_same_idempotency_key(
    vendor: Vendor, service: Served, study: AlgorithmInput
) -> None:
    algorithm = remote(service)

    algorithm.run(study)
    algorithm.run(study)

    assert len(vendor.idempotency_keys) == 2
    assert vendor.idempotency_keys[0] == vendor.idempotency_keys[1]


def test_a_failed_inference_raises_with_the_vendors_reason(
    vendor: Vendor, service: Served, study: AlgorithmInput
) -> None:
    vendor.outcome = "failed"
    vendor.reason = "series is not a chest CT"

    with pytest.raises(AlgorithmError, match=r"vendor-nodule.*failed: series is not a chest CT"):
        remote(service).run(study)


def test_the_time_limit_ends_the_run_and_cancels_the_inference(
    vendor: Vendor, service: Served, study: AlgorithmInput
) -> None:
    vendor.polls_until_done = 10_000

    started = time.monotonic()
    with pytest.raises(AlgorithmError, match="did not finish within 1 s"):
        remote(service, timeout_s=1.0).run(study)

    assert time.monotonic() - started < 5
    assert vendor.deleted == ["inf-1"]


def test_a_wrong_token_is_a_definite_refusal(service: Served, study: AlgorithmInput) -> None:
    with pytest.raises(AlgorithmError, match=r"credentials.*token_env") as raised:
        remote(service, token="wrong").run(study)

    assert "wrong" not in str(raised.value)


def test_findings_on_an_instance_that_was_not_sent_are_refused(
    vendor: Vendor, service: Served, study: AlgorithmInput
) -> None:
    vendor.stranger_finding = True

    with pytest.raises(AlgorithmError, match="was not sent"):
        remote(service).run(study)


def test_plain_http_is_refused_outside_loopback() -> None:
    with pytest.raises(ConfigError, match="https"):
        RemoteAlgorithm(MANIFEST, "http://inference.vendor.example", TOKEN)


def test_a_remote_algorithm_is_configured_from_the_model_store(
    tmp_path: Path, service: Served, study: AlgorithmInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vendor-nodule.remote.toml").write_text(
        f"""
id = "vendor-nodule"
version = "4.2.0"
name = "Lung nodule detection"
vendor = "Example Imaging AB"
intended_use = "Detection of lung nodules on chest CT."
regulatory_status = "test fixture; not a medical device"
produces = ["sr", "gsps", "sc"]
keep_attributes = ["SliceThickness"]
endpoint = "{service.url}"
token_env = "VENDOR_NODULE_TOKEN"
poll_interval_s = 0.05

[resources]
time_limit_s = 30

[[accepts]]
keyword = "Modality"
any_of = ["CT", "MR"]
""",
        encoding="utf-8",
    )

    found = registry.load_remote(tmp_path, {"VENDOR_NODULE_TOKEN": TOKEN})

    algorithm = found["vendor-nodule"]
    assert algorithm.manifest.accepts == (SelectionRule("Modality", any_of=("CT", "MR")),)
    assert algorithm.manifest.resources.time_limit_s == 30
    assert algorithm.manifest.produces == ("sr", "gsps", "sc")
    assert algorithm.run(study).summary == "1 lung nodule suspected"
    monkeypatch.setenv("VENDOR_NODULE_TOKEN", TOKEN)
    resolve = registry.install(remote_dir=tmp_path)
    assert resolve("vendor-nodule").manifest == algorithm.manifest
    assert resolve("integrity-check").manifest.id == "integrity-check"
    with pytest.raises(ConfigError, match="VENDOR_NODULE_TOKEN"):
        remote_from_file(tmp_path / "vendor-nodule.remote.toml", {})


def test_findings_json_round_trips_and_names_what_is_wrong() -> None:
    findings = expected_findings("1.2.3")

    text = json.dumps(findings_to_json(findings))

    assert findings_from_json(text) == findings
    broken = json.loads(text)
    broken["images"][0]["boxes"][1]["score"] = "high"
    with pytest.raises(ValueError, match=r"images\[0\]\.boxes\[1\]\.score must be a number"):
        findings_from_json(broken)
    with pytest.raises(ValueError, match="summary must be a string"):
        findings_from_json({"images": []})


# --- the vendor's answers against the OpenAPI document ------------------------------------


def resolve_ref(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def violations(document: dict[str, Any], schema: dict[str, Any], value: Any, at: str) -> list[str]:
    """The ways ``value`` breaks ``schema`` (the JSON Schema keywords the contract uses)."""
    schema = resolve_ref(document, schema)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not violations(document, s, value, at)]
        return [] if len(matching) == 1 else [f"{at}: matches {len(matching)} of oneOf"]
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
        }
        if not any(checks[name](value) for name in names):
            return [f"{at}: {value!r} is not {types}"]
    found: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not in {schema['enum']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{at}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{at}: above maximum")
    if isinstance(value, dict):
        found += [f"{at}.{key}: missing" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                found += violations(document, sub, value[key], f"{at}.{key}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            prefix = schema.get("prefixItems", [])
            sub = prefix[index] if index < len(prefix) else schema.get("items")
            if sub is not None:
                found += violations(document, sub, item, f"{at}[{index}]")
    return found


def check_answer(
    document: dict[str, Any], path: str, method: str, response: httpx.Response
) -> list[str]:
    """Problems of one answer: an undocumented status, or a body that breaks its schema."""
    operation = document["paths"][path][method]
    documented = operation["responses"].get(str(response.status_code))
    if documented is None:
        return [f"{method.upper()} {path}: status {response.status_code} is not documented"]
    documented = resolve_ref(document, documented)
    content = documented.get("content", {}).get("application/json")
    if content is None:
        return []
    return violations(document, content["schema"], response.json(), f"{method} {path}")


def test_the_vendor_service_answers_as_the_openapi_document_says(
    vendor: Vendor, service: Served, study: AlgorithmInput
) -> None:
    vendor.busy_submits = 1
    document = json.loads(OPENAPI.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1")
    body = (
        b"".join(
            b"--b\r\nContent-Type: application/dicom\r\n\r\n" + i.path.read_bytes() + b"\r\n"
            for i in study.instances
        )
        + b"--b--\r\n"
    )
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
    }
    problems: list[str] = []
    with httpx.Client(base_url=service.url, headers=headers) as client:
        busy = client.post("/v1/inferences", content=body)
        assert busy.status_code == 429
        problems += check_answer(document, "/v1/inferences", "post", busy)
        accepted = client.post("/v1/inferences", content=body)
        assert accepted.status_code == 202
        problems += check_answer(document, "/v1/inferences", "post", accepted)
        inference = accepted.json()["id"]
        states = []
        for _ in range(vendor.polls_until_done):
            answer = client.get(f"/v1/inferences/{inference}")
            states.append(answer.json()["state"])
            problems += check_answer(document, "/v1/inferences/{id}", "get", answer)
        missing = client.get("/v1/inferences/nothing")
        problems += check_answer(document, "/v1/inferences/{id}", "get", missing)
        findings = client.get(f"/v1/inferences/{inference}/findings")
        problems += check_answer(document, "/v1/inferences/{id}/findings", "get", findings)
        refused = client.get(
            f"/v1/inferences/{inference}", headers={"Authorization": "Bearer wrong"}
        )
        problems += check_answer(document, "/v1/inferences/{id}", "get", refused)

    assert problems == []
    assert states == ["queued", "completed"]
    assert missing.status_code == 404 and refused.status_code == 401
    stripped = dataclasses.replace(findings_from_json(findings.json()), details={})
    assert stripped.images[0].boxes[0].label == "nodule"
