"""The codes algorithms answer with: see :mod:`aifi.core.codes` (the contract layer)."""

from aifi.core.codes import *  # noqa: F403
from aifi.core.codes import __all__ as __all__
