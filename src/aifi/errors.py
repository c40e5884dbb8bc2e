"""The one exception tree of aifi: see :mod:`aifi.core.errors` (the contract layer)."""

from aifi.core.errors import *  # noqa: F403
from aifi.core.errors import __all__ as __all__
