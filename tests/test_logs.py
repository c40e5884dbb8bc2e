"""Logging: one JSON object per line with the task id, library noise quieted, CLI choice wins."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifi.edge.state import EdgeState
from aifi.logs import setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if getattr(handler, "aifi", False):
            root.removeHandler(handler)
    root.handlers[:] = handlers
    root.setLevel(level)
    import aifi.logs

    aifi.logs._command_line_format = None


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_task_id_and_libraries_stay_quiet(tmp_path: Path) -> None:
    out = io.StringIO()
    setup_logging("json", stream=out)
    state = EdgeState(tmp_path / "edge.db")
    task_id = state.create_task("1.2.3", "fracture", "limbs", [], 0.0)
    state.record_event("task-submitted", "hub task h-1", task_id=task_id)
    logging.getLogger("aifi.edge.deliver").warning("task %s: PACS store failed", task_id)
    logging.getLogger("httpx").info('HTTP Request: GET http://hub/tasks "HTTP/1.1 200 OK"')
    logging.getLogger("pynetdicom.assoc").info("Requesting Association")
    state.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["logger"], x.get("task_id")) for x in lines] == [
        ("aifi.edge.events", task_id),
        ("aifi.edge.deliver", task_id),
    ]
    assert lines[0]["message"] == f"task {task_id}: task-submitted: hub task h-1"
    assert lines[1]["level"] == "WARNING"


@pytest.mark.usefixtures("restore_logging")
def test_the_command_line_format_wins_over_the_configuration() -> None:
    out = io.StringIO()
    setup_logging("json", command_line=True, stream=out)
    setup_logging("text", stream=out, http_requests=True)  # edge.toml's [logging] format
    logging.getLogger("aifi.test").info("hello")
    logging.getLogger("httpx").info("one request")  # http_requests = true
    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == [
        "hello",
        "one request",
    ]
