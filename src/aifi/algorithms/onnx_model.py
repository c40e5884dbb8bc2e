"""Pinned ONNX models: a model store, a model manifest, and an integrity check.

A *model store* is a folder. For each algorithm it holds a model manifest
``<algorithm-id>.toml`` (or ``.json``) and the ONNX file that manifest names.
The manifest pins the file by SHA-256; a file whose digest differs is never
run (:class:`aifi.errors.ModelIntegrityError`). The bytes that are hashed are
the bytes handed to ONNX Runtime, so a file swapped between check and load
cannot slip through.

The default store of each application is the folder of demo weights shipped
inside its package (``aifi/algorithms/<app>/weights``); a hospital network or
vendor points an application at another folder to use a real model. See
``docs/models.md``.

Example manifest::

    algorithm = "fracture"
    version = "0.1.0-demo"
    vendor = "aifi project"
    file = "fracture-demo.onnx"
    sha256 = "3f5c..."
    demo = true
    regulatory_status = "demo model - not for clinical use; not a medical device"

    [parameters]            # free-form, read by the application
    positive_threshold = 0.6
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aifi.errors import ConfigError, ModelIntegrityError

__all__ = [
    "DEMO_DISCLAIMER",
    "ModelSpec",
    "PinnedModel",
    "demo_note",
    "load_model_spec",
    "sha256_of",
    "use_providers",
]

logger = logging.getLogger(__name__)

DEMO_DISCLAIMER = "demo model — not for clinical use"

_MANIFEST_SUFFIXES = (".toml", ".json")

_PROVIDERS: list[tuple[str, ...]] = [("CPUExecutionProvider",)]
"""The execution providers this process's sessions ask for, preferred first."""


def use_providers(providers: tuple[str, ...] | list[str]) -> None:
    """Choose ONNX Runtime's execution providers for the sessions this process makes from now on.

    The hub calls it once per process from its settings (``onnx_providers``):
    ``CUDAExecutionProvider`` first on a GPU node. Providers this ONNX Runtime
    build lacks are skipped when a session is made; the CPU is always last.
    """
    wanted = tuple(dict.fromkeys(p for p in providers if p))
    _PROVIDERS[0] = wanted or ("CPUExecutionProvider",)


def _available(wanted: tuple[str, ...]) -> list[str]:
    import onnxruntime as ort

    present = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in present]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """The model side of an algorithm's manifest, as read from a model store."""

    algorithm: str
    version: str
    vendor: str
    path: Path
    sha256: str
    demo: bool
    regulatory_status: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        digest = self.sha256.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(
                f"model manifest for {self.algorithm!r}: sha256 must be 64 hex digits"
            )
        object.__setattr__(self, "sha256", digest)

    def parameter(self, name: str, default: float) -> float:
        """A numeric parameter from the manifest's ``[parameters]`` table."""
        value = self.parameters.get(name, default)
        if not isinstance(value, int | float):
            raise ConfigError(
                f"model manifest for {self.algorithm!r}: parameter {name!r} must be a number"
            )
        return float(value)


def load_model_spec(store: Path, algorithm_id: str) -> ModelSpec:
    """Read ``<store>/<algorithm_id>.toml`` (or ``.json``) into a :class:`ModelSpec`."""
    for suffix in _MANIFEST_SUFFIXES:
        manifest_path = store / f"{algorithm_id}{suffix}"
        if manifest_path.is_file():
            break
    else:
        raise ConfigError(
            f"no model manifest {algorithm_id}.toml or {algorithm_id}.json in model store "
            f"{store}; place the vendor's manifest and ONNX file there (see docs/models.md)"
        )
    try:
        raw = manifest_path.read_bytes()
        data: dict[str, Any] = (
            tomllib.loads(raw.decode("utf-8")) if suffix == ".toml" else json.loads(raw)
        )
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model manifest {manifest_path} cannot be read: {exc}") from exc
    missing = [k for k in ("algorithm", "version", "file", "sha256") if k not in data]
    if missing:
        raise ConfigError(f"model manifest {manifest_path} lacks {', '.join(missing)}")
    if data["algorithm"] != algorithm_id:
        raise ConfigError(
            f"model manifest {manifest_path} is for {data['algorithm']!r}, not {algorithm_id!r}"
        )
    demo = bool(data.get("demo", False))
    default_status = (
        f"{DEMO_DISCLAIMER}; not a medical device" if demo else "see vendor documentation"
    )
    return ModelSpec(
        algorithm=algorithm_id,
        version=str(data["version"]),
        vendor=str(data.get("vendor", "unknown vendor")),
        path=store / str(data["file"]),
        sha256=str(data["sha256"]),
        demo=demo,
        regulatory_status=str(data.get("regulatory_status", default_status)),
        parameters=dict(data.get("parameters", {})),
    )


class PinnedModel:
    """An ONNX model that runs only while its file matches the pinned SHA-256.

    The file is read and hashed on every :meth:`run` (a model of a few MB
    hashes in milliseconds); the ONNX Runtime session is rebuilt only when the
    verified bytes change.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._session: Any = None
        self._session_digest: str | None = None

    def verify(self) -> bytes:
        """Return the model bytes, or raise :class:`ModelIntegrityError` if they do not match."""
        try:
            data = self.spec.path.read_bytes()
        except OSError as exc:
            raise ModelIntegrityError(
                f"model file {self.spec.path.name} for algorithm {self.spec.algorithm!r} "
                f"cannot be read ({exc.strerror}); restore it in the model store"
            ) from exc
        digest = sha256_of(data)
        if digest != self.spec.sha256:
            raise ModelIntegrityError(
                f"model file {self.spec.path.name} for algorithm {self.spec.algorithm!r} has "
                f"SHA-256 {digest[:12]}… but its manifest pins {self.spec.sha256[:12]}…; "
                "it is not run. Restore the vendor's file or update the pin from the "
                "vendor's release notes"
            )
        return data

    def _session_for(self, data: bytes, digest: str) -> Any:
        import onnxruntime as ort

        with self._lock:
            if self._session is None or self._session_digest != digest:
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                self._session = ort.InferenceSession(
                    data, sess_options=options, providers=_available(_PROVIDERS[0])
                )
                self._session_digest = digest
                logger.info(
                    "loaded model %s %s (sha256 %s…)",
                    self.spec.algorithm,
                    self.spec.version,
                    digest[:12],
                )
            return self._session

    @property
    def provider(self) -> str | None:
        """The execution provider the loaded session runs on (None before the first run)."""
        session = self._session
        if session is None:
            return None
        providers: list[str] = session.get_providers()
        return providers[0] if providers else None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Verify the file, then run the model on ``feeds`` (input name → float32 array)."""
        data = self.verify()
        session = self._session_for(data, self.spec.sha256)
        outputs = session.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return [np.asarray(o) for o in outputs]


def demo_note(spec: ModelSpec) -> str:
    """The sentence every output made with demo weights carries (empty for real models)."""
    return f" ({DEMO_DISCLAIMER})" if spec.demo else ""
