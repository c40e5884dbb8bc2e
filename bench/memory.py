"""Peak RSS of every process while a CT goes edge → hub → integrity-check and incidental-pe.

For each study size (default 100 and 600 slices of 512 x 512, 16 bit: about
0.5 MB a slice) fresh processes are started, so each one's VmHWM (peak
resident set, ``/proc/<pid>/status``) belongs to that size alone:

* the hub: ``aifi hub serve`` (SQLite, local folder; its algorithm child
  processes are listed as ``hub serve child``);
* the edge: ``aifi edge serve --config edge.toml`` with two rules (the CT to
  ``integrity-check`` and to ``incidental-pe``), delivering into dcmtk
  ``storescp`` as the PACS;
* the sender: dcmtk ``storescu``, one association.

The run ends when the edge has delivered both tasks (or ``--timeout``). The
CT is the phantom of :func:`aifi.phantoms.chest_ct_series` drawn at 512 x 512
for ``--base`` slices; larger series repeat each drawn slice at finer
z spacing (the series stays consistent: positions, thickness, UIDs), so the
generator does not need gigabytes for 600 slices.

Goal from issue 12: under 300 MB in every process, flat in study size.

    .venv/bin/python bench/memory.py [--slices 100,600] [--size 512] [--timeout 600]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import use_test_peers
from _procs import HubProcesses, ProcessMeter
from aifi.netutil import free_port
from aifi.phantoms import chest_ct_series, chest_ct_volume

GOAL_MB = 300


def write_ct(folder: Path, slices: int, size: int, base: int) -> tuple[list[Path], int]:
    """``slices`` CT files in ``folder``; their total size in bytes."""
    import numpy as np
    from pydicom.uid import generate_uid

    drawn = min(base, slices)
    volume = chest_ct_volume(
        np.random.default_rng(5),
        embolus=True,
        slices=drawn,
        slice_thickness=5.0,
        size=size,
        spacing_mm=1.8 * 192 / size,  # the phantom's field of view at any matrix size
    )
    series = chest_ct_series(embolus=True, seed=5, volume=volume, slice_thickness=5.0)
    repeat = -(-slices // drawn)
    folder.mkdir(parents=True)
    paths, total, number = [], 0, 0
    for ds in series:
        z = float(ds.ImagePositionPatient[2])
        for k in range(repeat):
            if number == slices:
                break
            copy_ = ds if k == 0 else copy.deepcopy(ds)
            if repeat > 1:
                copy_.SOPInstanceUID = generate_uid()
                copy_.file_meta.MediaStorageSOPInstanceUID = copy_.SOPInstanceUID
                position = z + k * 5.0 / repeat
                copy_.ImagePositionPatient = [*ds.ImagePositionPatient[:2], f"{position:.3f}"]
                copy_.SliceLocation = f"{position:.3f}"
                copy_.SliceThickness = f"{5.0 / repeat:.3f}"
            number += 1
            copy_.InstanceNumber = number
            path = folder / f"{number:04d}.dcm"
            copy_.save_as(path, enforce_file_format=True)
            paths.append(path)
            total += path.stat().st_size
    return paths, total


EDGE_TOML = """\
environment = "development"
hospital = "Bench Hospital"
data_dir = "data"
quiet_period_s = 2

[listener]
ae_title = "AIFI_EDGE"
host = "127.0.0.1"
port = {port}
allowed_calling_aets = ["CT01"]

[hub]
url = "{hub_url}"
token = "{token}"
poll_interval_s = 0.5
max_backoff_s = 2

[pacs]
ae_title = "{pacs_aet}"
host = "127.0.0.1"
port = {pacs_port}

[[rules]]
name = "CT connection test"
algorithm = "integrity-check"
match = {{ Modality = ["CT"] }}

