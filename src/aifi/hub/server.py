"""Run the hub under uvicorn: in the foreground (``aifi hub serve``, ``api``) or on a thread.

``serve`` runs the embedded hub (API, workers and janitor in one process)
or, with ``role="api"``, the HTTP API alone; :func:`serve_api_processes`
runs the API in several uvicorn worker processes on one port. The thread
form (:class:`HubServer`) serves the demo and tests: one process holds hub,
edge and a PACS on loopback, and the hub stops cleanly (workers finish or
give their tasks back to the queue for the next start).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from aifi.algorithms.base import Algorithm
from aifi.algorithms.registry import Installation
from aifi.errors import AifiError, ConfigError
from aifi.hub.app import Role, create_app
from aifi.hub.config import HubSettings

__all__ = ["HubServer", "api_app", "bind", "serve", "serve_api_processes"]

SETTINGS_VARIABLE = "AIFI_API_SETTINGS_JSON"
"""How :func:`serve_api_processes` hands the settings to its uvicorn worker processes."""


def serve(
    settings: HubSettings, installation: Installation | None = None, role: Role = "embedded"
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM), on ``settings.host:settings.port``.

    ``installation`` is the algorithms to run (default: made from
    ``settings`` when the app starts). The port is bound before anything
    starts, so a port in use is one :class:`ConfigError` (:func:`bind`).
    """
    sock = bind(settings)
    algorithms: Callable[[str], Algorithm] | None = installation
    app = create_app(
        settings,
        algorithms=algorithms,
        manifests=installation.manifests if installation is not None else None,
        role=role,
    )
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None
    )
    uvicorn.Server(config).run(sockets=[sock])


def api_app() -> FastAPI:  # called-by: uvicorn's factory import string in serve_api_processes
    """The API app of one uvicorn worker process (:func:`serve_api_processes`)."""
    from aifi.logs import setup_logging

    settings = HubSettings.model_validate_json(os.environ[SETTINGS_VARIABLE])
    setup_logging(level=settings.log_level.upper())  # a fresh process: the CLI's set-up is gone
    return create_app(settings, role="api")


def serve_api_processes(settings: HubSettings, processes: int) -> None:
    """``aifi hub api --processes N``: N uvicorn worker processes sharing the port.

    The API holds no state of its own (the database holds it all), so
    requests may land on any process of any replica.
    """
    bind(settings).close()  # a port in use is one ConfigError before anything starts
    os.environ[SETTINGS_VARIABLE] = settings.model_dump_json()
    uvicorn.run(
        "aifi.hub.server:api_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=processes,
        log_level=settings.log_level,
        log_config=None,
    )


def bind(settings: HubSettings) -> socket.socket:
    """A socket listening on ``settings.host:settings.port``; ConfigError naming the setting."""
    try:
        infos = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            f"host {settings.host!r} (setting 'host', AIFI_HUB_HOST) is not an address "
            f"of this machine: {exc.strerror}"
        ) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {settings.port} on {settings.host} is in use by another program "
                "(setting 'port' in hub.toml, or AIFI_HUB_PORT); stop that program or "
                "choose another port"
            ) from exc
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} (settings 'host' and 'port'): "
            f"{exc.strerror}"
        ) from exc
    sock.set_inheritable(True)
    return sock


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
        self._thread = threading.Thread(target=self._run, name="aifi-hub", daemon=True)
        self._socket: socket.socket | None = None

    def _run(self) -> None:
        self._server.run(sockets=[self._socket] if self._socket is not None else None)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; returns once the hub answers (or raises AifiError)."""
        self._socket = bind(self.settings)
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
        if self._socket is not None:
            self._socket.close()

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
