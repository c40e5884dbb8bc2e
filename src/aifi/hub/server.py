"""Run the hub under uvicorn: in the foreground (``aifi hub serve``) or on a thread.

The thread form serves the demo and tests: one process holds hub, edge and
a PACS on loopback, and the hub stops cleanly (workers finish, queued tasks
stay SCHEDULED for the next start).
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from aifi.errors import AifiError
from aifi.hub.app import create_app
from aifi.hub.config import HubSettings

__all__ = ["HubServer", "serve"]


def serve(settings: HubSettings) -> None:
    """Serve until interrupted (SIGINT/SIGTERM), on ``settings.host:settings.port``."""
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
    )


class HubServer:
    """A hub served on a background thread; use as a context manager.

    ``app`` defaults to ``create_app(settings)``; pass one built with other
    parts (algorithms, dispatcher) to serve that instead.
    """

    def __init__(self, settings: HubSettings, app: FastAPI | None = None) -> None:
        self.settings = settings
        config = uvicorn.Config(
            app if app is not None else create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="aifi-hub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; returns once the hub answers (or raises AifiError)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise AifiError(
                    f"the hub did not start on {self.url}; see the log (port in use? database?)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise AifiError(f"the hub did not start on {self.url} within {timeout:.0f} s")
            time.sleep(0.01)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait for running tasks to finish."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
