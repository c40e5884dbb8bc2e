"""Simulated hospitals against the hub in each deployment mode: throughput, latency, CPU, RSS.

Each simulated hospital talks to the hub as an edge does, with
:class:`aifi.protocol.client.HubClient`: STOW-RS of pseudonymized instances,
``POST /tasks``, polling ``GET /tasks?acknowledged=false`` (only while it has
open tasks), WADO-RS of each result, ``POST /tasks/{id}/acknowledge``. The
instances are phantoms (:mod:`aifi.phantoms`) pseudonymized once with
:class:`aifi.deid.Pseudonymizer` (so the hub's identity check accepts them);
each study then gets fresh Study/Series/SOP Instance UIDs of the same length,
replaced in the file bytes (cheap: the load generator must not eat the
2 cores it measures).

Workloads (``--workload``):

* ``mix``: a day's mix compressed in time: 60 % two-view radiographs for
  ``fracture``, 15 % hand radiographs for ``bone-age``, 25 % contrast chest
  CTs of 300-600 slices for ``incidental-pe`` (``--small``: 24-48 slices);
* ``integrity``: the radiograph pair to ``integrity-check`` only, for the
  platform's own overhead per study;
* ``spin``: the radiograph pair to ``bench-spin`` (``bench/_spin.py``, a
  CPU-bound algorithm), for the gain of more worker processes.

Modes (``--modes``): ``embedded`` (``aifi hub serve``, SQLite, its
``workers`` slots), ``pg1``/``pg2``/``pg4`` (a throwaway PostgreSQL,
``aifi hub migrate``, one ``aifi hub api``, N ``aifi hub worker`` of one slot,
one ``aifi hub janitor``). Studies arrive at random times in ``--duration``
seconds; a run ends when all are acknowledged or ``--timeout`` passes.

Hub CPU is the CPU time of the hub's processes and their children (the
workers' algorithm processes) over the run, from ``/proc/<pid>/stat``; DB CPU
the PostgreSQL server's processes; peak RSS is VmHWM per process kind.
Platform overhead per study is hub CPU per study minus the algorithm's own
CPU, which the runner does not record separately (its ``compute_seconds``
spans load, run, encode and commit), so the bench runs the algorithm on the
same instances in its own process and times it.

    .venv/bin/python bench/national_load.py [--hospitals 70] [--studies 140] [--duration 20]
        [--workload integrity|mix|spin] [--small] [--modes embedded,pg1,pg2,pg4] [--profile 8]
    .venv/bin/python bench/national_load.py --per-call   # API CPU per edge call, pg1

The default (integrity, 50 studies per mode, 4 modes) takes about 5 minutes
here; ``--workload mix`` runs the three AI applications and takes far longer.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import use_test_peers
from _procs import _TICK, HubProcesses, ProcessMeter, _cpu_ticks, tree_cpu_s
from aifi.algorithms.registry import install
from aifi.deid import Pseudonymizer
from aifi.phantoms import (
    as_algorithm_input,
    bone_age_study,
    chest_ct_series,
    fracture_study,
    write_study,
)
from aifi.protocol.client import HubClient, HubPeer
from aifi.protocol.schemas import TaskCreate

KEY = bytes(range(32))
GOAL_OVERHEAD_MS = 20.0
GOAL_SCALING = 1.8
ALGORITHMS = ["integrity-check", "fracture", "bone-age", "incidental-pe", "bench-spin"]


# -- templates: pseudonymized once, fresh UIDs per study --------------------------------------
@dataclass
class Template:
    """A pseudonymized study whose UIDs are replaced byte for byte for each new study."""

    kind: str
    algorithm: str
    files: list[bytes]
    study_uid: str
    other_uids: list[str]  # series and SOP Instance UIDs

    def instantiate(self, folder: Path, slices: int | None = None) -> tuple[str, list[Path]]:
        files = self.files if slices is None else self.files[:slices]
        mapping = {self.study_uid: _same_length_uid(self.study_uid)}
        mapping.update({u: _same_length_uid(u) for u in self.other_uids})
        folder.mkdir(parents=True)
        paths = []
        for i, data in enumerate(files):
            for old, new in mapping.items():
                data = data.replace(old.encode(), new.encode())
            path = folder / f"{i}.dcm"
            path.write_bytes(data)
            paths.append(path)
        return mapping[self.study_uid], paths


def _same_length_uid(old: str) -> str:
    digits = len(old) - 5
    return "2.25." + str(random.randint(1, 9)) + "".join(random.choices("0123456789", k=digits - 1))


def make_template(kind: str, algorithm: str, datasets: list, folder: Path) -> Template:
    import pydicom

    keep = install(None, None).entries[
        algorithm if algorithm != "bench-spin" else "integrity-check"
    ]
    source = write_study(datasets, folder / f"{kind}-src")
    out = folder / f"{kind}-pseudo"
    out.mkdir()
    pseudonymizer = Pseudonymizer(KEY, keep=keep.manifest.keep_attributes)
    files, uids, study = [], set(), ""
    for i, path in enumerate(source):
        result = pseudonymizer.pseudonymize_file(path, out / f"{i}.dcm")
        study = result.study_instance_uid
        uids.update({result.series_instance_uid, result.sop_instance_uid})
        files.append((out / f"{i}.dcm").read_bytes())
    ds = pydicom.dcmread(out / "0.dcm", stop_before_pixels=True)
    assert ds.StudyInstanceUID == study
    return Template(kind, algorithm, files, study, sorted(uids))


def templates(workload: str, small: bool, folder: Path) -> list[tuple[float, Template, int, int]]:
    """(weight, template, min slices, max slices) for the workload."""
    pair = fracture_study(fracture=True, seed=1)
    if workload == "integrity":
        return [(1.0, make_template("xr", "integrity-check", pair, folder), 0, 0)]
    if workload == "spin":
        return [(1.0, make_template("xr", "bench-spin", pair, folder), 0, 0)]
    low, high = (24, 48) if small else (300, 600)
    ct = chest_ct_series(embolus=True, slices=high, slice_thickness=1.0 if not small else 5.0)
    return [
        (0.60, make_template("xr", "fracture", pair, folder), 0, 0),
        (
            0.15,
            make_template("hand", "bone-age", bone_age_study(age_months=120, sex="F"), folder),
            0,
            0,
        ),
        (0.25, make_template("ct", "incidental-pe", ct, folder), low, high),
    ]


def algorithm_cpu_s(template: Template, folder: Path, repeat: int = 5) -> float:
    """CPU seconds of the algorithm's own ``run`` on the template, in this process (median)."""
    import time as _time

    from _spin import Spin

    entry = install(None, None).entries.get(template.algorithm)
    algorithm = Spin() if template.algorithm == "bench-spin" else entry.algorithm  # type: ignore[union-attr]
    _uid, paths = template.instantiate(folder / f"alg-{uuid.uuid4().hex[:6]}")
    inputs = as_algorithm_input(paths)
    times = []
    for _ in range(repeat):
        t0 = _time.process_time()
        algorithm.run(inputs)
        times.append(_time.process_time() - t0)
    return statistics.median(times)


