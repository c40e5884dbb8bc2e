"""Run one algorithm within its time limit: in a child process (default) or on a thread.

What runs away from the database is :func:`perform`: the algorithm's
``run(inputs)`` and the encoding of its findings into DICOM (the part that
costs the CPU), returned as bytes. The worker that claimed the task waits
for it, renews its lease meanwhile and holds no database session.

* :class:`ProcessExecutor` keeps one child process (``multiprocessing``
  *spawn*: safe beside threads) per worker slot, made from the hub's
  settings, and sends it one job at a time over a pipe. A run that passes its
  manifest's ``resources.time_limit_s`` is ended by killing the child
  (:class:`TimeLimitExceeded`); a child that dies (a crash, the kernel's
  out-of-memory killer) fails the run with that reason; the next job gets a
  fresh child. Several slots use several cores.
* :class:`ThreadExecutor` runs on a thread of this process, with algorithms
  given as a Python callable (tests, plug-ins made in code). A thread cannot
  be killed: at its time limit the run is abandoned (its result thrown away)
  and the task canceled all the same.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from aifi.algorithms.base import Algorithm, AlgorithmInput, Findings, Manifest
from aifi.errors import AifiError, AlgorithmError

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from aifi.hub.config import HubSettings

__all__ = [
    "EncodedResult",
    "Executor",
    "Job",
    "LeaseLost",
    "Outcome",
    "ProcessExecutor",
    "ThreadExecutor",
    "TimeLimitExceeded",
    "perform",
]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0
"""How long a new child may take to import and load the algorithms before it is given up."""


class TimeLimitExceeded(AlgorithmError):
    """The algorithm ran past its manifest's time limit and was ended."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"time limit of {limit_s:g} s exceeded")
        self.limit_s = limit_s


class LeaseLost(AifiError):
    """The worker no longer holds the task (the janitor re-queued it, or the worker is stopping)."""


@dataclass(frozen=True)
class Job:
    """One run: which algorithm, on what, and how many result series the study has already."""

    algorithm_id: str
    inputs: AlgorithmInput
    earlier_series: int = 0


@dataclass(frozen=True)
class EncodedResult:
    """One result object as Part 10 bytes, with the UIDs its row and object key need."""

    kind: str
    data: bytes
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class Outcome:
    """What a run produced: the findings (with provenance added) and their DICOM objects."""

    manifest: Manifest
    findings: Findings
    results: tuple[EncodedResult, ...]


def execution_provider(algorithm: Algorithm) -> str | None:
    """The ONNX Runtime execution provider the algorithm's model ran on, if it has one."""
    provider = getattr(getattr(algorithm, "model", None), "provider", None)
    return provider if isinstance(provider, str) else None


def perform(algorithm: Algorithm, job: Job) -> Outcome:
    """Run ``algorithm`` on the job's inputs and encode its findings (IHE AIR result objects).

    The execution provider of an ONNX model is recorded in the findings'
    ``details`` (``execution_provider``): the provenance of the result. The
    prior studies the algorithm was given are listed in its SR as other
    evidence (:func:`aifi.results.sr.build_sr`).
    """
    from aifi.results import encode_results

    manifest = algorithm.manifest
    findings = algorithm.run(job.inputs)
    provider = execution_provider(algorithm)
    if provider is not None:
        findings = dataclasses.replace(
            findings, details={**findings.details, "execution_provider": provider}
        )
    sources = [i.read(stop_before_pixels=True) for i in job.inputs.instances]
    priors = [
        i.read(stop_before_pixels=True) for prior in job.inputs.priors for i in prior.instances
    ]
    objects = encode_results(
        findings, manifest, sources, earlier_series=job.earlier_series, prior_sources=priors
    )
    encoded = []
    for kind, ds in objects:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        encoded.append(
            EncodedResult(
                kind=kind,
                data=buffer.getvalue(),
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
            )
        )
    return Outcome(manifest, findings, tuple(encoded))


Heartbeat = Callable[[], bool]
"""Renews the worker's lease; False when the worker no longer holds the task."""


class Executor(Protocol):
    """Runs jobs, one at a time per executor."""

    def execute(
        self,
        job: Job,
        time_limit_s: float,
        heartbeat: Heartbeat,
        heartbeat_s: float,
        stopping: Callable[[], bool],
    ) -> Outcome:
        """The job's outcome; raises AlgorithmError (TimeLimitExceeded included) or LeaseLost."""
        ...

    def start(self) -> None:
        """Get ready before the first job (a child process started and its algorithms loaded)."""
        ...

    def close(self) -> None:
        """End any child process."""
        ...


def _wait(
    done: Callable[[float], bool],
    time_limit_s: float,
    heartbeat: Heartbeat,
    heartbeat_s: float,
    stopping: Callable[[], bool],
    abandon: Callable[[], object],
) -> None:
    """Wait until ``done(timeout)``; heartbeats meanwhile; ``abandon()`` and raise at the limit."""
    started = time.monotonic()
    deadline = started + time_limit_s
    next_beat = started + heartbeat_s
    while True:
        now = time.monotonic()
        if now >= deadline:
            abandon()
            raise TimeLimitExceeded(time_limit_s)
        if done(min(0.25, deadline - now, max(next_beat - now, 0.0))):
            return
        if stopping():
            abandon()
            raise LeaseLost("the worker is stopping; the task goes back to the queue")
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + heartbeat_s
            if not heartbeat():
                abandon()
                raise LeaseLost("the worker's lease on the task was lost")


