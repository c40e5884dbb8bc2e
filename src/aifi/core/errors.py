"""The one exception tree of aifi.

Every error aifi raises derives from :class:`AifiError`. Third-party errors
(pydicom, pynetdicom, httpx, SQLAlchemy) are translated once, at the
boundary where they occur, with ``raise ... from exc``. Messages say what a
hospital IT person or hub operator can do; they carry task ids or
pseudonymous UIDs, never a patient's name or ID.

::

    AifiError
     ├── ConfigError              a settings file or value is wrong
     ├── DicomInputError          what a peer sent is not usable DICOM
     ├── PseudonymizationError    an instance cannot leave the hospital safely
     ├── HubError                 talking to the hub failed
     │    ├── HubUnavailable      the hub did not answer (retry later)
     │    └── HubRefused          the hub answered with a definite refusal
     ├── AlgorithmError           an algorithm cannot run on its inputs
     │    ├── InputNotAccepted    the study does not fit the algorithm
     │    └── ModelIntegrityError a model file does not match its pin
     ├── DeliveryError            a result could not be stored into PACS
     └── StorageError             a local store (disk, database) failed

Protocol outcomes (a DICOM status, a hub answering 503) are values recorded
and retried where they happen; these exceptions are for misuse and for
states a caller must handle.
"""

from __future__ import annotations

__all__ = [
    "AifiError",
    "AlgorithmError",
    "ConfigError",
    "DeliveryError",
    "DicomInputError",
    "HubError",
    "HubRefused",
    "HubUnavailable",
    "InputNotAccepted",
    "ModelIntegrityError",
    "PseudonymizationError",
    "StorageError",
]


class AifiError(Exception):
    """Base of every error aifi raises on purpose."""


class ConfigError(AifiError):
    """A configuration file or value is missing or invalid."""


class DicomInputError(AifiError):
    """Data received from a DICOM peer is not usable (not DICOM, truncated, ...)."""


class PseudonymizationError(AifiError):
    """An instance cannot be pseudonymized safely and must not leave the hospital."""


class HubError(AifiError):
    """Communication with the hub failed."""


class HubUnavailable(HubError):
    """The hub could not be reached or answered 5xx/429; the caller retries later."""


class HubRefused(HubError):
    """The hub answered with a definite refusal (4xx other than 429); retrying will not help."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class AlgorithmError(AifiError):
    """An algorithm failed on its inputs."""


class InputNotAccepted(AlgorithmError):
    """The study does not fit the algorithm (wrong modality, age out of range, ...)."""


class ModelIntegrityError(AlgorithmError):
    """A model file does not match the SHA-256 pinned in its manifest; it is not run."""


class DeliveryError(AifiError):
    """A result could not be stored into the hospital's PACS."""


class StorageError(AifiError):
    """A local store (folder or database) failed."""