# -- the simulated hospitals ------------------------------------------------------------------
@dataclass
class Study:
    hospital: int
    template: Template
    slices: int | None
    at: float
    task_id: str = ""
    uploaded_at: float = 0.0
    completed_at: float = 0.0
    acknowledged_at: float = 0.0
    state: str = ""


@dataclass
class Hospital:
    index: int
    client: HubClient
    open: dict[str, Study] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def poll(hospital: Hospital, stop: threading.Event, interval_s: float, wait_s: float = 0.0) -> None:
    """The edge's task poller: list unacknowledged tasks, fetch results, acknowledge.

    ``wait_s``: long polling (the edge's ``[hub] long_poll_s``), 0 for plain polls.
    """
    while not stop.wait(interval_s):
        with hospital.lock:
            if not hospital.open:
                continue
        try:
            tasks = list(hospital.client.unacknowledged_tasks(wait_s=wait_s))
        except Exception:
            continue
        for task in tasks:
            with hospital.lock:
                study = hospital.open.get(task.id)
            if study is None or task.state not in ("COMPLETED", "CANCELED", "FAILED"):
                continue
            study.state = task.state
            study.completed_at = task.updated_at.timestamp()
            if task.state == "COMPLETED":
                try:
                    for r in task.results:
                        hospital.client.retrieve_instance(
                            r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid
                        )
                    hospital.client.acknowledge(task.id, [r.sop_instance_uid for r in task.results])
                except Exception:
                    continue
            study.acknowledged_at = time.time()
            with hospital.lock:
                hospital.open.pop(task.id, None)


