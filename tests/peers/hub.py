"""The real aifi hub, served in-process on a loopback port, for edge tests.

``LocalHub`` runs ``create_app`` under uvicorn (:class:`aifi.hub.server.HubServer`)
with its own SQLite database and data folder; ``add_hospital`` registers a
hospital subscribed to the given algorithms and returns its token, as
``aifi hub hospital add`` would print it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.hospitals import add_hospital
from aifi.hub.server import HubServer
from aifi.netutil import free_port


class LocalHub:
    def __init__(self, folder: Path) -> None:
        self.settings = HubSettings(
            data_dir=folder, port=free_port(), workers=1, log_level="warning"
        )
        self.server = HubServer(self.settings)

    @property
    def url(self) -> str:
        return self.server.url

    def add_hospital(self, name: str, subscribe: Sequence[str] = ("integrity-check",)) -> str:
        engine = make_engine(self.settings.effective_database_url)
        try:
            migrate(engine)
            with make_sessions(engine)() as session:
                return add_hospital(session, name, subscribe=subscribe)[1]
        finally:
            engine.dispose()


@contextmanager
def local_hub(folder: Path) -> Iterator[LocalHub]:
    hub = LocalHub(folder)
    engine = make_engine(hub.settings.effective_database_url)
    migrate(engine)  # before the app opens the database
    engine.dispose()
    with hub.server:
        yield hub
