"""The algorithms this installation offers, by manifest id.

Registration is a plain tuple of ``"module:attribute"`` entries: adding an
algorithm is one line in :data:`ALGORITHMS`. The attribute is either an
object satisfying :class:`aifi.algorithms.base.Algorithm` or a class (any
callable without arguments) that makes one; the registry makes it once, on
first use. Making one must be cheap: read the model's manifest and check
its pin, but load weights on first run, so that listing the catalog stays
fast. A built-in algorithm that cannot be made (its shipped model damaged)
fails the whole registry with its own error: the installation is broken.

Modules are imported on first use, so ``import aifi.algorithms`` stays light.

What one hub runs is an :class:`Installation` (:func:`install`), made once at
start from two settings of the hub:

* a **model store** (``model_dir``): ``<id>.toml`` (or ``.json``) model
  manifests and the ONNX files they pin by SHA-256
  (:mod:`aifi.algorithms.onnx_model`). A manifest there replaces the built-in
  demo model of that algorithm; a file named for no built-in algorithm is
  refused. A model file that does not match its pin is *refused*, not fatal:
  the hub starts, lists the algorithm with the reason, and cancels each of
  its tasks with that reason instead of running it.
* a **remote-algorithm folder** (``remote_algorithms_dir``): files
  ``<id>.remote.toml`` (or ``.remote.json``), one per vendor-hosted
  algorithm (:mod:`aifi.algorithms.remote`), read by :func:`load_remote`.

A configuration error (an unreadable manifest, an unset token variable, an
id configured twice) stops the start with its :class:`aifi.errors.ConfigError`
or :class:`aifi.errors.AlgorithmError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.errors import AlgorithmError, ConfigError, ModelIntegrityError

__all__ = [
    "ALGORITHMS",
    "Installation",
    "Installed",
    "available",
    "get",
    "install",
    "load_remote",
    "manifests",
]

logger = logging.getLogger(__name__)

ALGORITHMS: tuple[str, ...] = (
    "aifi.algorithms.integrity_check:ALGORITHM",
    "aifi.algorithms.fracture:FractureDetection",
    "aifi.algorithms.bone_age:BoneAge",
    "aifi.algorithms.incidental_pe:IncidentalPE",
)
"""``"module:attribute"`` of each algorithm (an instance, or a class making one)."""

BUILT_IN = "built-in"


def available() -> dict[str, Algorithm]:
    """Every registered algorithm with its built-in model, by manifest id (a new dict)."""
    return {algorithm_id: algorithm for algorithm_id, (_, algorithm) in _load().items()}


def get(algorithm_id: str) -> Algorithm:
    """The registered algorithm whose manifest id is ``algorithm_id`` (built-in model).

    Raises :class:`aifi.errors.AlgorithmError` naming the unknown id and the
    ids that exist.
    """
    algorithms = _load()
    try:
        return algorithms[algorithm_id][1]
    except KeyError:
        raise _unknown(algorithm_id, algorithms) from None


def manifests() -> list[Manifest]:
    """The manifests of all registered algorithms (built-in models), sorted by id."""
    return [algorithm.manifest for _, (_, algorithm) in sorted(_load().items())]


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
                f"remote algorithm id {algorithm.manifest.id!r} is configured twice in {folder}"
            )
        algorithms[algorithm.manifest.id] = algorithm
    return algorithms


@dataclass(frozen=True)
class Installed:
    """One algorithm as this hub runs it: where it comes from, and why not, if refused.

    ``source`` is ``"built-in"``, the model manifest's path in the model
    store, or the vendor's endpoint URL. ``refused`` is the reason the
    algorithm is not run (a model file that does not match its pin), or None.
    """

    algorithm: Algorithm
    source: str
    refused: str | None = None

    @property
    def manifest(self) -> Manifest:
        return self.algorithm.manifest


class Installation:
    """The algorithms one hub runs, by id; calling it resolves an id (refused ones too).

    ``installation(id)`` gives what the catalog and task creation need (a
    refused algorithm has its manifest, so its tasks are accepted and then
    canceled with the reason); :meth:`runnable` is what workers call, and
    raises the refusal.
    """

    def __init__(self, entries: Mapping[str, Installed]) -> None:
        self.entries: dict[str, Installed] = dict(sorted(entries.items()))

    def __call__(self, algorithm_id: str) -> Algorithm:
        try:
            return self.entries[algorithm_id].algorithm
        except KeyError:
            raise _unknown(algorithm_id, self.entries) from None

    def runnable(self, algorithm_id: str) -> Algorithm:
        """The algorithm to run, or :class:`ModelIntegrityError` with the reason it is refused."""
        algorithm = self(algorithm_id)
        refused = self.entries[algorithm_id].refused
        if refused is not None:
            raise ModelIntegrityError(refused)
        return algorithm

    def manifests(self) -> list[Manifest]:
        """Every installed algorithm's manifest (refused ones included), sorted by id."""
        return [entry.manifest for entry in self.entries.values()]