def submit(hospital: Hospital, study: Study, folder: Path, t_start: float) -> None:
    delay = t_start + study.at - time.time()
    if delay > 0:
        time.sleep(delay)
    target = folder / uuid.uuid4().hex
    uid, paths = study.template.instantiate(target, study.slices)
    try:
        study.uploaded_at = time.time()
        stored = hospital.client.store_instances(paths)
        if stored.failed:
            study.state = f"refused: {stored.failed[0][1]}"
            return
        task = hospital.client.create_task(
            TaskCreate(
                client_task_id=uuid.uuid4().hex,
                algorithm_id=study.template.algorithm,
                study_instance_uid=uid,
                sop_instance_uids=list(stored.stored),
            )
        )
        study.task_id = task.id
        with hospital.lock:
            hospital.open[task.id] = study
    except Exception as exc:
        study.state = f"error: {exc}"[:200]
    finally:
        shutil.rmtree(target, ignore_errors=True)


# -- the hub in each mode ---------------------------------------------------------------------
@contextlib.contextmanager
def hub_in_mode(
    mode: str, folder: Path, slots: int
) -> Iterator[tuple[HubProcesses, dict[str, list[int]]]]:
    common = dict(
        worker_poll_s=1.0,  # the fallback: workers are woken by the queue (NOTIFY on PostgreSQL)
        janitor_interval_s=1.0,
        algorithm_plugins=["_spin:Spin"],
        database_pool_size=20,
        database_max_overflow=20,
    )
    if mode == "embedded":
        hub = HubProcesses(folder, None, workers=slots, **common)
        try:
            pid = hub.start("serve-1")
            yield hub, {"serve": [pid]}
        finally:
            hub.stop_all()
        return
    workers = int(mode.removeprefix("pg"))
    use_test_peers()
    from peers.postgres import start_postgres

    with start_postgres() as cluster:
        database = cluster.create_database()
        hub = HubProcesses(folder, cluster.url(database), workers=1, **common)
        try:
            hub.aifi("migrate")
            kinds: dict[str, list[int]] = {"api": [hub.start("api-1")]}
            kinds["worker"] = [hub.start(f"worker-{i}") for i in range(workers)]
            kinds["janitor"] = [hub.start("janitor-1")]
            kinds["postgres"] = [cluster.process.pid]
            yield hub, kinds
        finally:
            hub.stop_all()


def register(hub: HubProcesses, count: int) -> list[str]:
    from aifi.hub.config import load_hub_settings
    from aifi.hub.db import engine_for, make_sessions
    from aifi.hub.hospitals import add_hospital

    settings = load_hub_settings(hub.config)
    engine = engine_for(settings)
    tokens = []
    try:
        with make_sessions(engine)() as session:
            for i in range(count):
                tokens.append(add_hospital(session, f"Bench Hospital {i}", subscribe=ALGORITHMS)[1])
    finally:
        engine.dispose()
    return tokens


@dataclass
class Row:
    mode: str
    studies: int
    done: int
    wall_s: float
    hub_cpu_s: float
    db_cpu_s: float | None
    completed: list[float]
    acknowledged: list[float]
    peak_kb: dict[str, int]
    failures: list[str]
    client_cpu_s: float = 0.0
    kind_cpu_s: dict[str, float] = field(default_factory=dict)  # hub CPU by process kind

    @property
    def per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s else 0.0


