"""The national hub: tenants, STOW-RS in, tasks, workers, WADO-RS out.

Start it with ``aifi hub serve --config hub.toml``; build it in code with
:func:`create_app`. Names are imported on first use, so the edge can import
:mod:`aifi.hub.schemas` without loading the hub's server.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aifi.hub.app import create_app
    from aifi.hub.config import HubSettings, load_hub_settings
    from aifi.hub.dispatcher import Dispatcher, WorkerPool
    from aifi.hub.hospitals import add_hospital
    from aifi.hub.server import HubServer

__all__ = [
    "Dispatcher",
    "HubServer",
    "HubSettings",
    "WorkerPool",
    "add_hospital",
    "create_app",
    "load_hub_settings",
]

_HOMES = {
    "Dispatcher": "aifi.hub.dispatcher",
    "HubServer": "aifi.hub.server",
    "HubSettings": "aifi.hub.config",
    "WorkerPool": "aifi.hub.dispatcher",
    "add_hospital": "aifi.hub.hospitals",
    "create_app": "aifi.hub.app",
    "load_hub_settings": "aifi.hub.config",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'aifi.hub' has no attribute {name!r}")
