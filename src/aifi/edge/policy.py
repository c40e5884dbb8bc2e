"""The hospital's release policy: what may leave for each algorithm, decided at the edge.

The edge always applies the PS3.15 Annex E Basic Profile. Beyond it, an
algorithm's manifest — as the hub's catalog (``GET /catalog``) states it —
may only *request* attributes (data minimisation, PS3.15 E.3: keep what the
algorithm needs). Whether they leave is the hospital's decision, written in
``release-policy.toml`` by its privacy officer: per algorithm id and
version, the attributes approved, who approved them and when.

For a task the edge sends the intersection of what the hub requests and
what is approved, and records every requested attribute it withholds. A
version the policy does not name whose request exceeds the newest approved
version's list is not sent for at all: its tasks are *held* with the
reason ("waiting for release-policy approval of fracture 0.3.0: requests
X, Y") and go out once ``aifi edge policy approve`` has recorded the
approval. Attributes that identify a person, UIDs and dates
(:data:`aifi.deid.engine.NEVER_KEEP`, VR PN, UI, DA, DT) are never released,
whatever a file or a hub says.

Free-text attributes released are reduced to a vocabulary known to be safe
(:func:`aifi.deid.descriptors.clean_descriptor`) before they leave; the
policy's ``[descriptors] add`` extends the packaged vocabulary with a
hospital's own technical words (the hub must know them too).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from aifi.deid.descriptors import Vocabulary, load_vocabulary
from aifi.deid.engine import resolve_keep
from aifi.errors import ConfigError

__all__ = [
    "Approval",
    "PolicyFile",
    "Release",
    "ReleaseGate",
    "ReleasePolicy",
    "default_policy_text",
    "releasable",
]

logger = logging.getLogger(__name__)


def default_policy_text() -> str:
    """The release policy shipped with aifi (approved for the shipped algorithms' versions)."""
    return resources.files("aifi.edge").joinpath("data/release-policy.toml").read_text("utf-8")


def releasable(attribute: str) -> bool:
    """Whether ``attribute`` may ever be released (not a person's identity, a UID or a date)."""
    try:
        resolve_keep([attribute])
    except ConfigError:
        return False
    return True


@dataclass(frozen=True)
class Approval:
    """One algorithm version's approved attributes, and who approved them when."""

    algorithm: str
    version: str
    attributes: tuple[str, ...]
    approved_by: str
    approved_at: str


@dataclass(frozen=True)
class Release:
    """What the edge sends for one algorithm now.

    ``keep``: attributes released (requested and approved); ``withheld``:
    per version, requested but not approved; ``waiting``: per version not
    yet approved, what it requests beyond the newest approval (tasks wait).
    """

    algorithm_id: str
    keep: tuple[str, ...]
    withheld: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    waiting: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def held_reason(self) -> str | None:
        """Why tasks for this algorithm wait, or None when they may be sent."""
        if not self.waiting:
            return None
        parts = [
            f"{self.algorithm_id} {version}: requests {', '.join(names)}"
            for version, names in sorted(self.waiting.items())
        ]
        return (
            "waiting for release-policy approval of "
            + "; ".join(parts)
            + " ('aifi edge policy diff', then 'aifi edge policy approve')"
        )

    @property
    def withheld_detail(self) -> str | None:
        """The audit line for what is withheld, or None when nothing is."""
        if not self.withheld:
            return None
        parts = [
            f"{self.algorithm_id} {version} requests {', '.join(names)}"
            for version, names in sorted(self.withheld.items())
        ]
        return (
            "the hub's catalog requests attributes the release policy does not approve; "
            "withheld: " + "; ".join(parts)
        )


class ReleasePolicy:
    """The approvals and the descriptor vocabulary of one ``release-policy.toml``."""

    def __init__(
        self,
        approvals: Iterable[Approval] = (),
        *,
        add: Iterable[str] = (),
        source: str = "release policy",
    ) -> None:
        self.approvals: dict[tuple[str, str], Approval] = {}
        for approval in approvals:
            refused = [a for a in approval.attributes if not releasable(a)]
            if refused:
                raise ConfigError(
                    f"{source} approves {', '.join(refused)} for {approval.algorithm} "
                    f"{approval.version}: these identify a person or are UIDs or dates and are "
                    "never released; remove them from the file"
                )
            self.approvals[(approval.algorithm, approval.version)] = approval
        self.add = tuple(sorted({w.strip() for w in add if w.strip()}))
        self.vocabulary: Vocabulary = load_vocabulary(self.add)

    # -- reading -----------------------------------------------------------
    @classmethod
    def parse(cls, text: str, *, source: str = "release policy") -> ReleasePolicy:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
        descriptors = raw.get("descriptors", {})
        approvals = []
        for number, entry in enumerate(raw.get("approval", []), start=1):
            try:
                approvals.append(
                    Approval(
                        algorithm=str(entry["algorithm"]),
                        version=str(entry["version"]),
                        attributes=tuple(str(a) for a in entry.get("attributes", [])),
                        approved_by=str(entry["approved_by"]),
                        approved_at=str(entry["approved_at"]),
                    )
                )
            except KeyError as exc:
                raise ConfigError(
                    f"{source}: approval {number} has no {exc.args[0]}; every approval names "
                    "algorithm, version, attributes, approved_by and approved_at"
                ) from exc
        return cls(approvals, add=[str(w) for w in descriptors.get("add", [])], source=source)

    @classmethod
    def load(cls, path: Path) -> ReleasePolicy:
        """Read ``path``; a missing file is an empty policy (nothing beyond the profile)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(source=str(path))
        return cls.parse(text, source=f"release policy {path}")

    def approval(self, algorithm: str, version: str) -> Approval | None:
        return self.approvals.get((algorithm, version))

    def newest_approval(self, algorithm: str) -> Approval | None:
        """The approval of the highest version of ``algorithm`` (PEP 440-like order)."""
        mine = [a for (alg, _v), a in self.approvals.items() if alg == algorithm]
        return max(mine, key=lambda a: _version_key(a.version), default=None)

    # -- deciding ----------------------------------------------------------
    def decide(self, algorithm_id: str, requests: Mapping[str, Sequence[str]]) -> Release:
        """What to send for ``algorithm_id`` whose active versions request ``requests``."""
        keep: set[str] = set()
        withheld: dict[str, tuple[str, ...]] = {}
        waiting: dict[str, tuple[str, ...]] = {}
        newest = self.newest_approval(algorithm_id)
        for version, requested in requests.items():
            wanted = set(requested)
            approval = self.approval(algorithm_id, version)
            if approval is None:
                base = set(newest.attributes) if newest is not None else set()
                beyond = {a for a in wanted - base if releasable(a)}
                if beyond:
                    waiting[version] = tuple(sorted(beyond))
                    continue
                approved = base
            else:
                approved = set(approval.attributes)
            allowed = {a for a in wanted & approved if releasable(a)}
            keep |= allowed
            if wanted - allowed:
                withheld[version] = tuple(sorted(wanted - allowed))
        return Release(algorithm_id, tuple(sorted(keep)), withheld, waiting)

    # -- approving ---------------------------------------------------------
    def approve(
        self,
        algorithm: str,
        version: str,
        attributes: Iterable[str],
        *,
        by: str,
        at: dt.datetime | None = None,
    ) -> ReleasePolicy:
        """A copy with (algorithm, version) approved for ``attributes`` (replacing any)."""
        if not by.strip():
            raise ConfigError("say who approves (--by): the release policy records it")
        when = (at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        approval = Approval(algorithm, version, tuple(sorted(set(attributes))), by.strip(), when)
        approvals = {**self.approvals, (algorithm, version): approval}
        return ReleasePolicy(approvals.values(), add=self.add)

    def to_toml(self, header: str = "") -> str:
        """The policy as TOML (``header`` comment lines first)."""
        lines = [header.rstrip("\n"), ""] if header else []
        lines.append("[descriptors]")
        lines.append(f"add = {_toml_list(self.add)}")
        for key in sorted(self.approvals):
            a = self.approvals[key]
            lines += [
                "",
                "[[approval]]",
                f"algorithm = {_toml_str(a.algorithm)}",
                f"version = {_toml_str(a.version)}",
                f"attributes = {_toml_list(a.attributes)}",
                f"approved_by = {_toml_str(a.approved_by)}",
                f"approved_at = {_toml_str(a.approved_at)}",
            ]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Write atomically to ``path``, keeping the comment header of the file there."""
        header = _header_of(path) or _header_of_text(default_policy_text())
        part = path.with_name(path.name + ".part")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.to_toml(header))
        part.replace(path)