def run_mode(mode: str, args: argparse.Namespace, tpl: list, folder: Path) -> Row:
    rng = random.Random(7)
    with hub_in_mode(mode, folder / mode, args.slots) as (hub, kinds):
        tokens = register(hub, args.hospitals)
        hospitals = [
            Hospital(i, HubClient(HubPeer(url=hub.url, token=t, timeout_s=300)))
            for i, t in enumerate(tokens)
        ]
        weights = [w for w, *_ in tpl]
        studies = []
        for _ in range(args.studies):
            _w, template, low, high = rng.choices(tpl, weights)[0]
            slices = rng.randint(low, high) if high else None
            studies.append(
                Study(
                    rng.randrange(args.hospitals), template, slices, rng.uniform(0, args.duration)
                )
            )
        studies.sort(key=lambda s: s.at)
        stop = threading.Event()
        pollers = [
            threading.Thread(target=poll, args=(h, stop, args.poll, args.long_poll), daemon=True)
            for h in hospitals
        ]
        for t in pollers:
            t.start()
        # warm-up, not measured: one study per algorithm, as an edge's connection test
        # per worker process (algorithm processes import and load their models on first use)
        n_warm = max(len(kinds.get("worker", [])), args.slots)  # so every worker's child is warm
        warm = [Study(0, t, lo or None, 0.0) for _w, t, lo, _hi in tpl for _ in range(n_warm)]
        for s in warm:
            submit(hospitals[0], s, folder / "outbox", time.time())
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not all(s.acknowledged_at or s.state for s in warm):
            time.sleep(0.2)
        meter = ProcessMeter(kinds)
        hub_kinds = [k for k in kinds if k != "postgres"]
        staging = folder / "outbox"
        profiler: list[str] = []
        if args.profile:

            def later() -> None:
                time.sleep(max(args.duration / 2, 1.0))
                profiler.append(profile(kinds, args.profile, folder))

            profiling = threading.Thread(target=later, daemon=True)
            profiling.start()
        with meter:
            cpu0, db0 = meter.cpu_s(hub_kinds), meter.cpu_s(["postgres"])
            kind0 = cpu_by_kind(meter, hub_kinds)
            own0 = time.process_time()
            t_start = time.time() + 0.5
            with ThreadPoolExecutor(args.uploaders) as pool:
                for s in studies:
                    pool.submit(submit, hospitals[s.hospital], s, staging, t_start)
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    time.sleep(0.2)
                    if all(s.acknowledged_at or (s.state and not s.task_id) for s in studies):
                        break
            end = max([s.acknowledged_at for s in studies if s.acknowledged_at] or [time.time()])
            cpu1, db1 = meter.cpu_s(hub_kinds), meter.cpu_s(["postgres"])
            kind1 = cpu_by_kind(meter, hub_kinds)
            own1 = time.process_time()
        stop.set()
        if args.profile:
            profiling.join()
            print(
                f"[{mode}] py-spy, share of samples per function (inclusive):\n{profiler[0]}",
                file=sys.stderr,
            )
        for t in pollers:
            t.join()
        for h in hospitals:
            h.client.close()
        done = [s for s in studies if s.state == "COMPLETED" and s.acknowledged_at]
        failures = sorted({s.state or "not finished" for s in studies if s not in done})
        first = min(s.uploaded_at for s in studies if s.uploaded_at)
        last_completed = max([s.completed_at for s in done] or [end])
        return Row(
            mode=mode,
            studies=len(studies),
            done=len(done),
            wall_s=last_completed - first,
            hub_cpu_s=cpu1 - cpu0,
            db_cpu_s=(db1 - db0) if "postgres" in kinds else None,
            completed=[s.completed_at - s.uploaded_at for s in done],
            acknowledged=[s.acknowledged_at - s.uploaded_at for s in done],
            peak_kb=dict(meter.peak_kb),
            failures=failures,
            client_cpu_s=own1 - own0,
            kind_cpu_s={k: kind1[k] - kind0.get(k, 0.0) for k in kind1},
        )


def cpu_by_kind(meter: ProcessMeter, kinds: list[str]) -> dict[str, float]:
    """CPU seconds so far of each kind's own processes and, apart, of their children."""
    out = {}
    for kind in kinds:
        own = sum(_cpu_ticks(pid) for pid in meter.kinds.get(kind, [])) / _TICK
        out[kind] = own
        out[f"{kind} child"] = meter.cpu_s([kind]) - own
    return out


_GENERIC = re.compile(
    r"^(\s*spawn_main|process \d+|<module>|_main|main|BaseProcess|Thread\.|WorkerThread|"
    r"_bootstrap|.*run_until_complete|asyncio_run|Command|serve|_run_once|Handle\._run|"
    r"_find_and_load|_load_unlocked|_call_with_frames|_LoaderBasics)"
)
PY_SPY = Path(__file__).resolve().parent / "out" / "py-spy" / "bin" / "py-spy"


