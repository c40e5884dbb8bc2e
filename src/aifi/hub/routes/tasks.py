"""``/tasks``: create, list, read and acknowledge tasks (IHE AIW-I style UPS).

Thin: each route authenticates the hospital, calls :mod:`aifi.hub.tasks`
and translates a refusal value into its HTTP status.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import TypeAdapter
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aifi.hub import polling, retention, tasks
from aifi.hub.auth import CurrentHospital
from aifi.hub.db import retrying
from aifi.hub.deps import ContextDep, SessionDep
from aifi.protocol.schemas import Acknowledge, TaskCreate, TaskOut, TaskState

__all__ = ["router"]

router = APIRouter(prefix="/tasks", tags=["tasks"])

_LIST_FILTERS = frozenset({"state", "acknowledged", "limit", "after", "wait_s"})


def known_filters(request: Request) -> None:
    """Refuse a query parameter the list does not know (400), rather than ignore it.

    ``?study_instance_uid=X`` answering every task would look like a filtered answer.
    """
    unknown = sorted(set(request.query_params) - _LIST_FILTERS)
    if unknown:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"unknown filter {', '.join(unknown)}; GET /tasks filters on"
            f" {', '.join(sorted(_LIST_FILTERS))}",
        )


@router.post(
    "",
    response_model=TaskOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "the task with this client_task_id already existed"}},
)
def create_task(
    body: TaskCreate,
    hospital: CurrentHospital,
    context: ContextDep,
    response: Response,
) -> TaskOut:
    """Create the task, or answer the one with this ``client_task_id`` (200).

    Run again from the start after a dropped connection or a serialization
    failure (:func:`aifi.hub.db.retrying`): ``client_task_id`` makes that
    harmless, a task committed by the failed attempt is found and answered.
    """

    def create(session: Session) -> tasks.TaskRefused | tuple[TaskOut, bool, str]:
        outcome = tasks.create_task(session, hospital.id, body, context.algorithms, context.store)
        if isinstance(outcome, tasks.TaskRefused):
            return outcome
        task, created = outcome
        return tasks.task_out(task), created, task.id

    outcome = retrying(context.sessions, create)
    if isinstance(outcome, tasks.TaskRefused):
        raise HTTPException(outcome.status_code, detail=outcome.detail)
    task_out, created, task_id = outcome
    if created:
        context.dispatcher.submit(task_id)
    else:
        response.status_code = status.HTTP_200_OK
    return task_out


@router.get(
    "",
    response_model=list[TaskOut],
    dependencies=[Depends(known_filters)],
    responses={
        304: {"description": "wait_s passed and the listing named by If-None-Match is unchanged"}
    },
)
async def list_tasks(
    request: Request,
    hospital: CurrentHospital,
    session: SessionDep,
    state: TaskState | None = None,
    acknowledged: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        str | None,
        Query(max_length=64, description="page on: tasks listed after this task id"),
    ] = None,
    wait_s: Annotated[
        float,
        Query(
            ge=0,
            le=polling.MAX_WAIT_S,
            description="long poll: with If-None-Match, wait up to this long for the listing"
            " to change (else 304); the answer carries the listing's ETag",
        ),
    ] = 0,
) -> Response | list[TaskOut]:
    """The hospital's tasks, oldest first, in two queries (tasks with results, priors).

    With ``wait_s``, a long poll (:mod:`aifi.hub.polling`): answered at once
    when the listing differs from the ``If-None-Match`` one, else when it
    changes or after ``wait_s`` with 304. No connection is held while waiting.
    """
    hospital_id = hospital.id
    seen = polling.seen_tag(request.headers.get("if-none-match")) if wait_s else None
    if seen is not None:  # the session holds no connection now (auth ended its read)
        watcher: polling.Watcher = request.app.state.task_watcher  # made by the lifespan
        changed = await watcher.wait((hospital_id, state, acknowledged), seen, wait_s)
        if not changed:
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": seen})

    def listing() -> tuple[str | None, list[TaskOut]]:
        etag = (
            polling.mark(session, hospital_id, state=state, acknowledged=acknowledged)
            if wait_s
            else None
        )  # before the listing: a change in between shows at the next poll
        found = tasks.list_tasks(
            session, hospital_id, state=state, acknowledged=acknowledged, limit=limit, after=after
        )
        priors = tasks.prior_studies_by_task(session, [t.id for t in found])
        listed = [tasks.task_out(t, priors.get(t.id, [])) for t in found]
        session.close()  # no connection held past this thread
        return etag, listed

    etag, listed = await run_in_threadpool(listing)
    if etag is None:
        return listed
    body = TypeAdapter(list[TaskOut]).dump_json(listed)
    return Response(body, media_type="application/json", headers={"ETag": etag})


@router.get("/{task_id}", response_model=TaskOut)
def read_task(task_id: str, hospital: CurrentHospital, session: SessionDep) -> TaskOut:
    task = tasks.find_task(session, hospital.id, task_id)
    if task is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task {task_id}")
    return tasks.task_out(task)


@router.post("/{task_id}/acknowledge", response_model=TaskOut)
def acknowledge_task(
    task_id: str,
    body: Acknowledge,
    hospital: CurrentHospital,
    context: ContextDep,
) -> TaskOut:
    """Record delivery; the task's input images are deleted from the hub right away.

    Run again from the start after a dropped connection or a serialization
    failure (:func:`aifi.hub.db.retrying`): acknowledging twice is harmless,
    and so is deleting the same images twice.
    """

    def acknowledge(session: Session) -> tasks.TaskRefused | TaskOut:
        outcome = tasks.acknowledge_task(session, hospital.id, task_id, body)
        if isinstance(outcome, tasks.TaskRefused):
            return outcome
        retention.purge_acknowledged(session, context.store, outcome)
        return tasks.task_out(outcome)

    outcome = retrying(context.sessions, acknowledge)
    if isinstance(outcome, tasks.TaskRefused):
        raise HTTPException(outcome.status_code, detail=outcome.detail)
    return outcome
