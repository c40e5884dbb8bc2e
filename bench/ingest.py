"""Ingest rate: how fast does a receiver take a CT series from a PACS-like sender?

Run::

    .venv/bin/python bench/ingest.py [--slices 300] [--repeat 3] [--only orthanc,edge]

One synthetic contrast CT series (``aifi.demo.samples.ct_series``: 512x512,
16 bits allocated, about 512 KB per instance) is generated once. For each
receiver, dcmtk ``storescu`` sends all of it over ONE association
(C-STORE, PS3.4 Annex B), and the wall-clock time of the storescu process is
measured (association set-up and release included). Receivers, each fresh
and storing into a temporary folder:

(a) dcmtk ``storescp``, bit-preserving (``+B``), no fsync;
(b) Orthanc 1.10.1 (Debian), its defaults: SQLite index, ``SyncStorageArea``
    true (fsync per file, the default since 1.7.4), no plugins;
(c) a plain pynetdicom Storage SCP, the handler of pynetdicom's
    documentation (``event.encoded_dataset()`` written to a file), Nagle
    left on as pynetdicom leaves it; and aifi's demo PACS
    (``aifi.demo.pacs.DemoPacs``: the same plus TCP_NODELAY and
    write-then-rename);
(d) the aifi edge, ``aifi edge serve --config <generated edge.toml>``
    (listener defaults: fsync per instance, state recorded in SQLite);
    skipped with a message when the command is not available.

The table gives instances/s, MB/s and the ratio to Orthanc (median of
``--repeat`` runs).

What we found about Nagle's algorithm (TCP_NODELAY), checked on this
machine with Debian's dcmtk 3.6.7 and Orthanc 1.10.1:

* dcmtk's DUL reads the environment variable ``TCP_NODELAY`` on each
  association socket (``storescu -ll trace`` prints "checking whether
  environment variable TCP_NODELAY is set"). Debian's build defaults it to
  0, i.e. Nagle stays ON ("environment variable TCP_NODELAY not set, using
  the default value (0)"); ``TCP_NODELAY=1`` turns it off ("disabling Nagle
  algorithm as requested at runtime"). storescu has no command-line flag
  for it: the environment variable is the switch.
* Orthanc 1.10.1's ``"TcpNoDelay"`` option only concerns its HTTP server
  (CivetWeb; the log says "TCP_NODELAY for the HTTP sockets is set to ...").
  There is no ``DicomTcpNoDelay``. Its DICOM server is dcmtk's DUL, linked
  dynamically, so the same ``TCP_NODELAY`` environment variable applies.
* Therefore every dcmtk process here (storescu, storescp, Orthanc) runs with
  ``TCP_NODELAY=1``; ``--nagle`` runs them with ``TCP_NODELAY=0`` to show
  the difference (the ~20 instances/s seen before for storescu to Orthanc).
  pynetdicom never sets TCP_NODELAY itself; the aifi edge and the demo PACS
  set it on each accepted socket.

Measured on the development machine (2 shared cores, ext4, 2026-11-27;
300 slices, 158 MB, one run): storescp 352 inst/s, Orthanc 65, plain
pynetdicom 62, demo PACS 59, aifi edge 54 (0.83x Orthanc). With ``--nagle``
(60 slices): storescp 21 inst/s, Orthanc 17, aifi edge 41 (it sets
TCP_NODELAY itself) - the ~20 instances/s symptom, reproduced.

Fairness notes: PDU sizes are each receiver's default (storescp, Orthanc
and pynetdicom offer 16 KB; the aifi edge offers unlimited, which lets
storescu send its maximum). The sender and receiver share the machine's
cores, so absolute numbers vary; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from _common import Measurement, Skipped, format_table, timed, use_test_peers
from aifi.demo.pacs import DemoPacs
from aifi.demo.samples import ct_series, write_study
from aifi.netutil import free_port

use_test_peers()
from peers.dcmtk import dcmtk_available, start_storescp, wait_for_port  # noqa: E402
from peers.orthanc import orthanc_available, start_orthanc  # noqa: E402

logger = logging.getLogger("bench.ingest")

CALLING_AET = "BENCHSCU"


@dataclass(frozen=True)
class Target:
    """Where storescu sends, and whether the receiver fsyncs each instance."""

    host: str
    port: int
    aet: str
    fsync: bool


Receiver = Callable[[Path, bool], AbstractContextManager[Target]]


@contextmanager
def dcmtk_storescp(folder: Path, nagle: bool) -> Iterator[Target]:
    if not dcmtk_available():
        raise Skipped("dcmtk is not installed")
    with start_storescp(folder, aet="STORESCP", nodelay=not nagle) as scp:
        yield Target(scp.host, scp.port, scp.aet, fsync=False)


@contextmanager
def orthanc(folder: Path, nagle: bool) -> Iterator[Target]:
    if not orthanc_available():
        raise Skipped("Orthanc is not installed")
    with start_orthanc(folder, nodelay=not nagle, sync_storage=True) as server:
        yield Target(server.host, server.dicom_port, server.aet, fsync=True)


@contextmanager
def pynetdicom_plain(folder: Path, nagle: bool) -> Iterator[Target]:
    """The Storage SCP of pynetdicom's documentation, nothing added."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

    folder.mkdir(parents=True, exist_ok=True)

    def handle_store(event: Event) -> int:
        request = cast(C_STORE, event.request)
        (folder / f"{request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="PYNETDICOM")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    server = cast(ThreadedAssociationServer, server)  # block=False returns the server
    try:
        yield Target("127.0.0.1", int(server.server_address[1]), "PYNETDICOM", fsync=False)
    finally:
        server.shutdown()


@contextmanager
def demo_pacs(folder: Path, nagle: bool) -> Iterator[Target]:
    with DemoPacs(folder) as pacs:
        yield Target(pacs.host, pacs.port, pacs.ae_title, fsync=False)


def _aifi_command() -> Path:
    exe = Path(sys.executable).parent / "aifi"
    if not exe.exists():
        raise Skipped(f"the aifi command is not installed next to {sys.executable}")
    probe = subprocess.run(
        [str(exe), "edge", "serve", "--help"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise Skipped("'aifi edge serve' is not available yet")
    return exe


def aifi_edge(folder: Path, nagle: bool) -> AbstractContextManager[Target]:
    """``aifi edge serve`` as configured by default: fsync per instance."""
    return _aifi_edge(folder, fsync=True)


def aifi_edge_no_fsync(folder: Path, nagle: bool) -> AbstractContextManager[Target]:
    """``aifi edge serve`` with ``listener.fsync = false`` (page cache only, like storescp)."""
    return _aifi_edge(folder, fsync=False)


@contextmanager
def _aifi_edge(folder: Path, *, fsync: bool) -> Iterator[Target]:
    """``aifi edge serve`` with a generated edge.toml; the hub is never reached."""
    exe = _aifi_command()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "edge.toml"
    config.write_text(
        "\n".join(
            [
                'environment = "development"',
                f'data_dir = "{folder / "edge-data"}"',
                "quiet_period_s = 3600",
                "[listener]",
                'ae_title = "AIFI_EDGE"',
                'host = "127.0.0.1"',
                f"port = {port}",
                f'allowed_calling_aets = ["{CALLING_AET}"]',
                f"fsync = {'true' if fsync else 'false'}",
                "[hub]",
                f'url = "http://127.0.0.1:{free_port()}"',
                "",
            ]
        )
    )
    log = (folder / "edge.log").open("wb")
    process = subprocess.Popen(
        [str(exe), "edge", "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        try:
            wait_for_port("127.0.0.1", port, timeout=30)
        except TimeoutError:
            raise Skipped(
                f"aifi edge did not listen within 30 s; see {folder / 'edge.log'}"
            ) from None
        yield Target("127.0.0.1", port, "AIFI_EDGE", fsync=fsync)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


RECEIVERS: dict[str, tuple[str, Receiver]] = {
    "storescp": ("(a) dcmtk storescp", dcmtk_storescp),
    "orthanc": ("(b) Orthanc 1.10.1", orthanc),
    "pynetdicom": ("(c) pynetdicom plain SCP", pynetdicom_plain),
    "demopacs": ("(c) aifi demo PACS (pynetdicom)", demo_pacs),
    "edge": ("(d) aifi edge", aifi_edge),
    "edge-nofsync": ("(d) aifi edge, fsync off", aifi_edge_no_fsync),
}


def measure(
    name: str,
    files: list[Path],
    total_bytes: int,
    workdir: Path,
    *,
    repeat: int,
    nagle: bool,
) -> Measurement:
    label, receiver = RECEIVERS[name]
    row = Measurement(label, len(files), total_bytes)
    env = {**os.environ, "TCP_NODELAY": "0" if nagle else "1"}
    try:
        for run in range(repeat):
            folder = workdir / f"{name}-{run}"
            with receiver(folder, nagle) as target:
                args = ["storescu", "-aet", CALLING_AET, "-aec", target.aet, "-R"]
                args += [target.host, str(target.port), *map(str, files)]
                row.seconds.append(timed(args, env=env))
                row.fsync = target.fsync
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("%s run %d: %.2f s", label, run + 1, row.seconds[-1])
    except Skipped as exc:
        row.skipped = str(exc)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="CT slices to send (300)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per receiver; median shown")
    parser.add_argument(
        "--only", default=",".join(RECEIVERS), help=f"comma-separated: {','.join(RECEIVERS)}"
    )
    parser.add_argument(
        "--nagle", action="store_true", help="leave Nagle on in dcmtk (TCP_NODELAY=0)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where files go (tmp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("aifi").setLevel(logging.WARNING)
    if not shutil.which("storescu"):
        print("dcmtk's storescu is needed to send; apt-get install dcmtk", file=sys.stderr)
        return 2
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in RECEIVERS]
    if unknown:
        parser.error(f"unknown receivers {unknown}; choose from {list(RECEIVERS)}")

    with tempfile.TemporaryDirectory(prefix="aifi-bench-ingest-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        logger.info("generating %d CT slices ...", args.slices)
        files = write_study(ct_series(args.slices, seed="bench-ingest"), workdir / "series")
        total = sum(path.stat().st_size for path in files)
        logger.info("%d files, %.1f MB", len(files), total / 1e6)
        rows = [
            measure(name, files, total, workdir, repeat=args.repeat, nagle=args.nagle)
            for name in chosen
        ]
    nagle = "ON (TCP_NODELAY=0)" if args.nagle else "off (TCP_NODELAY=1)"
    print(
        f"\n{args.slices} CT instances, {total / 1e6:.1f} MB, one storescu association, "
        f"dcmtk Nagle {nagle}, median of {args.repeat}\n"
    )
    print(format_table(rows, reference=RECEIVERS["orthanc"][0], reference_name="Orthanc"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