[[rules]]
name = "CT for incidental PE"
algorithm = "incidental-pe"
match = {{ Modality = ["CT"] }}
"""


def measure(slices: int, args: argparse.Namespace, folder: Path) -> dict[str, object]:
    import subprocess

    use_test_peers()
    from aifi.edge.state import EdgeState
    from peers.dcmtk import dcmtk_env, start_storescp

    paths, total = write_ct(folder / "ct", slices, args.size, args.base)
    hub = HubProcesses(folder / "hub", None, workers=2)
    out: dict[str, object] = {"slices": slices, "mb": total / 1e6}
    with start_storescp(folder / "pacs", aet="PACS") as pacs:
        try:
            hub_pid = hub.start("serve-1")
            token = (
                hub.aifi(
                    "hospital",
                    "add",
                    "Bench Hospital",
                    "--subscribe",
                    "integrity-check,incidental-pe",
                )
                .strip()
                .splitlines()[-1]
            )
            edge_dir = folder / "edge"
            edge_dir.mkdir()
            port = free_port()
            (edge_dir / "edge.toml").write_text(
                EDGE_TOML.format(
                    port=port, hub_url=hub.url, token=token, pacs_aet=pacs.aet, pacs_port=pacs.port
                ),
                encoding="utf-8",
            )
            with (edge_dir / "edge.log").open("wb") as log:
                edge = subprocess.Popen(
                    [sys.executable, "-m", "aifi", "edge", "serve", "--config", "edge.toml"],
                    cwd=edge_dir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                _wait_port(port, edge)
                kinds = {"hub serve": [hub_pid], "edge": [edge.pid]}
                with ProcessMeter(kinds, interval_s=0.1) as meter:
                    started = time.monotonic()
                    sender = subprocess.Popen(
                        [
                            "storescu",
                            "-aet",
                            "CT01",
                            "-aec",
                            "AIFI_EDGE",
                            "127.0.0.1",
                            str(port),
                            *map(str, paths),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        env=dcmtk_env(),
                    )
                    meter.kinds["storescu"] = [sender.pid]
                    sender.wait(timeout=args.timeout)
                    out["send_s"] = time.monotonic() - started
                    state = EdgeState(edge_dir / "data" / "edge.db")
                    deadline = started + args.timeout
                    tasks = []
                    while time.monotonic() < deadline:
                        tasks = state.tasks()
                        if len(tasks) >= 2 and all(
                            t.state.lower() in ("delivered", "failed", "canceled") for t in tasks
                        ):
                            break
                        time.sleep(0.5)
                    out["total_s"] = time.monotonic() - started
                    out["tasks"] = ", ".join(
                        f"{t.algorithm_id} {t.state}" + (f" ({t.reason})" if t.reason else "")
                        for t in tasks
                    )
                out["peak_mb"] = {k: v / 1024 for k, v in meter.peak_kb.items()}
            finally:
                edge.terminate()
                edge.wait(timeout=30)
        finally:
            hub.stop_all()
    return out


def _wait_port(port: int, process: object) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:  # type: ignore[attr-defined]
            raise RuntimeError("the edge exited; see its edge.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the edge did not listen within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", default="100,600", help="study sizes, comma-separated")
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument("--base", type=int, default=100, help="slices actually drawn")
    parser.add_argument("--timeout", type=float, default=600.0, help="per size, seconds")
    args = parser.parse_args()

    results = []
    for n in (int(s) for s in args.slices.split(",")):
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="aifi-mem-") as tmp:
            results.append(measure(n, args, Path(tmp)))
        results[-1]["load"] = (load_before, os.getloadavg()[0])
        print(f"[{n} slices] {results[-1]}", file=sys.stderr)
    kinds = sorted({k for r in results for k in r["peak_mb"]})  # type: ignore[attr-defined]
    head = f"{'process':<18}" + "".join(f"{str(r['slices']) + ' slices':>14}" for r in results)
    lines = [
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        + f" on {os.cpu_count()} cores, "
        + ", ".join(
            f"load {r['load'][0]:.1f} → {r['load'][1]:.1f} during {r['slices']} slices"  # type: ignore[index]
            for r in results
        ),
        f"CT {args.size}x{args.size}: "
        + ", ".join(f"{r['slices']} slices {r['mb']:.0f} MB" for r in results),
        head + f"{'goal':>10}",
        "-" * len(head + " " * 10),
    ]
    for kind in kinds:
        cells = "".join(
            f"{r['peak_mb'].get(kind, 0):11.0f} MB"  # type: ignore[attr-defined]
            for r in results
        )
        worst = max(r["peak_mb"].get(kind, 0) for r in results)  # type: ignore[attr-defined]
        verdict = "met" if worst < GOAL_MB else f"missed by {worst - GOAL_MB:.0f} MB"
        lines.append(f"{kind:<18}{cells}   < {GOAL_MB} MB: {verdict}")
    for r in results:
        lines.append(
            f"{r['slices']} slices: sent in {r['send_s']:.1f} s, done in {r['total_s']:.1f} s: "
            f"{r['tasks']}"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
