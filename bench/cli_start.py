"""How long ``aifi --help`` and each sub-command's ``--help`` take to start.

Each command runs in a fresh interpreter (a subprocess, as a shell script
would call it), ``--repeat`` times; the table shows the best wall-clock
run, its ratio to the same interpreter's ``python -c pass``, and the best
CPU time (user + system) of the child, which a loaded machine disturbs
less than the wall clock. ``--importtime``
prints the ten slowest imports of ``aifi --help`` (``python -X importtime``).

Run from the repository root::

    .venv/bin/python bench/cli_start.py [--repeat 5] [--importtime]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ("aifi --help", ["-m", "aifi", "--help"]),
    ("aifi hub --help", ["-m", "aifi", "hub", "--help"]),
    ("aifi hub serve --help", ["-m", "aifi", "hub", "serve", "--help"]),
    ("aifi edge --help", ["-m", "aifi", "edge", "--help"]),
    ("aifi edge serve --help", ["-m", "aifi", "edge", "serve", "--help"]),
    ("aifi edge policy --help", ["-m", "aifi", "edge", "policy", "--help"]),
    ("aifi audit --help", ["-m", "aifi", "audit", "--help"]),
    ("aifi pseudonymize --help", ["-m", "aifi", "pseudonymize", "--help"]),
    ("aifi demo --help", ["-m", "aifi", "demo", "--help"]),
]
GOAL_S = 0.2


def best_of(args: Sequence[str], repeat: int) -> tuple[float, float]:
    """The fastest wall-clock and CPU seconds of ``repeat`` runs of the interpreter."""
    env = {**os.environ, "COLUMNS": "100"}
    wall = cpu = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL, timeout=60
        )
        wall = min(wall, time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        cpu = min(cpu, used)
    return wall, cpu


def slowest_imports(args: Sequence[str], count: int = 10) -> list[tuple[int, str]]:
    """The ``count`` imports with the largest cumulative time (µs) under ``-X importtime``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--importtime", action="store_true")
    options = parser.parse_args()
    baseline, _ = best_of(COMMANDS[0][1], options.repeat)
    print(f"best of {options.repeat}; goal: under {GOAL_S:.1f} s per command (wall clock)\n")
    print(f"{'command':<28} {'wall s':>7} {'x pass':>7} {'CPU s':>7}  goal")
    print(f"{'-' * 28} {'-' * 7} {'-' * 7} {'-' * 7}  ----")
    for label, args in COMMANDS:
        wall, cpu = best_of(args, options.repeat)
        verdict = "" if args is COMMANDS[0][1] else ("ok" if wall < GOAL_S else "SLOW")
        print(f"{label:<28} {wall:7.3f} {wall / baseline:7.1f} {cpu:7.3f}  {verdict}")
    if options.importtime:
        print("\nslowest imports of 'aifi --help' (cumulative ms):")
        for micros, name in slowest_imports(COMMANDS[1][1]):
            print(f"  {micros / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()
