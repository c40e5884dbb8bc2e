"""Remote algorithms: a vendor's own inference service behind the same contract.

A vendor that hosts its inference implements three HTTPS operations
(``docs/remote-algorithm.openapi.json``, explained in
``docs/remote-algorithms.md``); :class:`RemoteAlgorithm` makes such a service an
:class:`~aifi.algorithms.base.Algorithm` the hub runs like any other:

1. ``POST {base}/v1/inferences`` with the selected, pseudonymized instances
   as ``multipart/related; type="application/dicom"`` (the STOW-RS body of
   PS3.18 §10.5), streamed from disk → ``202 {"id": ...}``. An
   ``Idempotency-Key`` derived from the study and instances makes a re-sent
   submission harmless.
2. ``GET {base}/v1/inferences/{id}`` → ``{"state": "queued" | "running" |
   "completed" | "failed", "reason": ...}``, polled every ``poll_interval_s``.
3. ``GET {base}/v1/inferences/{id}/findings`` → the findings as JSON
   (:mod:`aifi.algorithms.findings_json`).

A busy vendor is not a failed task: 409, 429, 502, 503 and 504, and a vendor
that cannot be reached, are waited out (``Retry-After`` honoured, in seconds
or as an HTTP date) and retried until the time limit. A definite answer — a
``failed`` inference, a 4xx, findings that do not parse or refer to images
that were not sent — raises :class:`aifi.errors.AlgorithmError` with the
vendor's reason; so does the time limit, after asking the vendor to cancel
(``DELETE {base}/v1/inferences/{id}``, best effort).

Remote algorithms are configured by a file each in the hub's
``remote_algorithms_dir`` (:func:`remote_from_file`, read at start by
:func:`aifi.algorithms.registry.install`); the bearer token is read from the
environment variable it names, never from the file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from aifi.algorithms.base import (
    AlgorithmInput,
    Findings,
    Manifest,
    Resources,
    SelectionRule,
    instances_of,
)
from aifi.algorithms.findings_json import findings_on
from aifi.dicom import multipart
from aifi.errors import AlgorithmError, ConfigError

__all__ = ["RETRY_STATUS", "RemoteAlgorithm", "manifest_from_mapping", "remote_from_file"]

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({409, 429, 502, 503, 504})
"""HTTP statuses meaning "busy, come back later": waited out, not failed."""

_MAX_REASON = 500
_STATES = frozenset({"queued", "running", "completed", "failed"})


@dataclass(frozen=True)
class _Answer:
    """A vendor's definite answer: its status and parsed JSON body."""

    status_code: int
    body: dict[str, Any]


