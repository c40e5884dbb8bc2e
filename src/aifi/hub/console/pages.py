"""The console's pages: thin routes over :mod:`aifi.hub.console.queries` and the hub's stages.

Every page needs a console session (:mod:`aifi.hub.console.session`); a
hospital's token sees its own hospital only, auditors see everything and
change nothing, operators may also act (suspend or activate a version, add
or end a subscription, re-run a canceled task). Every form is a POST that
carries the session's CSRF token. The routes are not part of the OpenAPI
document: the API is for machines, the console for people.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.templating import Jinja2Templates

import aifi
from aifi.errors import ConfigError
from aifi.hub import catalog, subscriptions, tasks
from aifi.hub.auditing import audit_log, audit_log_of
from aifi.hub.console import charts, queries
from aifi.hub.console.session import (
    COOKIE,
    LOGIN_COOKIE,
    MAX_AGE_S,
    ConsoleSession,
    SessionSigner,
    csrf_matches,
    load_secret,
)
from aifi.hub.deps import ContextDep, HubContext, SessionDep
from aifi.hub.drift import DriftBounds, drift_reports
from aifi.hub.feedback import agreement
from aifi.hub.hospitals import list_hospitals
from aifi.hub.models import AUDIT_TABLES, Principal, Task, Token
from aifi.hub.principals import hash_token
from aifi.hub.usage import usage, usage_csv
from aifi.protocol.schemas import AlgorithmState, Role, TaskState

__all__ = ["LoginRequired", "Viewer", "router", "signer_of"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
templates = Jinja2Templates(
    env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
)
router = APIRouter(prefix="/console", include_in_schema=False)


class LoginRequired(Exception):
    """No valid console session: the app answers with a redirect to the login page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


@dataclass(frozen=True)
class Viewer:
    """Who looks at the console, and what they may see and do."""

    principal: Principal
    session: ConsoleSession

    @property
    def hospital_id(self) -> str | None:
        """The one hospital a hospital's administrator sees; None for operators and auditors."""
        return self.principal.hospital_id if self.principal.role == Role.HOSPITAL else None

    @property
    def can_act(self) -> bool:
        return self.principal.role == Role.OPERATOR

    @property
    def actor(self) -> str:
        return f"{self.principal.role}:{self.principal.id}"


def signer_of(context: HubContext) -> SessionSigner:
    """The hub's cookie signer, its key read (or made) on first use."""
    signer: SessionSigner | None = getattr(context, "_console_signer", None)
    if signer is None:
        path = context.settings.console_secret_file or context.settings.data_dir / "console-secret"
        signer = SessionSigner(load_secret(path))
        context._console_signer = signer  # type: ignore[attr-defined]
    return signer


def current_viewer(request: Request, session: SessionDep, context: ContextDep) -> Viewer:
    found = signer_of(context).read(request.cookies.get(COOKIE))
    if found is not None:
        token = session.get(Token, found.token_id)
        if (
            token is not None
            and token.revoked_at is None
            and token.principal_id == found.principal_id
        ):
            return Viewer(token.principal, found)
    raise LoginRequired(str(request.url.path))


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


def operator_of(viewer: ViewerDep) -> Viewer:
    if not viewer.can_act:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="only an operator may change this; you can look"
        )
    return viewer


Acting = Annotated[Viewer, Depends(operator_of)]
Csrf = Annotated[str, Form(max_length=100)]


def _render(request: Request, viewer: Viewer | None, name: str, **values: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "viewer": viewer,
            "version": aifi.__version__,
            "message": request.query_params.get("done", "")[:300],
            **values,
        },
    )


def _check_csrf(viewer: Viewer, sent: str) -> None:
    if not csrf_matches(viewer.session.csrf, sent):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="the form is stale; reload the page and try again"
        )


def _back(url: str, message: str) -> RedirectResponse:
    return RedirectResponse(f"{url}?{urlencode({'done': message})}", status.HTTP_303_SEE_OTHER)


# -- login ------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, next: str = "/console") -> HTMLResponse:
    return _login_form(request, next, "")


