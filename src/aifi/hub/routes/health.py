"""``/health``, ``/ready`` and ``/metrics``: for load balancers and Prometheus.

``/health`` says the process answers; ``/ready`` that it can work: the
database answers a query and the object store takes and deletes a small
object (503 with the failing part otherwise). ``/metrics`` is the
Prometheus text format (:mod:`aifi.hub.metrics`), counted from the
database at scrape time, so every replica gives the same figures. None of
them needs a token and none is in the OpenAPI document; they say nothing
about a patient (``/metrics`` names hospitals and algorithms with counts:
keep it on the operators' network, as the API behind its reverse proxy).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from aifi.errors import AifiError
from aifi.hub.deps import ContextDep, SessionDep
from aifi.hub.drift import DriftBounds
from aifi.hub.metrics import metrics_text

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/ready")
def ready(context: ContextDep) -> JSONResponse:
    checks: dict[str, Any] = {"database": _database(context), "storage": _storage(context)}
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "checks": checks},
        status_code=200 if ok else 503,
    )


@router.get("/metrics")
def metrics(session: SessionDep, context: ContextDep) -> Response:
    body = metrics_text(session, DriftBounds.of(context.settings))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _database(context: ContextDep) -> str:
    try:
        with context.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        logger.warning("not ready: the database does not answer: %s", exc)
        return f"the database does not answer ({type(exc).__name__})"
    return "ok"


def _storage(context: ContextDep) -> str:
    key = f"health/ready-{uuid.uuid4().hex}"
    staged: Path | None = None
    try:
        handle, staged = context.store.new_temporary()
        with handle:
            handle.write(b"aifi readiness probe\n")
        context.store.put(staged, key)
        context.store.delete(key)
    except (AifiError, OSError) as exc:
        logger.warning("not ready: the object store is not writable: %s", exc)
        return f"the object store is not writable ({type(exc).__name__})"
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
    return "ok"
