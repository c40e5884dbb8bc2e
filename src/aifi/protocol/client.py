"""The edge's client for the hub: STOW-RS, the task API and WADO-RS.

The edge only makes outgoing connections. Transport errors, 5xx and 429 are
:class:`~aifi.errors.HubUnavailable` (retry later); other 4xx answers are
:class:`~aifi.errors.HubRefused` carrying the hub's reason. Uploads stream
the files from disk (multipart/related, PS3.18 §8.6); nothing is held whole
in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

import aifi
from aifi.core.errors import HubRefused, HubUnavailable
from aifi.dicom import multipart
from aifi.protocol.schemas import (
    Acknowledge,
    CatalogEntryOut,
    SubscriptionOut,
    TaskCreate,
    TaskOut,
)

__all__ = ["PLACEHOLDER_TOKEN", "HubClient", "HubPeer", "StoreOutcome", "split_multipart"]

logger = logging.getLogger(__name__)


PLACEHOLDER_TOKEN = "change-me"


class HubPeer(BaseModel):
    """The national hub, reached by outgoing HTTPS only."""

    model_config = ConfigDict(extra="forbid")

    url: str = "http://127.0.0.1:8000"
    token: str = PLACEHOLDER_TOKEN
    poll_interval_s: float = Field(default=0.25, gt=0)
    long_poll_s: float = Field(
        default=10.0,
        ge=0,
        le=30,
        description="while every open task waits on the hub, wait this long at the hub for a"
        " change (long poll, GET /tasks wait_s); 0 polls every poll_interval_s",
    )
    timeout_s: float = Field(default=30.0, gt=0)
    max_backoff_s: float = Field(default=60.0, gt=0)


@dataclass(frozen=True)
class StoreOutcome:
    """What the hub said about each instance of one STOW-RS request."""

    stored: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (SOP Instance UID, reason)


class HubClient:
    def __init__(
        self,
        peer: HubPeer,
        transport: httpx.BaseTransport | None = None,
        *,
        on_contact: Callable[[bool, str], None] | None = None,
    ) -> None:
        """``on_contact(ok, detail)`` hears the outcome of every request (the status page)."""
        self._on_contact = on_contact
        self._timeout_s = peer.timeout_s
        self.long_poll_s = peer.long_poll_s
        self._long_poll: bool | None = None  # None: not known yet whether the hub takes wait_s
        self._listing: tuple[str, list[TaskOut]] | None = None  # the last long-polled listing
        self._http = httpx.Client(
            base_url=peer.url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {peer.token}",
                "User-Agent": f"aifi-edge/{aifi.__version__}",  # the hub shows it as version
            },
            timeout=peer.timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- STOW-RS -----------------------------------------------------------
    def store_instances(self, paths: Sequence[Path]) -> StoreOutcome:
        """Upload DICOM files in one STOW-RS request (PS3.18 §10.5)."""
        boundary = multipart.new_boundary()
        headers = {
            "Content-Type": multipart.content_type(boundary),
            "Accept": "application/dicom+json",
        }
        response = self._send(
            "POST",
            "/dicomweb/studies",
            content=multipart.dicom_files(paths, boundary),
            headers=headers,
        )
        body = response.json() if response.content else {}
        stored = tuple(
            item["00081155"]["Value"][0] for item in _seq(body, "00081199") if "00081155" in item
        )
        failed = tuple(
            (
                item.get("00081155", {}).get("Value", ["?"])[0],
                _failure_text(item),
            )
            for item in _seq(body, "00081198")
        )
        return StoreOutcome(stored=stored, failed=failed)

    # -- catalog -----------------------------------------------------------
    def catalog(self) -> list[CatalogEntryOut]:
        """Every algorithm version the hub offers, with its keep list and state."""
        return [CatalogEntryOut.model_validate(e) for e in self._send("GET", "/catalog").json()]

    def my_subscriptions(self) -> list[SubscriptionOut]:
        """This hospital's subscriptions (``GET /subscriptions/mine``)."""
        response = self._send("GET", "/subscriptions/mine")
        return [SubscriptionOut.model_validate(s) for s in response.json()]

    # -- tasks -------------------------------------------------------------
    def create_task(self, body: TaskCreate) -> TaskOut:
        sent = body.model_dump(mode="json")
        if not body.prior_studies:  # a hub before migration 0009 refuses the field (422)
            sent.pop("prior_studies", None)
        response = self._send("POST", "/tasks", json=sent)
        return TaskOut.model_validate(response.json())

    def task(self, task_id: str) -> TaskOut:
        return TaskOut.model_validate(self._send("GET", f"/tasks/{task_id}").json())

    def unacknowledged_tasks(
        self, page_size: int = 500, *, wait_s: float = 0.0
    ) -> Iterator[TaskOut]:
        """Every task the hub holds unacknowledged for this hospital, page by page.

        Paging on (keyset ``after``) means no number of old, stuck tasks can
        hide a newer one from the edge. With ``wait_s``, a long poll: the hub
        answers once the listing differs from the last one this client got
        (``If-None-Match``), or after ``wait_s`` with 304, and then that last
        listing is answered again. A hub that does not know ``wait_s`` (it
        refuses unknown filters) is polled plainly from then on.
        """
        long_poll = wait_s > 0 and self._long_poll is not False
        after: str | None = None
        etag: str | None = None
        listing: list[TaskOut] = []
        while True:
            params: dict[str, str | int] = {"acknowledged": "false", "limit": page_size}
            headers: dict[str, str] = {}
            if after is not None:
                params["after"] = after
            elif long_poll:
                params["wait_s"] = f"{wait_s:g}"
                if self._listing is not None:
                    headers["If-None-Match"] = self._listing[0]
            try:
                response = self._send(
                    "GET",
                    "/tasks",
                    params=params,
                    headers=headers,
                    timeout=self._timeout_s + (wait_s if "wait_s" in params else 0),
                )
            except HubRefused as exc:
                if "wait_s" in params and exc.status_code in (400, 422) and "wait_s" in str(exc):
                    logger.info("the hub does not take wait_s (an older hub): polling plainly")
                    self._long_poll = False
                    long_poll = False
                    continue
                raise
            if response.status_code == 304 and self._listing is not None:
                self._long_poll = True
                yield from self._listing[1]
                return
            if "wait_s" in params:
                self._long_poll = True
                etag = response.headers.get("etag")
            page = [TaskOut.model_validate(t) for t in response.json()]
            if long_poll:
                listing.extend(page)
            yield from page
            if len(page) < page_size:
                break
            after = page[-1].id
        if long_poll:
            self._listing = None if etag is None else (etag, listing)

    def acknowledge(self, task_id: str, sop_instance_uids: Sequence[str]) -> TaskOut:
        body = Acknowledge(delivered_sop_instance_uids=list(sop_instance_uids))
        response = self._send(
            "POST", f"/tasks/{task_id}/acknowledge", json=body.model_dump(mode="json")
        )
        return TaskOut.model_validate(response.json())

    def send_feedback(
        self, task_id: str, verdict: str, correction: dict[str, str] | None = None
    ) -> dict[str, object]:
        """A radiologist's verdict on a result (IHE AIRAI; ``docs/feedback.md``), no identity."""
        body: dict[str, object] = {"verdict": verdict}
        if correction:
            body["correction"] = correction
        response = self._send("POST", f"/tasks/{task_id}/feedback", json=body)
        return dict(response.json())

    # -- WADO-RS -----------------------------------------------------------
    def retrieve_instance(self, study: str, series: str, sop: str) -> bytes:
        """One instance as Part 10 bytes (PS3.18 §10.4, multipart/related)."""
        response = self._send(
            "GET",
            f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        parts = split_multipart(response.content, response.headers.get("content-type", ""))
        if len(parts) != 1:
            raise HubRefused(
                f"WADO-RS for result {sop} returned {len(parts)} parts, expected 1",
                status_code=response.status_code,
            )
        return parts[0]

    # -- plumbing ----------------------------------------------------------
    def _send(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            self._contact(False, f"unreachable ({type(exc).__name__})")
            raise HubUnavailable(
                f"hub at {self._http.base_url} unreachable ({type(exc).__name__}); will retry"
            ) from exc
        self._contact(
            response.status_code < 500 and response.status_code not in (401, 403, 429),
            f"{method} {url}: HTTP {response.status_code}",
        )
        if response.status_code >= 500 or response.status_code == 429:
            raise HubUnavailable(
                f"hub answered {response.status_code} to {method} {url}; will retry"
            )
        if response.status_code == 409 and url == "/dicomweb/studies":
            return response  # PS3.18: none stored; the body says why
        if response.status_code >= 400:
            raise HubRefused(
                f"hub refused {method} {url} ({response.status_code}): {_detail(response)}",
                status_code=response.status_code,
            )
        return response

    def _contact(self, ok: bool, detail: str) -> None:
        if self._on_contact is not None:
            self._on_contact(ok, detail)


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a multipart/related body the hub answered (RFC 2046 §5.1)."""
    try:
        return multipart.split(body, multipart.boundary_of(content_type, part_type=None))
    except multipart.MultipartError as exc:
        raise HubRefused(
            f"the hub's multipart answer cannot be read: {exc}", status_code=502
        ) from exc


def _seq(body: object, tag: str) -> list[dict[str, dict[str, list[str]]]]:
    if not isinstance(body, dict):
        return []
    return list(body.get(tag, {}).get("Value", []))


def _failure_text(item: dict[str, dict[str, list[str]]]) -> str:
    """Failure Reason (0008,1197) and the hub's explanation in Text Value (0040,A160)."""
    reason = item.get("00081197", {}).get("Value", ["?"])[0]
    text = item.get("0040A160", {}).get("Value", [""])[0]
    return f"failure reason {reason}: {text}" if text else f"failure reason {reason}"


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return str(data)[:300]
