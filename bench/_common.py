"""Helpers shared by the benchmarks in this folder.

The benchmarks reuse the real-peer harness of the tests (``tests/peers``:
Orthanc, dcmtk) so that a receiver is started the same way in a test and in
a measurement; :func:`use_test_peers` puts it on ``sys.path``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Measurement", "Skipped", "format_table", "timed", "use_test_peers"]

REPO = Path(__file__).resolve().parent.parent


def use_test_peers() -> None:
    """Make ``tests/peers`` importable as ``peers``."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


class Skipped(Exception):
    """A receiver cannot be measured here; the message says why."""


@dataclass
class Measurement:
    """Repeated timings of sending ``instances`` files of ``total_bytes`` to one receiver."""

    receiver: str
    instances: int
    total_bytes: int
    seconds: list[float] = field(default_factory=list)
    fsync: bool = False
    skipped: str | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.median_s

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / 1e6 / self.median_s


def timed(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> float:
    """Run a command, return its wall-clock seconds; raise when it fails."""
    start = time.perf_counter()
    result = subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def format_table(
    rows: Sequence[Measurement], *, reference: str, reference_name: str | None = None
) -> str:
    """A plain-text table: receiver, instances/s, MB/s, ratio against the ``reference`` row."""
    ref = next((r for r in rows if r.receiver == reference and not r.skipped), None)
    lines = [
        f"{'receiver':<34} {'fsync':>5} {'inst/s':>8} {'MB/s':>8} "
        f"{'vs ' + (reference_name or reference):>12}",
        "-" * 71,
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"{row.receiver:<34} skipped: {row.skipped}")
            continue
        ratio = f"{row.instances_per_s / ref.instances_per_s:.2f}x" if ref else "n/a"
        lines.append(
            f"{row.receiver:<34} {'yes' if row.fsync else 'no':>5} "
            f"{row.instances_per_s:8.1f} {row.mb_per_s:8.1f} {ratio:>12}"
        )
    return "\n".join(lines)