def profile(kinds: dict[str, list[int]], seconds: float, folder: Path) -> str:
    """``py-spy record`` of the hub's processes (and children) for ``seconds``; top frames."""
    import subprocess

    if not PY_SPY.exists():
        return (
            "no profile: install py-spy with "
            "'.venv/bin/pip install --target bench/out/py-spy py-spy'"
        )
    runs = []
    for kind, pids in kinds.items():
        if kind in ("postgres", "janitor"):
            continue
        for pid in pids:
            out = folder / f"profile-{kind}-{pid}.txt"
            runs.append(
                (
                    kind,
                    out,
                    subprocess.Popen(
                        [
                            str(PY_SPY),
                            "record",
                            "--pid",
                            str(pid),
                            "--subprocesses",
                            "--nonblocking",
                            "--duration",
                            str(int(seconds)),
                            "--format",
                            "raw",
                            "--output",
                            str(out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    ),
                )
            )
    lines = []
    for kind, out, process in runs:
        process.wait()
        if not out.exists():
            lines.append(f"  {kind}: py-spy wrote nothing")
            continue
        inclusive: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            for frame in {f.split(" (")[0] for f in stack.split(";")}:
                inclusive[frame] = inclusive.get(frame, 0) + int(count)
        top = sorted(inclusive.items(), key=lambda kv: -kv[1])
        shown = [
            f"{name} {n / total:.0%}"
            for name, n in top
            if total and n / total < 0.99 and not _GENERIC.search(name)
        ][:14]
        lines.append(f"  {kind} ({total} samples): " + "; ".join(shown))
    return "\n".join(lines)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(rows: list[Row], algorithm_s: float | None, workload: str) -> str:
    lines = [
        f"{'mode':<9} {'done':>8} {'stud/s':>7} {'p50→C':>7} {'p95→C':>7} {'p50→ack':>8} "
        f"{'p95→ack':>8} {'hubCPU/st':>10} {'dbCPU/st':>9}  peak RSS MB per kind",
        "-" * 110,
    ]
    for r in rows:
        per = (r.hub_cpu_s / r.done * 1000) if r.done else float("nan")
        db = (
            f"{r.db_cpu_s / r.done * 1000:7.0f}ms"
            if r.db_cpu_s is not None and r.done
            else "      -  "
        )
        rss = ", ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(r.peak_kb.items()))
        lines.append(
            f"{r.mode:<9} {r.done:>4}/{r.studies:<3} {r.per_s:7.2f} {_pct(r.completed, 0.5):6.2f}s "
            f"{_pct(r.completed, 0.95):6.2f}s {_pct(r.acknowledged, 0.5):7.2f}s "
            f"{_pct(r.acknowledged, 0.95):7.2f}s {per:8.0f}ms {db}  {rss}"
        )
        if r.done:
            lines.append(
                f"{'':<9} load generator (the simulated edges, this process): "
                f"{r.client_cpu_s / r.done * 1000:.0f} ms CPU/study, "
                f"{(r.hub_cpu_s + (r.db_cpu_s or 0) + r.client_cpu_s) / r.wall_s:.2f} "
                "cores busy with hub + DB + generator"
            )
            if len(r.kind_cpu_s) > 1:
                by_kind = ", ".join(
                    f"{k} {v / r.done * 1000:.0f} ms"
                    for k, v in sorted(r.kind_cpu_s.items())
                    if v > 0
                )
                lines.append(f"{'':<9} hub CPU/study by process kind: {by_kind}")
        if r.failures:
            lines.append(f"{'':<9} not completed: {'; '.join(r.failures)[:300]}")
    if algorithm_s is not None:
        lines.append("")
        lines.append(
            f"algorithm's own CPU per study (measured in the bench): {algorithm_s * 1000:.1f} ms"
        )
        for r in rows:
            if r.done:
                overhead = r.hub_cpu_s / r.done * 1000 - algorithm_s * 1000
                verdict = "met" if overhead <= GOAL_OVERHEAD_MS else "missed"
                lines.append(
                    f"  {r.mode:<9} platform overhead {overhead:6.1f} ms hub CPU/study "
                    f"(goal ≤ {GOAL_OVERHEAD_MS:.0f} ms: {verdict}),"
                    f" {r.per_s:.1f} studies/s (goal ≥ 50)"
                )
    by_mode = {r.mode: r for r in rows}
    if "pg1" in by_mode and "pg2" in by_mode and by_mode["pg1"].per_s:
        ratio = by_mode["pg2"].per_s / by_mode["pg1"].per_s
        lines.append(
            f"2 workers vs 1 ({workload}): {ratio:.2f}x "
            f"(goal ≥ {GOAL_SCALING}x with a CPU-bound algorithm)"
        )
    return "\n".join(lines)


def per_call(folder: Path, tpl: list, repeat: int = 100) -> str:
    """API CPU per call of each kind an edge makes, on ``pg1`` with nothing else running."""
    lines = []
    with hub_in_mode("pg1", folder / "per-call", 1) as (hub, kinds):
        api = kinds["api"][0]
        client = HubClient(HubPeer(url=hub.url, token=register(hub, 1)[0], timeout_s=60))
        template = tpl[0][1]

        def measure(name: str, call: Callable[[], object], n: int = repeat) -> None:
            call()
            t0, cpu0 = time.monotonic(), tree_cpu_s([api])
            for _ in range(n):
                call()
            cpu = (tree_cpu_s([api]) - cpu0) / n * 1000
            wall = (time.monotonic() - t0) / n * 1000
            lines.append(f"  {name:<42} {cpu:6.1f} ms API CPU   {wall:6.1f} ms wall")

        def stow() -> None:
            _uid, paths = template.instantiate(folder / "per-call-out" / uuid.uuid4().hex)
            client.store_instances(paths)

        measure("GET /tasks?acknowledged=false (none)", lambda: list(client.unacknowledged_tasks()))
        hospital = Hospital(0, client)
        for _ in range(3):
            submit(hospital, Study(0, template, None, 0.0), folder / "per-call-out", time.time())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = list(client.unacknowledged_tasks())
            if tasks and all(t.state == "COMPLETED" for t in tasks):
                break
            time.sleep(0.2)
        measure(
            "GET /tasks?acknowledged=false (3 done)", lambda: list(client.unacknowledged_tasks())
        )
        measure("nothing asked for 1 s (the API idle)", lambda: time.sleep(1), 10)
        measure(
            "GET /tasks long poll, 1 s unchanged (304)",
            lambda: list(client.unacknowledged_tasks(wait_s=1)),
            10,
        )
        measure(f"STOW-RS of {len(template.files)} instances", stow, max(repeat // 3, 1))
        result = tasks[0].results[0]
        measure(
            "WADO-RS of one result",
            lambda: client.retrieve_instance(
                result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid
            ),
        )
        client.close()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=70)
    parser.add_argument("--studies", type=int, default=50, help="studies in all, per mode")
    parser.add_argument("--duration", type=float, default=5.0, help="arrival window, seconds")
    parser.add_argument("--workload", choices=["mix", "integrity", "spin"], default="integrity")
    parser.add_argument("--small", action="store_true", help="CTs of 24-48 slices, not 300-600")
    parser.add_argument("--modes", default="embedded,pg1,pg2,pg4")
    parser.add_argument("--slots", type=int, default=2, help="embedded hub: algorithm slots")
    edge = HubPeer.model_fields  # the simulated edges poll as a default-configured edge does
    parser.add_argument(
        "--poll",
        type=float,
        default=edge["poll_interval_s"].default,
        help="edge poll interval, seconds (the edge's [hub] poll_interval_s)",
    )
    parser.add_argument(
        "--long-poll",
        type=float,
        default=edge["long_poll_s"].default,
        help="edge long poll wait_s, 0: plain polls (the edge's [hub] long_poll_s)",
    )
    parser.add_argument("--uploaders", type=int, default=16, help="concurrent STOW uploads")
    parser.add_argument("--timeout", type=float, default=240.0, help="per mode, seconds")
    parser.add_argument("--profile", type=float, default=0, help="py-spy the hub for S seconds")
    parser.add_argument(
        "--per-call", action="store_true", help="only: API CPU per edge call on pg1, then exit"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="aifi-load-") as tmp:
        folder = Path(tmp)
        tpl = templates(args.workload, args.small, folder)
        if args.per_call:
            print(f"API CPU per call ({args.workload} study, pg1, one hospital):")
            print(per_call(folder, tpl))
            return
        algorithm_s = (
            algorithm_cpu_s(tpl[0][1], folder) if args.workload in ("integrity", "spin") else None
        )
        rows = []
        for mode in args.modes.split(","):
            row = run_mode(mode.strip(), args, tpl, folder)
            rows.append(row)
            print(f"[{mode}] {row.done}/{row.studies} in {row.wall_s:.1f} s", file=sys.stderr)
        print(
            f"workload {args.workload}{' (small CTs)' if args.small else ''}: "
            f"{args.hospitals} hospitals, "
            f"{args.studies} studies arriving over {args.duration:g} s, edge poll {args.poll:g} s"
            f"{f', long poll {args.long_poll:g} s' if args.long_poll else ''}; "
            f"→C: upload start to COMPLETED (hub's updated_at), →ack: to acknowledged"
        )
        print(report(rows, algorithm_s, args.workload))


if __name__ == "__main__":
    main()
