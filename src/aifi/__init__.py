"""aifi: national infrastructure for AI in medical imaging.

Two programs share this package: the *edge*, which runs inside a hospital,
and the *hub*, which runs once nationally. See ``DESIGN.md`` in the shared
folder of the project for the picture and the words used throughout.
"""

from aifi.core.errors import AifiError

__all__ = ["AifiError", "__version__"]

__version__ = "0.1.0"
