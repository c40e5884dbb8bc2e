"""The hub's API bodies: the wire contract lives in :mod:`aifi.protocol.schemas`."""

from aifi.protocol.schemas import *  # noqa: F403
from aifi.protocol.schemas import __all__ as __all__