def install(
    model_dir: Path | None = None,
    remote_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Installation:
    """The registered algorithms, with ``model_dir``'s models, plus ``remote_dir``'s remote ones.

    ``environ`` (default: the process environment) holds the remote
    algorithms' token variables. Refused models are logged as errors.
    """
    registered = _load()
    entries = {
        algorithm_id: Installed(algorithm, BUILT_IN)
        for algorithm_id, (_, algorithm) in registered.items()
    }
    if model_dir is not None:
        for algorithm_id, manifest_path in _store_manifests(model_dir, registered).items():
            entry, default = registered[algorithm_id]
            entries[algorithm_id] = _from_store(entry, default, model_dir, manifest_path)
    if remote_dir is not None:
        for algorithm_id, algorithm in load_remote(remote_dir, environ).items():
            if algorithm_id in entries:
                raise AlgorithmError(
                    f"remote algorithm id {algorithm_id!r} in {remote_dir} is also an "
                    "in-process algorithm; give the remote one another id"
                )
            endpoint = str(getattr(algorithm, "base_url", remote_dir))
            entries[algorithm_id] = Installed(algorithm, endpoint)
    for algorithm_id, installed in sorted(entries.items()):
        if installed.refused is not None:
            logger.error("algorithm %s is not run: %s", algorithm_id, installed.refused)
        else:
            logger.info(
                "algorithm %s %s from %s",
                algorithm_id,
                installed.manifest.version,
                installed.source,
            )
    return Installation(entries)


class _Refused:
    """Stands in for an algorithm whose model is refused: its manifest, and a run that refuses."""

    def __init__(self, manifest: Manifest, reason: str) -> None:
        self.manifest = manifest
        self._reason = reason

    def run(self, inputs: AlgorithmInput) -> Findings:
        raise ModelIntegrityError(self._reason)


def _store_manifests(
    model_dir: Path, registered: Mapping[str, tuple[str, Algorithm]]
) -> dict[str, Path]:
    """Model manifests in the store, by algorithm id; a file for no algorithm is refused."""
    found: dict[str, Path] = {}
    for path in sorted([*model_dir.glob("*.toml"), *model_dir.glob("*.json")]):
        if path.name.endswith((".remote.toml", ".remote.json")):
            continue  # a remote algorithm's file, when both settings name one folder
        algorithm_id = path.stem
        if algorithm_id not in registered:
            raise ConfigError(
                f"model store {model_dir} holds {path.name}, but no algorithm "
                f"{algorithm_id!r} is built in (built in: {', '.join(sorted(registered))}); "
                "rename or remove the file"
            )
        if algorithm_id in found:
            raise ConfigError(
                f"model store {model_dir} holds both {found[algorithm_id].name} and {path.name}; "
                "keep one"
            )
        found[algorithm_id] = path
    return found


def _from_store(entry: str, default: Algorithm, model_dir: Path, manifest: Path) -> Installed:
    """The algorithm of ``entry`` with the store's model, or refused when the file fails its pin."""
    from aifi.algorithms.onnx_model import load_model_spec

    factory = _factory(entry)
    if not (callable(factory) and "model_store" in _parameters(factory)):
        raise ConfigError(
            f"model store {model_dir} holds {manifest.name}, but algorithm "
            f"{default.manifest.id!r} takes no model"
        )
    try:
        algorithm = factory(model_store=model_dir)
    except ModelIntegrityError as exc:
        spec = load_model_spec(model_dir, default.manifest.id)
        stand_in = dataclasses.replace(
            default.manifest,
            version=spec.version,
            vendor=spec.vendor,
            regulatory_status=spec.regulatory_status,
            model_sha256=spec.sha256,
        )
        return Installed(_Refused(stand_in, str(exc)), str(manifest), refused=str(exc))
    if not isinstance(algorithm, Algorithm):
        raise AlgorithmError(f"registry entry {entry!r} did not make an algorithm")
    return Installed(algorithm, str(manifest))


def _parameters(factory: object) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {}


def _unknown(algorithm_id: str, known: Mapping[str, object]) -> AlgorithmError:
    names = ", ".join(sorted(known)) or "none"
    return AlgorithmError(f"no algorithm {algorithm_id!r} in this installation; available: {names}")


@cache
def _load() -> dict[str, tuple[str, Algorithm]]:
    """Every registered algorithm with its built-in model: id → (entry, algorithm)."""
    algorithms: dict[str, tuple[str, Algorithm]] = {}
    for entry in ALGORITHMS:
        algorithm = _make(entry)
        algorithm_id = algorithm.manifest.id
        if algorithm_id in algorithms:
            raise AlgorithmError(f"algorithm id {algorithm_id!r} is registered twice")
        algorithms[algorithm_id] = (entry, algorithm)
    return algorithms


def _factory(entry: str) -> object:
    module_name, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module_name), attribute or "ALGORITHM", None)


def _make(entry: str) -> Algorithm:
    found = _factory(entry)
    if isinstance(found, type) or (callable(found) and not isinstance(found, Algorithm)):
        found = found()
    if not isinstance(found, Algorithm):
        raise AlgorithmError(
            f"registry entry {entry!r} is neither an algorithm (manifest and run()) "
            "nor a class that makes one"
        )
    return found
