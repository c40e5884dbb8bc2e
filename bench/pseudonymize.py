"""Benchmark: aifi's pseudonymizer against a raw copy, plain pydicom and Python peers.

Usage::

    .venv/bin/python bench/pseudonymize.py [--radiographs 20] [--slices 300] [--no-peers]

Generates a corpus under ``bench/out/corpus`` (DX radiographs of ~10 MB and a
512 x 512 CT series, :mod:`aifi.deid.testcorpus`) and measures, in the same
run, instances/s and MB/s of:

* ``raw copy`` — ``shutil.copyfile`` (the ceiling);
* ``pydicom read+write`` — ``dcmread`` + ``save_as`` (the practical floor);
* ``aifi`` — :meth:`aifi.deid.Pseudonymizer.pseudonymize_file`;
* the peers ``deid``, ``dicognito`` and ``dicom-anonymizer``, installed with
  uv into a throwaway venv under ``bench/out/peers`` (never project
  dependencies); a peer that cannot be installed or fails is reported and
  skipped.

Each tool runs ``--repeat`` times (default 2) over the whole corpus into a fresh
folder and its best run counts, for every tool alike: the machine is shared,
and the best run is the one least disturbed. ``aifi, atomic=False`` writes
straight to the destination instead of renaming a finished file onto it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from aifi.deid import Pseudonymizer
from aifi.deid.testcorpus import ct_series, radiograph

OUT = Path(__file__).resolve().parent / "out"
PEERS_VENV = OUT / "peers"
PEER_PACKAGES = ["pydicom>=3", "deid", "dicognito", "dicom-anonymizer"]

# Runs inside the peers' venv: python - PEER SRC_LIST DST_DIR -> prints seconds as JSON.
PEER_SCRIPT = r"""
import json, sys, time, warnings, logging
from pathlib import Path
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
peer, listing, dst = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
files = [Path(p) for p in listing.read_text().split("\n") if p]
dst.mkdir(parents=True, exist_ok=True)
import pydicom
if peer == "dicognito":
    from dicognito.anonymizer import Anonymizer
    anonymizer = Anonymizer()
    def run(src, out):
        ds = pydicom.dcmread(src)
        anonymizer.anonymize(ds)
        ds.save_as(out)
elif peer == "dicom-anonymizer":
    from dicomanonymizer import anonymize_dicom_file
    def run(src, out):
        anonymize_dicom_file(str(src), str(out))
elif peer == "deid":
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers
    recipe = DeidRecipe()
    def run(src, out):
        replace_identifiers([str(src)], deid=recipe, save=True, overwrite=True,
                            output_folder=str(out.parent), remove_private=True)
start = time.perf_counter()
for i, src in enumerate(files):
    run(src, dst / f"{i:05d}.dcm")
print(json.dumps(time.perf_counter() - start))
"""


def make_corpus(radiographs: int, slices: int) -> dict[str, list[Path]]:
    corpus = OUT / "corpus"
    dx_dir, ct_dir = corpus / "dx", corpus / "ct"
    dx = sorted(dx_dir.glob("*.dcm"))
    if len(dx) != radiographs:
        shutil.rmtree(dx_dir, ignore_errors=True)
        dx_dir.mkdir(parents=True)
        dx = [radiograph(dx_dir / f"dx{i:03d}.dcm", seed=i) for i in range(radiographs)]
    ct = sorted(ct_dir.glob("*.dcm"))
    if len(ct) != slices:
        shutil.rmtree(ct_dir, ignore_errors=True)
        ct = ct_series(ct_dir, slices=slices)
    return {"CT series": ct, "radiographs": dx}


def timed(files: list[Path], dst: Path, work: Callable[[Path, Path], object]) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    start = time.perf_counter()
    for i, src in enumerate(files):
        work(src, dst / f"{i:05d}.dcm")
    return time.perf_counter() - start


def install_peers() -> str | None:
    """Install the peers into a throwaway venv; the reason when that is impossible."""
    python = PEERS_VENV / "bin" / "python"
    uv = Path(sys.executable).with_name("uv")
    if python.exists():
        return None
    try:
        subprocess.run(
            [str(uv), "venv", "-q", "--python", sys.executable, str(PEERS_VENV)],
            check=True,
            timeout=300,
        )
        subprocess.run(
            [str(uv), "pip", "install", "-q", "--python", str(python), *PEER_PACKAGES],
            check=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"peers not installed ({exc})"
    return None


def run_peer(peer: str, files: list[Path], dst: Path) -> float | str:
    listing = OUT / "files.txt"
    listing.write_text("\n".join(str(p) for p in files))
    shutil.rmtree(dst, ignore_errors=True)
    try:
        done = subprocess.run(
            [str(PEERS_VENV / "bin" / "python"), "-c", PEER_SCRIPT, peer, str(listing), str(dst)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        return float(json.loads(done.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        return f"failed: {str(exc)[:80]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radiographs", type=int, default=20)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool; the best counts")
    args = parser.parse_args()

    corpus = make_corpus(args.radiographs, args.slices)
    key = bytes(range(32))
    pseudonymizer = Pseudonymizer(key)

    def pydicom_rw(src: Path, dst: Path) -> None:
        pydicom.dcmread(src).save_as(dst)

    def non_atomic(src: Path, dst: Path) -> None:
        pseudonymizer.pseudonymize_file(src, dst, atomic=False)

    candidates: list[tuple[str, Callable[[list[Path], Path], float | str]]] = [
        ("raw copy", lambda f, d: timed(f, d, shutil.copyfile)),
        ("pydicom read+write", lambda f, d: timed(f, d, pydicom_rw)),
        ("aifi", lambda f, d: timed(f, d, pseudonymizer.pseudonymize_file)),
        ("aifi, atomic=False", lambda f, d: timed(f, d, non_atomic)),
    ]
    note = None if not args.no_peers else "peers skipped (--no-peers)"
    if note is None:
        note = install_peers()
    if note is None:
        for peer in ("dicom-anonymizer", "dicognito", "deid"):
            candidates.append((peer, lambda f, d, p=peer: run_peer(p, f, d)))

    rows = []
    for corpus_name, files in corpus.items():
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        for name, measure in candidates:
            folder = OUT / "results" / name.replace(" ", "_").replace(",", "")
            runs = [measure(files, folder) for _ in range(args.repeat)]
            timings = [r for r in runs if not isinstance(r, str)]
            seconds = min(timings) if timings else runs[0]
            if isinstance(seconds, str):
                rows.append((corpus_name, name, seconds, "", ""))
            else:
                rows.append(
                    (
                        corpus_name,
                        name,
                        f"{seconds:.2f}",
                        f"{len(files) / seconds:.0f}",
                        f"{megabytes / seconds:.0f}",
                    )
                )
        shutil.rmtree(OUT / "results", ignore_errors=True)
    print("| corpus | tool | seconds | instances/s | MB/s |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if note:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
