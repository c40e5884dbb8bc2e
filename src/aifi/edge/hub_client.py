"""The edge's client for the hub: see :mod:`aifi.protocol.client` (the wire contract)."""

from aifi.protocol.client import *  # noqa: F403
from aifi.protocol.client import __all__ as __all__