class ThreadExecutor:
    """Runs algorithms from ``resolve`` on a thread of this process (no hard time limit)."""

    def __init__(self, resolve: Callable[[str], Algorithm]) -> None:
        self._resolve = resolve

    def execute(
        self,
        job: Job,
        time_limit_s: float,
        heartbeat: Heartbeat,
        heartbeat_s: float,
        stopping: Callable[[], bool],
    ) -> Outcome:
        algorithm = self._resolve(job.algorithm_id)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["outcome"] = perform(algorithm, job)
            except BaseException as exc:  # handed to the waiting worker
                box["error"] = exc

        thread = threading.Thread(target=work, name=f"aifi-run-{job.algorithm_id}", daemon=True)
        thread.start()

        def done(timeout: float) -> bool:
            thread.join(timeout)
            return not thread.is_alive()

        def abandon() -> None:
            logger.warning(
                "algorithm %s abandoned on its thread (threads cannot be stopped; "
                "worker_isolation = 'process' ends it)",
                job.algorithm_id,
            )

        _wait(done, time_limit_s, heartbeat, heartbeat_s, stopping, abandon)
        if "error" in box:
            raise box["error"]
        outcome: Outcome = box["outcome"]
        return outcome

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class ProcessExecutor:
    """Runs algorithms in one child process made from ``settings``; killed at the time limit."""

    def __init__(self, settings: HubSettings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._child(lambda: True, START_TIMEOUT_S)

    def _child(self, heartbeat: Heartbeat, heartbeat_s: float) -> Connection:
        """The running child; a new one started (heartbeats while it loads) when there is none."""
        if self._process is not None and self._process.is_alive() and self._connection:
            return self._connection
        self._kill()
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_child_main,
            args=(child, self._settings),
            name="aifi-algorithm",
            daemon=True,
        )
        process.start()
        child.close()
        self._process, self._connection = process, parent
        deadline = time.monotonic() + START_TIMEOUT_S
        while not parent.poll(min(heartbeat_s, max(deadline - time.monotonic(), 0.0))):
            if time.monotonic() >= deadline:
                self._kill()
                raise AlgorithmError(
                    f"the algorithm process did not start within {START_TIMEOUT_S:g} s"
                )
            if not heartbeat():
                self._kill()
                raise LeaseLost("the worker's lease on the task was lost")
        try:
            status, detail = parent.recv()
        except EOFError:
            code = self._kill()
            raise AlgorithmError(
                f"the algorithm process ended while starting (exit code {code}); "
                "see the worker's log"
            ) from None
        if status != "ready":
            self._kill()
            raise AlgorithmError(f"the algorithm process could not start: {detail}")
        return parent

    def execute(
        self,
        job: Job,
        time_limit_s: float,
        heartbeat: Heartbeat,
        heartbeat_s: float,
        stopping: Callable[[], bool],
    ) -> Outcome:
        with self._lock:
            connection = self._child(heartbeat, heartbeat_s)
            connection.send(job)
            _wait(connection.poll, time_limit_s, heartbeat, heartbeat_s, stopping, self._kill)
            try:
                status, value = connection.recv()
            except (EOFError, OSError):
                code = self._kill()
                raise AlgorithmError(
                    f"the algorithm's process ended unexpectedly (exit code {code}); "
                    "it may have run out of memory"
                ) from None
        if status == "ok":
            outcome: Outcome = value
            return outcome
        raise AlgorithmError(str(value))  # refused, or "internal error: <type>" from the child

    def _kill(self) -> int | None:
        process, self._process = self._process, None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join(10)
        return process.exitcode

    def close(self) -> None:
        with self._lock:
            self._kill()


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when the worker thread that made it dies (SIGKILL too).

    Without it a killed worker's child would finish its run for nothing while
    another worker runs the re-queued task (prctl(2), PR_SET_PDEATHSIG).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pipe's end still stops an idle child
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl
        os._exit(1)


def _child_main(connection: Connection, settings: HubSettings) -> None:
    """The child's loop: load the algorithms once, then run jobs until the pipe closes."""
    from aifi.hub.bootstrap import configure_process, installation
    from aifi.results import load_standard_tables

    _die_with_parent()
    try:
        configure_process(settings)
        algorithms = installation(settings)
        load_standard_tables()  # its passing peak before any study's images (issue 12)
    except Exception as exc:  # told to the parent, which cancels the task with it
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ready", None))
    while True:
        try:
            job: Job = connection.recv()
        except (EOFError, OSError):  # the worker is gone
            return
        try:
            reply: tuple[str, object] = ("ok", perform(algorithms.runnable(job.algorithm_id), job))
        except AlgorithmError as exc:
            reply = ("refused", str(exc) or type(exc).__name__)
        except Exception as exc:
            logging.getLogger(__name__).exception("algorithm %s failed", job.algorithm_id)
            reply = ("failed", f"internal error: {type(exc).__name__}")
        try:
            connection.send(reply)
        except (BrokenPipeError, OSError):
            return