class PolicyFile:
    """``release-policy.toml``, read again whenever it changed (an approval takes effect)."""

    def __init__(self, path: Path, *, create_from_default: bool = False) -> None:
        self.path = path
        self.created = False
        if create_from_default and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(default_policy_text())
            self.created = True
            logger.info("release policy %s created from the shipped defaults", path)
        self._stamp: tuple[int, int] | None = None
        self._policy = self._read()

    def current(self) -> ReleasePolicy:
        if self._signature() != self._stamp:
            self._policy = self._read()
        return self._policy

    def _signature(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _read(self) -> ReleasePolicy:
        self._stamp = self._signature()
        return ReleasePolicy.load(self.path)


class ReleaseGate:
    """The hub's requests (per active version) judged against the hospital's policy file."""

    def __init__(
        self,
        requests_of: Callable[[str], Mapping[str, Sequence[str]]],
        policy: PolicyFile,
    ) -> None:
        self.requests_of = requests_of
        self.policy = policy

    def release_for(self, algorithm_id: str) -> Release:
        """What may be sent for ``algorithm_id`` now (the hub is asked, the policy re-read)."""
        return self.policy.current().decide(algorithm_id, self.requests_of(algorithm_id))

    def vocabulary(self) -> Vocabulary:
        return self.policy.current().vocabulary


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+_]", version)
    )


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def _header_of_text(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def _header_of(path: Path) -> str:
    try:
        return _header_of_text(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ""
