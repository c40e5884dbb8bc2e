"""Round-trip time of a 4-image CR study through edge, hub and back into PACS.

Measures, for each run, the time from the last instance received at the edge
to the result SR stored in the PACS, minus the quiet period the edge waits
before it calls a study stable: the platform's own overhead. Hub (in
process, SQLite, worker threads), edge and a pynetdicom storage SCP as PACS
run on loopback in this process (see :mod:`aifi.demo.run`).

Baseline, same process: storing the same four images straight into the same
PACS with C-STORE (what the study costs to move once).

    .venv/bin/python bench/round_trip.py [--runs 7] [--quiet 0.5] [--size 1024]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from aifi.demo.run import DemoSystem
from aifi.demo.samples import cr_study
from aifi.edge.config import DicomPeer
from aifi.edge.pacs import store_to_pacs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quiet", type=float, default=0.5, help="quiet period, seconds")
    parser.add_argument("--size", type=int, default=1024, help="rows and columns per image")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    overheads: list[float] = []
    stages: list[dict[str, float]] = []
    baseline: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        DemoSystem(Path(tmp), quiet_period_s=args.quiet) as system,
    ):
        assert system.edge is not None
        pacs = DicomPeer(ae_title=system.pacs.ae_title, host="127.0.0.1", port=system.pacs.port)
        for run in range(args.runs + 1):  # the first run warms caches and is not counted
            study = cr_study(4, rows=args.size, columns=args.size)
            t0 = time.perf_counter()
            assert all(r.ok for r in store_to_pacs(pacs, study))
            direct = time.perf_counter() - t0
            before = len(system.tasks())
            system.send(study)
            if not system.wait(120, lambda: None) or len(system.tasks()) != before + 1:
                raise SystemExit("a task did not finish in 120 s")
            task = system.tasks()[-1]
            if task.state != "delivered":
                raise SystemExit(f"task ended {task.state}: {task.reason}")
            sr_paths = [
                system.pacs.folder / f"{uid}.dcm" for uid in system.edge.state.deliveries(task.id)
            ]
            stored_at = max(p.stat().st_mtime for p in sr_paths)
            events = {
                e["kind"]: e["at"] for e in system.edge.state.events() if e["task_id"] == task.id
            }
            if run == 0:
                continue
            last = task.last_instance_at
            overheads.append(stored_at - last - args.quiet)
            baseline.append(direct)
            stages.append(
                {
                    "stable→task": task.created_at - last - args.quiet,
                    "pseudonymize+upload": events["task-submitted"] - task.created_at,
                    "hub run+poll+deliver": stored_at - events["task-submitted"],
                }
            )
    med = statistics.median(overheads)
    base = statistics.median(baseline)
    print(
        f"4-image CR study, {args.size}x{args.size}, {args.runs} runs, quiet period "
        f"{args.quiet} s excluded"
    )
    print(
        f"  platform overhead, last instance received -> SR stored in PACS: "
        f"median {med:.3f} s (min {min(overheads):.3f}, max {max(overheads):.3f})"
    )
    for key in stages[0]:
        print(f"    {key:<24} median {statistics.median(s[key] for s in stages):.3f} s")
    print(f"  baseline, same 4 images C-STORE straight to the PACS: median {base:.3f} s")
    print(f"  ratio overhead / baseline: {med / base:.1f}x")


if __name__ == "__main__":
    main()
