"""Logging of the aifi programs: one line per step, as text or JSON, library noise quieted.

Each step of a task is logged with the task id as correlation id (the same
id the hub records; in JSON it is the ``task_id`` field). Libraries log only
warnings: pynetdicom's per-PDU and per-association chatter, Alembic's plugin
set-up, uvicorn's start banner, and the access line of every HTTP request
(the edge polls its hub several times a second) are quiet unless
``http_requests`` is asked for.

The format chosen on the command line (``aifi --log-format json``) wins over
one in a configuration file (``[logging] format`` in edge.toml).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from typing import IO, Literal

__all__ = ["FORMAT_ENV", "JsonFormatter", "LogFormat", "setup_logging"]

LogFormat = Literal["text", "json"]
#: Environment variable naming the format when no option gives it.
FORMAT_ENV = "AIFI_LOG_FORMAT"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Library loggers held at WARNING (their INFO is per request, per PDU or per start).
QUIET = (
    "alembic",
    "httpx",
    "httpcore",
    "pynetdicom",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "multipart",
    "python_multipart",
)
# Loggers that give one line per HTTP request when ``http_requests`` is on.
HTTP_REQUESTS = ("httpx", "uvicorn.access")

_command_line_format: LogFormat | None = None
_TASK_IN_MESSAGE = re.compile(r"^task %s\b")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, task_id, and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = getattr(record, "task_id", None) or _task_of(record)
        if task_id:
            entry["task_id"] = task_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _task_of(record: logging.LogRecord) -> str | None:
    """The task id of a ``"task %s: ..."`` line (the edge's convention)."""
    if isinstance(record.msg, str) and _TASK_IN_MESSAGE.match(record.msg) and record.args:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        return str(args[0])
    return None


def setup_logging(
    fmt: LogFormat | None = None,
    *,
    level: str | int = "INFO",
    http_requests: bool = False,
    command_line: bool = False,
    stream: IO[str] | None = None,
) -> None:
    """(Re)configure the root logger; safe to call again (the CLI, then ``edge serve``).

    ``fmt=None`` keeps the command line's choice, else ``$AIFI_LOG_FORMAT``,
    else text. ``command_line=True`` records ``fmt`` as the command line's
    choice, which later calls with a format from a file do not override.
    """
    global _command_line_format
    if command_line:
        _command_line_format = fmt
    chosen = _command_line_format or fmt or os.environ.get(FORMAT_ENV, "").strip() or "text"
    if chosen not in ("text", "json"):
        chosen = "text"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "aifi", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.aifi = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    if http_requests:
        for name in HTTP_REQUESTS:
            logging.getLogger(name).setLevel(logging.INFO)