def _login_form(request: Request, next_url: str, error: str) -> HTMLResponse:
    form_token = secrets.token_urlsafe(16)
    response = _render(
        request, None, "login.html", form_token=form_token, next=_local(next_url), error=error
    )
    response.set_cookie(
        LOGIN_COOKIE, form_token, max_age=600, httponly=True, samesite="strict",
        path="/console/login", secure=_secure(request),
    )  # fmt: skip
    if error:
        response.status_code = status.HTTP_401_UNAUTHORIZED
    return response


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    context: ContextDep,
    token: Annotated[str, Form(max_length=200)],
    form_token: Annotated[str, Form(max_length=100)],
    next: Annotated[str, Form(max_length=500)] = "/console",
) -> Response:
    if not csrf_matches(request.cookies.get(LOGIN_COOKIE, ""), form_token):
        return _login_again(request, "the login form expired; try again")
    found = session.scalar(select(Token).where(Token.token_sha256 == hash_token(token.strip())))
    if found is None or found.revoked_at is not None:
        logger.info("console login refused: unknown or revoked token")
        return _login_again(request, "unknown or revoked token")
    cookie, _ = signer_of(context).issue(found.principal_id, found.id)
    audit_log_of(session).append(
        "console.login",
        actor=f"{found.principal.role}:{found.principal_id}",
        hospital=found.principal.hospital_id,
        detail={"token": found.id},
    )
    response = RedirectResponse(_local(next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        COOKIE, cookie, max_age=MAX_AGE_S, httponly=True, samesite="strict", path="/console",
        secure=_secure(request),
    )  # fmt: skip
    response.delete_cookie(LOGIN_COOKIE, path="/console/login")
    return response


def _login_again(request: Request, why: str) -> Response:
    return _login_form(request, "/console", why)


@router.post("/logout")
def logout(viewer: ViewerDep, csrf: Csrf) -> Response:
    _check_csrf(viewer, csrf)
    response = RedirectResponse("/console/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/console")
    return response


def _local(url: str) -> str:
    """Only paths of the console itself as a place to go after login (no open redirect)."""
    return url if url.startswith("/console") and "//" not in url and "\\" not in url else "/console"


def _secure(request: Request) -> bool:
    settings = request.app.state.hub.settings
    return bool(settings.environment == "production" or request.url.scheme == "https")


# -- overview and charts -----------------------------------------------------
@router.get("")
def overview(request: Request, viewer: ViewerDep, session: SessionDep, context: ContextDep) -> Any:
    data = queries.chart_data(session, viewer.hospital_id)
    turnaround_series: dict[str, dict[date, float]] = {}
    for algorithm, by_day in data.turnaround.items():
        turnaround_series[f"{algorithm} p50"] = {d: v[0] for d, v in by_day.items()}
        turnaround_series[f"{algorithm} p95"] = {d: v[1] for d, v in by_day.items()}
    drift = [] if viewer.hospital_id else drift_reports(session, DriftBounds.of(context.settings))
    return _render(
        request,
        viewer,
        "overview.html",
        counts=queries.state_counts(session, viewer.hospital_id),
        turnaround=charts.line_chart(
            "Turnaround per algorithm (p50, p95), seconds", data.days, turnaround_series, unit="s"
        ),
        per_hospital=charts.bar_chart("Tasks per day per hospital", data.days, data.per_hospital),
        failure=charts.line_chart(
            "Failure rate (canceled of ended tasks)",
            data.days,
            {"failure rate": data.failure_rate},
            percent=True,
        ),
        positive=data.positive_rate,
        flagged=[r for r in drift if r.flagged],
    )


@router.get("/hospitals")
def hospitals(request: Request, viewer: ViewerDep, session: SessionDep) -> Any:
    rows = queries.hospital_rows(session, viewer.hospital_id)
    return _render(request, viewer, "hospitals.html", rows=rows, now=datetime.now(UTC))


# -- catalog -------------------------------------------------------------------
@router.get("/catalog")
def catalog_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Any:
    entries = catalog.list_catalog(session)
    return _render(request, viewer, "catalog.html", entries=entries, csrf=viewer.session.csrf)


@router.post("/catalog/{algorithm_id}/{version}/state")
def change_state(
    algorithm_id: str,
    version: str,
    viewer: Acting,
    session: SessionDep,
    csrf: Csrf,
    state: Annotated[AlgorithmState, Form()],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    _check_csrf(viewer, csrf)
    try:
        catalog.set_state(
            session, algorithm_id, version, state, actor=viewer.actor, reason=reason or None
        )
    except ConfigError as exc:
        return _back("/console/catalog", str(exc))
    return _back("/console/catalog", f"{algorithm_id} {version} is {state.value}")


# -- subscriptions -------------------------------------------------------------
@router.get("/subscriptions")
def subscriptions_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Any:
    rows = subscriptions.list_subscriptions(session, viewer.hospital_id)
    names = {h.id: h.name for h in list_hospitals(session)}
    hospitals_shown = (
        {k: v for k, v in names.items() if k == viewer.hospital_id} if viewer.hospital_id else names
    )
    algorithms = sorted({e.algorithm_id for e in catalog.list_catalog(session)})
    return _render(
        request,
        viewer,
        "subscriptions.html",
        rows=rows,
        names=hospitals_shown,
        algorithms=algorithms,
        now=datetime.now(UTC),
        csrf=viewer.session.csrf,
    )


@router.post("/subscriptions")
def add_subscription(
    viewer: Acting,
    session: SessionDep,
    csrf: Csrf,
    hospital_id: Annotated[str, Form(max_length=64)],
    algorithm_id: Annotated[str, Form(max_length=64)],
    agreement_reference: Annotated[str, Form(max_length=200)],
    controller: Annotated[str, Form(max_length=200)],
    processor: Annotated[str, Form(max_length=200)],
    algorithm_version: Annotated[str, Form(max_length=64)] = "",
    valid_from: Annotated[str, Form(max_length=10)] = "",
    valid_until: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    _check_csrf(viewer, csrf)
    try:
        created = subscriptions.add_subscription(
            session,
            hospital_id=hospital_id,
            algorithm_id=algorithm_id,
            agreement_reference=agreement_reference,
            controller=controller,
            processor=processor,
            actor=viewer.actor,
            algorithm_version=algorithm_version or None,
            valid_from=_day(valid_from),
            valid_until=_day(valid_until),
        )
    except (ConfigError, ValueError) as exc:
        return _back("/console/subscriptions", f"not added: {exc}")
    return _back("/console/subscriptions", f"subscription {created.agreement_reference} added")


@router.post("/subscriptions/{subscription_id}/end")
def end_subscription(
    subscription_id: str, viewer: Acting, session: SessionDep, csrf: Csrf
) -> Response:
    _check_csrf(viewer, csrf)
    try:
        ended = subscriptions.end_subscription(session, subscription_id, actor=viewer.actor)
    except ConfigError as exc:
        return _back("/console/subscriptions", str(exc))
    return _back("/console/subscriptions", f"subscription {ended.agreement_reference} ended")


def _day(text: str) -> datetime | None:
    if not text:
        return None
    return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)


# -- tasks ---------------------------------------------------------------------
@router.get("/tasks")
def tasks_list(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    state: Annotated[str, Query(max_length=16)] = "",
    algorithm: Annotated[str, Query(max_length=64)] = "",
    hospital: Annotated[str, Query(max_length=64)] = "",
    day_from: Annotated[str, Query(max_length=10, alias="from")] = "",
    day_to: Annotated[str, Query(max_length=10, alias="to")] = "",
) -> Any:
    try:
        start = date.fromisoformat(day_from) if day_from else None
        end = date.fromisoformat(day_to) if day_to else None
    except ValueError:
        start = end = None
    rows = queries.tasks_page(
        session,
        viewer.hospital_id,
        state=state or None,
        algorithm_id=algorithm or None,
        hospital=hospital or None,
        day_from=start,
        day_to=end,
    )
    names = {h.id: h.name for h in list_hospitals(session)}
    if viewer.hospital_id:
        names = {k: v for k, v in names.items() if k == viewer.hospital_id}
    return _render(
        request,
        viewer,
        "tasks.html",
        rows=rows,
        states=[s.value for s in TaskState],
        algorithms=sorted({e.algorithm_id for e in catalog.list_catalog(session)}),
        names=names,
        filters={"state": state, "algorithm": algorithm, "hospital": hospital,
                 "from": day_from, "to": day_to},
    )  # fmt: skip


@router.get("/queue")
def queue_page(
    request: Request, viewer: ViewerDep, session: SessionDep, context: ContextDep
) -> Any:
    """What the workers run now and what waits, in the order they take it (urgent first)."""
    running, waiting = queries.queue_rows(session, viewer.hospital_id)
    return _render(
        request,
        viewer,
        "queue.html",
        running=running,
        waiting=waiting,
        priority_name=queries.priority_name,
        outside=set(context.settings.outside_algorithms),
    )


def _visible_task(session: Session, viewer: Viewer, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None or (viewer.hospital_id and task.hospital_id != viewer.hospital_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task {task_id}")
    return task


@router.get("/tasks/{task_id}")
def task_page(task_id: str, request: Request, viewer: ViewerDep, session: SessionDep) -> Any:
    task = _visible_task(session, viewer, task_id)
    names = {h.id: h.name for h in list_hospitals(session)}
    return _render(
        request,
        viewer,
        "task.html",
        task=task,
        hospital=names.get(task.hospital_id, ""),
        steps=queries.task_timeline(session, task),
        csrf=viewer.session.csrf,
    )


@router.post("/tasks/{task_id}/rerun")
def rerun(
    task_id: str, viewer: Acting, session: SessionDep, context: ContextDep, csrf: Csrf
) -> Response:
    _check_csrf(viewer, csrf)
    outcome = tasks.rerun_task(session, task_id, actor=viewer.actor)
    if isinstance(outcome, tasks.TaskRefused):
        if outcome.status_code == 404:
            raise HTTPException(outcome.status_code, detail=outcome.detail)
        return _back(f"/console/tasks/{task_id}", outcome.detail)
    context.dispatcher.submit(outcome.id)
    return _back(f"/console/tasks/{task_id}", "task scheduled again")


# -- refusals, audit, usage, quality ---------------------------------------------
@router.get("/refusals")
def refusals_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Any:
    rows = queries.list_refusals(session, viewer.hospital_id)
    return _render(request, viewer, "refusals.html", rows=rows)


@router.get("/audit")
def audit_page(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    context: ContextDep,
    action: Annotated[str, Query(max_length=64)] = "",
) -> Any:
    log = audit_log(context.engine)
    problems = log.verify()
    events = AUDIT_TABLES.events
    query = select(events).order_by(events.c.at.desc(), events.c.seq.desc()).limit(200)
    if viewer.hospital_id:
        query = query.where(events.c.hospital == viewer.hospital_id)
    if action:
        query = query.where(events.c.action == action)
    rows = list(session.execute(query))
    return _render(
        request,
        viewer,
        "audit.html",
        intact=not problems,
        problems=problems[:20],
        head=log.head(),
        rows=rows,
        action=action,
    )


@router.get("/usage")
def usage_page(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    month: Annotated[str, Query(max_length=7)] = "",
) -> Any:
    month = month or f"{datetime.now(UTC):%Y-%m}"
    try:
        rows = _usage_rows(session, viewer, month)
        problem = ""
    except ConfigError as exc:
        rows, problem = [], str(exc)
    return _render(request, viewer, "usage.html", rows=rows, month=month, problem=problem)


@router.get("/usage.csv")
def usage_download(
    viewer: ViewerDep, session: SessionDep, month: Annotated[str, Query(max_length=7)] = ""
) -> PlainTextResponse:
    month = month or f"{datetime.now(UTC):%Y-%m}"
    try:
        rows = _usage_rows(session, viewer, month)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return PlainTextResponse(
        usage_csv(rows),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="aifi-usage-{month}.csv"'},
    )


def _usage_rows(session: Session, viewer: Viewer, month: str) -> list[Any]:
    rows = usage(session, month)
    return [r for r in rows if viewer.hospital_id in (None, r.hospital_id)]


@router.get("/quality")
def quality_page(
    request: Request, viewer: ViewerDep, session: SessionDep, context: ContextDep
) -> Any:
    rows = agreement(session, hospital_id=viewer.hospital_id)
    reports = [] if viewer.hospital_id else drift_reports(session, DriftBounds.of(context.settings))
    return _render(request, viewer, "quality.html", rows=rows, reports=reports)


PAGES: tuple[tuple[str, str], ...] = (
    ("/console", "Overview"),
    ("/console/hospitals", "Hospitals"),
    ("/console/catalog", "Catalog"),
    ("/console/subscriptions", "Subscriptions"),
    ("/console/tasks", "Tasks"),
    ("/console/queue", "Queue"),
    ("/console/refusals", "STOW refusals"),
    ("/console/audit", "Audit trail"),
    ("/console/usage", "Usage"),
    ("/console/quality", "Feedback & drift"),
)
templates.env.globals["pages"] = PAGES
