"""Benchmark: the cost of one scrape of the edge's ``/metrics`` as its history grows.

Usage::

    .venv/bin/python bench/edge_metrics.py [--tasks 10000] [--repeat 5]

Writes ``--tasks`` delivered tasks into a fresh ``edge.db`` (each with one SR
stored in ``[pacs]`` and in a further destination ``vna``, and its
``results-ready`` event), then renders the registry the running edge serves
(:func:`aifi.edge.metrics.edge_registry`) ``--repeat`` times, with and without
the per-destination figures, and prints the mean time per scrape.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

from aifi.edge.config import DeliverySettings, Destination
from aifi.edge.destinations import Destinations
from aifi.edge.metrics import edge_registry, render
from aifi.edge.state import EdgeState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="aifi-bench-metrics-"))
    state = EdgeState(folder / "edge.db")
    destinations = [
        Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),
        Destination(name="vna", ae_title="VNA", host="127.0.0.1", port=104),
    ]
    Destinations(state, destinations[1:], ["sr"], DeliverySettings())  # its tables
    now = time.time()
    with state._tx() as db:
        for i in range(args.tasks):
            task_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO tasks (id, study_instance_uid, algorithm_id, rule, state,"
                " last_instance_at, created_at, updated_at, delivered_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (task_id, f"2.25.{i}", "bone-age", "bench", "delivered", now, now, now, now + 5),
            )
            db.execute(
                "INSERT INTO deliveries VALUES (?,?,?,?,?,?)",
                (task_id, f"2.25.9{i}", "sr", "stored", "", now + 3),
            )
            db.execute(
                "INSERT INTO destination_states (task_id, destination, state, attempts,"
                " updated_at) VALUES (?,?,?,?,?)",
                (task_id, "vna", "stored", 0, now + 4),
            )
            db.execute(
                "INSERT INTO destination_deliveries VALUES (?,?,?,?,?,?,?)",
                (task_id, "vna", f"2.25.9{i}", "sr", "stored", "", now + 4),
            )
            db.execute(
                "INSERT INTO events (at, kind, task_id, detail) VALUES (?,?,?,?)",
                (now + 1, "results-ready", task_id, "1 result objects"),
            )
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load {os.getloadavg()}")
    for label, registry in (
        ("with per-destination figures", edge_registry(state, folder, destinations)),
        ("without", edge_registry(state, folder)),
    ):
        render(registry)  # warm
        start = time.perf_counter()
        for _ in range(args.repeat):
            size = len(render(registry))
        ms = 1000 * (time.perf_counter() - start) / args.repeat
        print(f"{args.tasks} delivered tasks, {label}: {ms:.0f} ms per scrape ({size} bytes)")
    state.close()


if __name__ == "__main__":
    main()