class RemoteAlgorithm:
    """An algorithm whose inference runs at the vendor, reached over HTTPS."""

    def __init__(
        self,
        manifest: Manifest,
        base_url: str,
        token: str,
        *,
        poll_interval_s: float = 2.0,
        timeout_s: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``timeout_s`` bounds a whole run (default: the manifest's time limit).

        ``base_url`` must be ``https://``, except on a loopback address
        (development and tests); ``transport`` is for a custom TLS setup.
        """
        self.manifest = manifest
        self.base_url = _checked_base_url(base_url, manifest.id)
        if not token:
            raise ConfigError(f"remote algorithm {manifest.id!r} needs a bearer token")
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        self.poll_interval_s = poll_interval_s
        self.timeout_s = manifest.resources.time_limit_s if timeout_s is None else timeout_s
        self._token = token
        self._transport = transport

    def __repr__(self) -> str:  # never shows the token
        return f"RemoteAlgorithm({self.manifest.id!r}, {self.base_url!r})"

    def run(self, inputs: AlgorithmInput) -> Findings:
        """Submit ``inputs`` to the vendor, wait for the inference, return its findings."""
        deadline = time.monotonic() + self.timeout_s
        with httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
            timeout=httpx.Timeout(60.0, connect=10.0),
            transport=self._transport,
        ) as client:
            inference = self._submit(client, inputs, deadline)
            logger.info(
                "remote %s: study %s submitted as inference %s",
                self.manifest.id,
                inputs.study_instance_uid,
                inference,
            )
            try:
                self._wait(client, inference, deadline)
            except AlgorithmError:
                if time.monotonic() >= deadline:
                    _cancel(client, inference)
                raise
            answer = self._call(client, "GET", f"/v1/inferences/{inference}/findings", deadline)
        sent = {instance.sop_instance_uid for instance in inputs.instances}
        try:
            return findings_on(answer.body, sent)
        except ValueError as exc:
            raise AlgorithmError(
                f"remote algorithm {self.manifest.id!r} answered findings aifi cannot read: {exc}"
            ) from exc

    def _submit(self, client: httpx.Client, inputs: AlgorithmInput, deadline: float) -> str:
        boundary = multipart.new_boundary()
        instances = instances_of(inputs)
        key = hashlib.sha256(
            "\n".join(
                [inputs.study_instance_uid, *(i.sop_instance_uid for i in instances)]
            ).encode()
        ).hexdigest()
        answer = self._call(
            client,
            "POST",
            "/v1/inferences",
            deadline,
            body=lambda: multipart.dicom_files(tuple(i.path for i in instances), boundary),
            headers={
                "Content-Type": multipart.content_type(boundary),
                "Idempotency-Key": key,
                "X-Algorithm-Version": self.manifest.version,
            },
        )
        inference = answer.body.get("id")
        if not isinstance(inference, str) or not inference or "/" in inference:
            raise AlgorithmError(
                f"remote algorithm {self.manifest.id!r} accepted the study but gave no "
                "inference id; the vendor's service does not follow the aifi contract"
            )
        return inference

    def _wait(self, client: httpx.Client, inference: str, deadline: float) -> None:
        while True:
            answer = self._call(client, "GET", f"/v1/inferences/{inference}", deadline)
            state = answer.body.get("state")
            if state not in _STATES:
                raise AlgorithmError(
                    f"remote algorithm {self.manifest.id!r} reported unknown state {state!r} "
                    f"for inference {inference}"
                )
            if state == "completed":
                return
            if state == "failed":
                raise AlgorithmError(
                    f"remote algorithm {self.manifest.id!r} failed: {_reason(answer.body)}"
                )
            _sleep_until(deadline, self.poll_interval_s, self._timed_out(inference, state))

    def _call(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        deadline: float,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """One operation, retried while the vendor is busy or unreachable, until ``deadline``."""
        while True:
            try:
                response = client.request(
                    method,
                    path,
                    content=body() if body is not None else None,
                    headers=headers,
                )
            except httpx.TransportError as exc:
                logger.warning("remote %s: %s %s failed: %s", self.manifest.id, method, path, exc)
                wait = self.poll_interval_s
                last = f"unreachable ({type(exc).__name__})"
            else:
                if response.status_code not in RETRY_STATUS:
                    return self._definite(response, method, path)
                wait = _retry_after(response, self.poll_interval_s)
                last = f"busy (HTTP {response.status_code})"
                logger.info(
                    "remote %s: %s %s answered %d; retry in %.1f s",
                    self.manifest.id,
                    method,
                    path,
                    response.status_code,
                    wait,
                )
            _sleep_until(deadline, wait, self._timed_out(path, last))

    def _definite(self, response: httpx.Response, method: str, path: str) -> _Answer:
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code in (401, 403):
            raise AlgorithmError(
                f"remote algorithm {self.manifest.id!r} refused aifi's credentials "
                f"(HTTP {response.status_code}); check the token in its token_env variable"
            )
        if response.is_error:
            raise AlgorithmError(
                f"remote algorithm {self.manifest.id!r} refused {method} {path} "
                f"(HTTP {response.status_code}): {_reason(body)}"
            )
        return _Answer(response.status_code, body)

    def _timed_out(self, what: str, last: str) -> AlgorithmError:
        return AlgorithmError(
            f"remote algorithm {self.manifest.id!r} did not finish within {self.timeout_s:g} s "
            f"({what}: {last}); the task can be scheduled again later"
        )


def _retry_after(response: httpx.Response, default: float) -> float:
    """Seconds to wait from Retry-After (RFC 9110 §10.2.3: seconds or an HTTP date)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return default
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return default


def _sleep_until(deadline: float, wait: float, timed_out: AlgorithmError) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or wait >= remaining:
        if remaining > 0:
            time.sleep(remaining)
        raise timed_out
    time.sleep(wait)


def _cancel(client: httpx.Client, inference: str) -> None:
    """Ask the vendor to stop an inference aifi gave up on; its answer does not matter."""
    try:
        client.delete(f"/v1/inferences/{inference}", timeout=5.0)
    except httpx.HTTPError as exc:
        logger.debug("cancelling inference %s failed: %s", inference, exc)


def _reason(body: Mapping[str, Any]) -> str:
    reason = body.get("reason") or body.get("detail") or "no reason given"
    text = str(reason) if not isinstance(reason, str) else reason
    return "".join(c if c.isprintable() else " " for c in text)[:_MAX_REASON]


def _checked_base_url(base_url: str, algorithm_id: str) -> str:
    url = httpx.URL(base_url)
    host = url.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if url.scheme != "https" and not (url.scheme == "http" and loopback):
        raise ConfigError(
            f"remote algorithm {algorithm_id!r}: endpoint must be an https:// URL "
            "(plain http only on a loopback address)"
        )
    return str(url).rstrip("/")


def manifest_from_mapping(document: Mapping[str, Any]) -> Manifest:
    """A :class:`Manifest` from the keys of a remote algorithm's configuration file.

    Raises :class:`aifi.errors.ConfigError` naming a missing or wrong key.
    """
    try:
        resources = document.get("resources", {})
        return Manifest(
            id=str(document["id"]),
            version=str(document["version"]),
            name=str(document["name"]),
            vendor=str(document["vendor"]),
            intended_use=str(document["intended_use"]),
            regulatory_status=str(document["regulatory_status"]),
            accepts=tuple(SelectionRule(**_rule(rule)) for rule in document.get("accepts", [])),
            keep_attributes=tuple(str(k) for k in document.get("keep_attributes", [])),
            produces=tuple(str(k) for k in document.get("produces", ["sr"])),
            resources=Resources(**resources),
            accepts_non_images=bool(document.get("accepts_non_images", False)),
        )
    except KeyError as exc:
        raise ConfigError(f"remote algorithm configuration lacks the key {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"remote algorithm configuration is not valid: {exc}") from exc


def _rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    fields = dict(rule)
    for key in ("any_of", "patterns"):
        if key in fields:
            fields[key] = tuple(str(v) for v in fields[key])
    return fields


def remote_from_file(path: Path, environ: Mapping[str, str] | None = None) -> RemoteAlgorithm:
    """The remote algorithm a configuration file (TOML or JSON) describes.

    Beside the manifest keys (:func:`manifest_from_mapping`) the file names
    ``endpoint`` (the vendor's base URL), ``token_env`` (the environment
    variable holding the bearer token) and optionally ``poll_interval_s``.
    Raises :class:`aifi.errors.ConfigError` when the file or the token is
    missing or wrong.
    """
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read remote algorithm file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"remote algorithm file {path} must hold a table of keys")
    manifest = manifest_from_mapping(document)
    for key in ("endpoint", "token_env"):
        if not isinstance(document.get(key), str) or not document[key]:
            raise ConfigError(f"remote algorithm file {path} needs {key!r}")
    token = environ.get(document["token_env"], "")
    if not token:
        raise ConfigError(
            f"remote algorithm {manifest.id!r}: set the environment variable "
            f"{document['token_env']} to the vendor's bearer token"
        )
    try:
        poll_interval_s = float(document.get("poll_interval_s", 2.0))
        return RemoteAlgorithm(
            manifest, document["endpoint"], token, poll_interval_s=poll_interval_s
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"remote algorithm file {path}: {exc}") from exc
