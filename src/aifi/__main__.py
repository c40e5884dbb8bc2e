"""``python -m aifi``: the same as the ``aifi`` command."""

from aifi.cli import main

main()
