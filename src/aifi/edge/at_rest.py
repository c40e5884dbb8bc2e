"""What the edge keeps on disk is the hospital's alone: owner-only files, the key kept apart.

The edge's data folder holds received originals (with the patient's identity),
the outbox, ``edge.db``, ``audit.db`` and the encrypted ``pseudonyms.db``. The
edge process creates everything with umask 077 (files 0600, folders 0700), so
no other account on the machine reads them; folders from an earlier release
are tightened when the edge starts. The key that opens the pseudonym map lives
apart from the data folder in production (``key_file``, ``AIFI_EDGE_KEY_FILE``,
``AIFI_EDGE_KEY``), so a copy of the folder alone re-identifies no one.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from aifi.deid.keys import load_key
from aifi.edge.config import KEY_ENV, EdgeSettings

__all__ = ["PRIVATE_UMASK", "edge_key", "make_private"]

logger = logging.getLogger(__name__)

#: Owner-only: files 0600, folders 0700.
PRIVATE_UMASK = 0o077


def make_private(data_dir: Path) -> int:
    """Set umask 077 for this process; tighten ``data_dir`` and its content; return the old umask.

    The umask is process-wide, so files other parts of the edge create (the
    listener's received instances, SQLite's WAL and SHM files) are owner-only
    too. Existing files under ``data_dir`` readable by others (from an earlier
    release) are made owner-only.
    """
    previous = os.umask(PRIVATE_UMASK)
    data_dir.mkdir(parents=True, exist_ok=True)
    tightened = 0
    for root, dirs, files in os.walk(data_dir):
        for name in (*dirs, *files):
            tightened += _owner_only(Path(root) / name)
    tightened += _owner_only(data_dir)
    if tightened:
        logger.warning(
            "%d files or folders under %s were readable by others; now owner-only",
            tightened,
            data_dir,
        )
    return previous


def _owner_only(path: Path) -> int:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
        return 0
    path.chmod(stat.S_IMODE(st.st_mode) & 0o700)
    return 1


def edge_key(settings: EdgeSettings, environ: Mapping[str, str] | None = None) -> bytes:
    """The hospital's key, from ``AIFI_EDGE_KEY`` or the configured key file."""
    environ = os.environ if environ is None else environ
    path = settings.secret_key_path
    if not environ.get(KEY_ENV) and path.is_relative_to(settings.data_dir):
        logger.debug(
            "the key file %s is inside the data folder; in production set key_file (or %s) to a "
            "path outside it",
            path,
            "AIFI_EDGE_KEY_FILE",
        )
    return load_key(path, environ, var=KEY_ENV)
