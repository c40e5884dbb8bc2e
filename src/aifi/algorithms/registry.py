"""The algorithms this installation offers, by manifest id.

Registration is a plain tuple of ``"module:attribute"`` entries: adding an
algorithm is one line in :data:`ALGORITHMS`. The attribute is either an
object satisfying :class:`aifi.algorithms.base.Algorithm` or a class (any
callable without arguments) that makes one; the registry makes it once, on
first use. Making one must be cheap: read the model's manifest and check
its pin, but load weights on first run, so that listing the catalog stays
fast. An algorithm that cannot be made (a missing or mismatched model file)
fails the whole registry with its own error: a hub does not start with a
catalog it cannot honour.

Modules are imported on first use, so ``import aifi.algorithms`` stays light.

Remote algorithms (a vendor's inference service, :mod:`aifi.algorithms.remote`)
are configured by files ``<id>.remote.toml`` (or ``.remote.json``) in a model
store folder: :func:`load_remote` reads them, :func:`resolver` combines them
with the registered ones into what the hub calls to find an algorithm.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

from aifi.algorithms.base import Algorithm, Manifest
from aifi.errors import AlgorithmError

__all__ = ["ALGORITHMS", "available", "get", "load_remote", "manifests", "resolver"]

ALGORITHMS: tuple[str, ...] = (
    "aifi.algorithms.integrity_check:ALGORITHM",
    "aifi.algorithms.fracture:FractureDetection",
    "aifi.algorithms.bone_age:BoneAge",
    "aifi.algorithms.incidental_pe:IncidentalPE",
)
"""``"module:attribute"`` of each algorithm (an instance, or a class making one)."""


def available() -> dict[str, Algorithm]:
    """Every registered algorithm, by manifest id (a new dict on each call)."""
    return dict(_load())


def get(algorithm_id: str) -> Algorithm:
    """The algorithm whose manifest id is ``algorithm_id``.

    Raises :class:`aifi.errors.AlgorithmError` naming the unknown id and the
    ids that exist.
    """
    algorithms = _load()
    try:
        return algorithms[algorithm_id]
    except KeyError:
        known = ", ".join(sorted(algorithms)) or "none"
        raise AlgorithmError(
            f"no algorithm {algorithm_id!r} in this installation; available: {known}"
        ) from None


def manifests() -> list[Manifest]:
    """The manifests of all registered algorithms, sorted by id."""
    return [algorithm.manifest for _, algorithm in sorted(_load().items())]


def load_remote(folder: Path, environ: Mapping[str, str] | None = None) -> dict[str, Algorithm]:
    """The remote algorithms configured in ``folder`` (``*.remote.toml``, ``*.remote.json``).

    Raises :class:`aifi.errors.ConfigError` for a file that cannot be used
    (including a token variable that is not set) and
    :class:`aifi.errors.AlgorithmError` for an id configured twice.
    """
    from aifi.algorithms.remote import remote_from_file

    algorithms: dict[str, Algorithm] = {}
    files = sorted([*folder.glob("*.remote.toml"), *folder.glob("*.remote.json")])
    for path in files:
        algorithm = remote_from_file(path, environ)
        if algorithm.manifest.id in algorithms:
            raise AlgorithmError(
                f"remote algorithm id {algorithm.manifest.id!r} is configured twice"
            )
        algorithms[algorithm.manifest.id] = algorithm
    return algorithms


def resolver(remote_folder: Path | None = None) -> Callable[[str], Algorithm]:
    """Find an algorithm by id among the registered and ``remote_folder``'s remote ones.

    For :func:`aifi.hub.app.create_app`'s ``algorithms``. Raises
    :class:`aifi.errors.AlgorithmError` when a remote id repeats a registered one.
    """
    remote = load_remote(remote_folder) if remote_folder is not None else {}
    clash = sorted(set(remote) & set(_load()))
    if clash:
        raise AlgorithmError(f"remote algorithm id {clash[0]!r} is also registered in-process")

    def resolve(algorithm_id: str) -> Algorithm:
        return remote[algorithm_id] if algorithm_id in remote else get(algorithm_id)

    return resolve


@cache
def _load() -> dict[str, Algorithm]:
    algorithms: dict[str, Algorithm] = {}
    for entry in ALGORITHMS:
        algorithm = _make(entry)
        algorithm_id = algorithm.manifest.id
        if algorithm_id in algorithms:
            raise AlgorithmError(f"algorithm id {algorithm_id!r} is registered twice")
        algorithms[algorithm_id] = algorithm
    return algorithms


def _make(entry: str) -> Algorithm:
    module_name, _, attribute = entry.partition(":")
    found = getattr(importlib.import_module(module_name), attribute or "ALGORITHM", None)
    if isinstance(found, type) or (callable(found) and not isinstance(found, Algorithm)):
        found = found()
    if not isinstance(found, Algorithm):
        raise AlgorithmError(
            f"registry entry {entry!r} is neither an algorithm (manifest and run()) "
            "nor a class that makes one"
        )
    return found
