"""Processes for the scale benchmarks: the hub's process kinds as subprocesses, and /proc.

* :class:`HubProcesses` starts ``aifi hub serve`` (embedded, SQLite) or
  ``aifi hub api`` + ``aifi hub worker`` x N + ``aifi hub janitor`` on one
  PostgreSQL, each its own ``python -m aifi`` process, as an operator would.
* :class:`ProcessMeter` samples ``/proc/<pid>/status`` (VmHWM: peak resident
  set) of every process of a tree several times a second, keeping the peak
  per process kind; :func:`tree_cpu_s` is the CPU time of a tree
  (user + system of every live process, plus the ``cutime``/``cstime`` of
  children already waited for: nothing counted twice).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from aifi.netutil import free_port

__all__ = ["HubProcesses", "ProcessMeter", "descendants", "tree_cpu_s"]

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``root`` and every process below it."""
    children = _children_map() if children is None else children
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # after the ')' : state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(fields[i]) for i in (11, 12, 13, 14))


def tree_cpu_s(roots: Iterable[int]) -> float:
    """CPU seconds used so far by ``roots`` and all their descendants."""
    children = _children_map()
    pids = {p for root in roots for p in descendants(root, children)}
    return sum(_cpu_ticks(p) for p in pids) / _TICK


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class ProcessMeter:
    """Peak RSS (VmHWM) per process kind, sampled every ``interval_s`` in a thread.

    ``kinds`` maps a kind ('api', 'worker', 'postgres', ...) to root PIDs;
    descendants of a root count as '<kind> child' (the workers' algorithm
    processes), except for PostgreSQL whose backends are the server.
    """

    def __init__(self, kinds: dict[str, list[int]], interval_s: float = 0.2) -> None:
        self.kinds = kinds
        self.interval_s = interval_s
        self.peak_kb: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProcessMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        children = _children_map()
        for kind, roots in list(self.kinds.items()):
            for root in roots:
                for pid in descendants(root, children):
                    name = kind if pid == root or kind == "postgres" else f"{kind} child"
                    self.peak_kb[name] = max(self.peak_kb.get(name, 0), _hwm_kb(pid))

    def cpu_s(self, kinds: Iterable[str]) -> float:
        return tree_cpu_s(p for k in kinds for p in self.kinds.get(k, []))


class HubProcesses:
    """The hub's process kinds on one data folder and database, each a subprocess."""

    def __init__(self, folder: Path, database_url: str | None, **settings: object) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "hub.toml"
        lines = ["[hub]", 'data_dir = "data"', 'log_level = "warning"']
        if database_url:
            lines.append(f'database_url = "{database_url}"')
        for key, value in settings.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, list | tuple):
                lines.append(f"{key} = {json.dumps([str(v) for v in value])}")
            else:
                lines.append(f"{key} = {value}")
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        bench = str(Path(__file__).resolve().parent)
        self.environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([bench, os.environ.get("PYTHONPATH", "")]),
        }
        self.environ.pop("AIFI_HUB_DATABASE_URL", None)
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def aifi(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "aifi", "hub", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.environ,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"aifi hub {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def start(self, name: str, *args: str) -> int:
        kind = name.split("-")[0]
        environ = dict(self.environ, AIFI_HUB_PORT=str(self.port))
        with (self.folder / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "aifi", "hub", kind, "--config", str(self.config), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
            )
        self.processes[name] = process
        if kind in ("api", "serve"):
            self._wait_for_http(name)
        return process.pid

    def _wait_for_http(self, name: str) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(self.log(name))
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not start in 90 s")

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]

    def pids(self, kind: str) -> list[int]:
        return [p.pid for n, p in self.processes.items() if n.split("-")[0] == kind]

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
