"""The status page's routes: pages for the hospital's admin, probes and metrics for machines.

* ``/login`` exchanges ``status.admin_password`` for a session cookie; every
  page but the probes needs it. State-changing forms (retry, discard,
  feedback, logout) are POSTs carrying the session's CSRF token.
* ``/`` tasks with patient, accession and study date (read from the
  encrypted pseudonym map, each lookup recorded with purpose ``status page``),
  dead letters with **retry** and **discard**, the connectivity of hub, PACS,
  RIS and FHIR, disk space and the release policy in force; each result
  destination (PACS, VNA, research archive) with how many tasks are delivered,
  committed, retrying or given up on there, each task's state per destination,
  and **retry** of one destination's dead letter
  (:mod:`aifi.edge.status.destinations`).
* ``/tasks/{id}`` one task's events, results, its state at each destination
  with the reason of a failure, and the radiologist's feedback
  form (agree / disagree, optional correction code) that the edge forwards to
  the hub without identity (IHE AI Results Assessment; ``docs/feedback.md``).
* ``/health`` (alive), ``/ready`` (database, storage writable, hub
  reachable), ``/metrics`` (:mod:`aifi.edge.metrics`) need no login and show
  no identity.

Everything it serves is local: templates and one stylesheet, no script, no CDN.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CollectorRegistry

from aifi.deid import PseudonymMap
from aifi.edge.commitment import Commitments
from aifi.edge.config import EdgeSettings
from aifi.edge.destinations import Destinations
from aifi.edge.metrics import CONTENT_TYPE, peer_label, render
from aifi.edge.orders import OrderDesk
from aifi.edge.orders_fhir import create_orders_router
from aifi.edge.policy import PolicyFile
from aifi.edge.requeue import discard_task, retry_destination, retry_task
from aifi.edge.state import DEAD_LETTER, EdgeState
from aifi.edge.status.destinations import LABELS, DestinationsView
from aifi.edge.status.sessions import COOKIE, Session, Sessions
from aifi.edge.status.views import parse_since, select_tasks, task_view
from aifi.edge.stow import Receiver, create_stow_router
from aifi.edge.ups import UpsContext, create_ups_router
from aifi.errors import AifiError, HubError
from aifi.protocol.client import HubClient

__all__ = ["PURPOSE", "StatusContext", "create_status_app"]

#: The purpose every identity lookup of the status page is recorded with.
PURPOSE = "status page"
# A hub contact younger than this answers /ready without asking the hub again.
_FRESH_CONTACT_S = 60.0
_VERDICTS = ("agree", "disagree")
_STATES = (
    "pending",
    "held",
    "ready",
    "submitted",
    "SCHEDULED",
    "IN PROGRESS",
    "COMPLETED",
    DEAD_LETTER,
    "delivered",
    "failed",
    "CANCELED",
    "discarded",
)


@dataclass(frozen=True)
class StatusContext:
    """What the status page reads and acts on, from the running edge."""

    settings: EdgeSettings
    state: EdgeState
    pseudonym_map: PseudonymMap
    policy: PolicyFile
    hub: HubClient
    registry: CollectorRegistry
    receiver: Receiver | None = None  # the receive path STOW-RS writes through (aifi.edge.stow)
    orders: OrderDesk | None = None  # FHIR ServiceRequest orders go to it (aifi.edge.orders)


class _LoginRequired(Exception):
    """No valid session: the browser is sent to the login form."""


def _session(request: Request) -> Session:
    found = request.app.state.sessions.get(request.cookies.get(COOKIE))
    if found is None:
        raise _LoginRequired
    return cast(Session, found)


def _checked(request: Request, csrf: Annotated[str, Form()] = "") -> Session:
    """The session of a state-changing form, whose CSRF token must match."""
    found = _session(request)
    if not found.csrf_ok(csrf):
        raise _LoginRequired
    return found


LoggedIn = Annotated[Session, Depends(_session)]
Checked = Annotated[Session, Depends(_checked)]


def create_status_app(ctx: StatusContext) -> FastAPI:
    app = FastAPI(title="aifi edge status", docs_url=None, redoc_url=None, openapi_url=None)
    status = ctx.settings.status
    sessions = Sessions(status.admin_password, status.session_hours * 3600)
    app.state.sessions = sessions
    env = Environment(
        loader=PackageLoader("aifi.edge.status", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.filters["bytes"] = _bytes
    settings = ctx.settings
    places = DestinationsView(
        ctx.state,
        settings.result_destinations,
        Destinations(
            ctx.state, settings.result_destinations[1:], settings.result_kinds, settings.delivery
        ),
        Commitments(ctx.state),
    )
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    # UPS-RS workitems (IHE AIW-I Task Manager): the RIS's or PACS's way in, aifi.edge.ups
    pacs_aet = ctx.settings.pacs.ae_title if ctx.settings.pacs is not None else None
    app.include_router(
        create_ups_router(
            UpsContext(ctx.state, ctx.hub, status.admin_password, pacs_aet, ctx.settings)
        )
    )
    if ctx.receiver is not None:  # STOW-RS in, beside C-STORE (aifi.edge.stow)
        app.include_router(create_stow_router(ctx.receiver, status.admin_password))
    if ctx.orders is not None and ctx.orders.orders.fhir:  # FHIR orders (aifi.edge.orders_fhir)
        app.include_router(create_orders_router(ctx.orders, status.admin_password))

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers["Cache-Control"] = "no-store"  # pages carry patients' names
        return response

    @app.exception_handler(_LoginRequired)
    async def to_login(_request: Request, _exc: _LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    def page(name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        values.setdefault("hospital", ctx.settings.hospital or "")
        return HTMLResponse(env.get_template(name).render(**values), status_code=status_code)

    def who(request: Request) -> str:
        host = request.client.host if request.client else "?"
        return f"status page admin from {host}"

    # -- probes and metrics ------------------------------------------------
    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        checks = {
            "database": _database_ok(ctx.state),
            "storage": _storage_ok(ctx.settings.data_dir),
            "hub": _hub_ok(ctx),
        }
        ok = all(result == "ok" for result in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(render(ctx.registry), media_type=CONTENT_TYPE)

    # -- login -------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_form() -> HTMLResponse:
        return page("login.html", configured=sessions.enabled)

    @app.post("/login")
    def login(request: Request, password: Annotated[str, Form()] = "") -> Response:
        found = sessions.login(password)
        if found is None:
            ctx.state.record_event("status-login-refused", f"wrong password ({who(request)})")
            time.sleep(0.5)  # a guessing script gets two tries a second
            error = "wrong password" if sessions.enabled else "no admin password is set"
            return page("login.html", status_code=401, error=error, configured=sessions.enabled)
        ctx.state.record_event("status-login", who(request))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            found.token,
            max_age=int(sessions.lifetime_s),
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    @app.post("/logout")
    def logout(request: Request, _session: Checked) -> Response:
        sessions.logout(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- pages -------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index(
        current: LoggedIn,
        state: Annotated[str, Query()] = "",
        since: Annotated[str, Query()] = "",
        message: Annotated[str, Query()] = "",
    ) -> HTMLResponse:
        error = ""
        since_at = None
        if since:
            try:
                since_at = parse_since(since)
            except AifiError as exc:
                error = str(exc)
        tasks = select_tasks(
            ctx.state,
            states=[state] if state else None,
            since=since_at,
            limit=ctx.settings.status.max_tasks,
        )
        views = [task_view(ctx.state, ctx.pseudonym_map, t, purpose=PURPOSE) for t in tasks]
        dead = [
            task_view(ctx.state, ctx.pseudonym_map, t, purpose=PURPOSE)
            for t in ctx.state.tasks([DEAD_LETTER, "failed", "CANCELED"])
        ]
        delivering = ctx.state.tasks(["COMPLETED", DEAD_LETTER, "delivered"])
        return page(
            "index.html",
            csrf=current.csrf,
            tasks=views,
            dead=dead,
            at={v.task.id: places.of_task(v.task) for v in views},
            destinations=places.summary(delivering),
            labels=LABELS,
            destination_dead=[
                (task_view(ctx.state, ctx.pseudonym_map, t, purpose=PURPOSE), one)
                for t, one in places.dead_letters(delivering)
            ],
            states=_STATES,
            counts=ctx.state.state_counts(),
            filter_state=state,
            filter_since=since,
            peers=[(peer_label(c.peer), c) for c in ctx.state.peer_contacts()],
            configured=_configured_peers(ctx.settings),
            disk=shutil.disk_usage(ctx.settings.data_dir),
            data_dir=ctx.settings.data_dir,
            paused=ctx.state.receiving_paused(),
            policy=_policy(ctx.policy),
            message=message,
            error=error,
        )

    @app.get("/tasks/{task_id}", response_class=HTMLResponse)
    def task_page(task_id: str, current: LoggedIn, message: str = "") -> HTMLResponse:
        try:
            task = ctx.state.task(task_id)
        except KeyError:
            return page("missing.html", status_code=404, task_id=task_id)
        return page(
            "task.html",
            csrf=current.csrf,
            view=task_view(ctx.state, ctx.pseudonym_map, task, purpose=PURPOSE),
            at=places.of_task(task),
            events=ctx.state.task_events(task.id),
            can_judge=task.hub_task_id is not None
            and task.state in ("COMPLETED", "delivered", DEAD_LETTER),
            message=message,
        )

    # -- actions -----------------------------------------------------------
    @app.post("/tasks/{task_id}/retry")
    def retry(task_id: str, request: Request, _session: Checked) -> Response:
        try:
            queued = retry_task(ctx.state, task_id, by=who(request))
        except AifiError as exc:
            return _back("/", str(exc))
        return _back("/", f"task {task_id[:12]} queued again as {queued[:12]}")

    @app.post("/tasks/{task_id}/destinations/{destination}/retry")
    def retry_at(task_id: str, destination: str, request: Request, _session: Checked) -> Response:
        try:
            retry_destination(
                ctx.state,
                settings.result_destinations,
                destination,
                task_id=task_id,
                by=who(request),
                default_kinds=settings.result_kinds,
                settings=settings.delivery,
            )
        except AifiError as exc:
            return _back("/", str(exc))
        return _back("/", f"task {task_id[:12]}: destination {destination} queued again")

    @app.post("/tasks/{task_id}/discard")
    def discard(
        task_id: str,
        request: Request,
        _session: Checked,
        confirm: Annotated[str, Form()] = "",
    ) -> Response:
        if confirm != "yes":
            return _back("/", "tick 'really discard' to discard a task")
        try:
            discard_task(ctx.state, task_id, by=who(request))
        except AifiError as exc:
            return _back("/", str(exc))
        return _back("/", f"task {task_id[:12]} discarded")

    @app.post("/tasks/{task_id}/feedback")
    def feedback(
        task_id: str,
        _session: Checked,
        verdict: Annotated[str, Form()] = "",
        code_value: Annotated[str, Form()] = "",
        coding_scheme: Annotated[str, Form()] = "SCT",
        code_meaning: Annotated[str, Form()] = "",
    ) -> Response:
        here = f"/tasks/{task_id}"
        try:
            task = ctx.state.task(task_id)
        except KeyError:
            return page("missing.html", status_code=404, task_id=task_id)
        if verdict not in _VERDICTS or task.hub_task_id is None:
            return _back(here, "choose agree or disagree for a task the hub ran")
        correction = None
        if code_value.strip():
            correction = {
                "code_value": code_value.strip(),
                "coding_scheme_designator": coding_scheme.strip() or "SCT",
                "code_meaning": code_meaning.strip() or code_value.strip(),
            }
        try:
            ctx.hub.send_feedback(task.hub_task_id, verdict, correction)
        except HubError as exc:
            return _back(here, f"the hub did not take the feedback: {exc}")
        coded = f" (correction {correction['code_value']})" if correction else ""
        ctx.state.record_event("feedback-sent", f"{verdict}{coded} sent to the hub", task.id)
        return _back(here, f"feedback '{verdict}' sent to the hub")

    return app


def _back(path: str, message: str) -> RedirectResponse:
    from urllib.parse import urlencode

    return RedirectResponse(f"{path}?{urlencode({'message': message})}", status_code=303)


def _database_ok(state: EdgeState) -> str:
    try:
        state.state_counts()
    except Exception as exc:  # any failure of the state database is a not-ready answer
        return f"edge.db cannot be read: {type(exc).__name__}"
    return "ok"


def _storage_ok(data_dir: Path) -> str:
    try:
        fd, name = tempfile.mkstemp(prefix=".ready-", dir=data_dir)
        os.close(fd)
        Path(name).unlink()
    except OSError as exc:
        return f"data folder not writable ({exc.strerror or exc})"
    return "ok"


def _hub_ok(ctx: StatusContext) -> str:
    now = time.time()
    for contact in ctx.state.peer_contacts():
        if contact.peer != "hub":
            continue
        latest = max(contact.last_success_at or 0.0, contact.last_error_at or 0.0)
        if now - latest < _FRESH_CONTACT_S:
            return "ok" if contact.up else f"hub unreachable: {contact.last_error}"
    try:
        ctx.hub.catalog()
    except HubError as exc:
        return f"hub unreachable: {exc}"
    return "ok"


def _configured_peers(settings: EdgeSettings) -> dict[str, str]:
    peers = {"hub": settings.hub.url}
    if settings.pacs is not None:
        pacs = settings.pacs
        peers["pacs"] = f"{pacs.ae_title} at {pacs.host}:{pacs.port}"
    for destination in settings.destinations:
        peers[destination.name] = f"{destination.ae_title} at {destination.host}:{destination.port}"
    if settings.ris is not None:
        peers["ris"] = f"MLLP {settings.ris.host}:{settings.ris.port}"
    if settings.fhir is not None:
        peers["fhir"] = settings.fhir.base_url
    return peers


def _policy(policy: PolicyFile) -> dict[str, Any]:
    try:
        current = policy.current()
    except AifiError as exc:
        return {"path": str(policy.path), "error": str(exc), "approvals": []}
    approvals = sorted(current.approvals.values(), key=lambda a: (a.algorithm, a.version))
    return {"path": str(policy.path), "error": "", "approvals": approvals, "add": current.add}


def _when(moment: float | None) -> str:
    if not moment:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
