"""Real dcmtk peers for tests: ``storescu``, ``echoscu`` and a ``storescp``.

dcmtk's command-line tools (Debian package ``dcmtk``) are what many PACS and
modalities are built on; a test that passes against them speaks DICOM upper
layer (PS3.8) and DIMSE (PS3.7) the way the field does.

Nagle's algorithm: dcmtk's DUL reads the environment variable
``TCP_NODELAY`` on every association socket. Debian's dcmtk 3.6.7 is built
with the default 0, i.e. Nagle *on* (``-ll trace`` prints "environment
variable TCP_NODELAY not set, using the default value (0)"); Nagle plus the
peer's delayed ACKs stalls each C-STORE by tens of milliseconds. Every tool
started here therefore runs with ``TCP_NODELAY=1`` (:func:`dcmtk_env`)
unless the caller asks for ``nodelay=False``.

Fixtures: ``storescp`` (a running dcmtk Storage SCP writing to a folder).
Functions: :func:`storescu`, :func:`echoscu`, :func:`start_storescp`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import uid
from pydicom.filereader import read_file_meta_info

from aifi.netutil import free_port

__all__ = [
    "StoreScp",
    "dcmtk_available",
    "dcmtk_env",
    "echoscu",
    "start_storescp",
    "storescp",
    "storescu",
    "wait_for_port",
]

logger = logging.getLogger(__name__)


def dcmtk_available() -> bool:
    """Whether dcmtk's ``storescu``, ``storescp`` and ``echoscu`` are on PATH."""
    return all(shutil.which(tool) for tool in ("storescu", "storescp", "echoscu"))


def dcmtk_env(*, nodelay: bool = True) -> dict[str, str]:
    """This process's environment with dcmtk's ``TCP_NODELAY`` set (1: Nagle off)."""
    return {**os.environ, "TCP_NODELAY": "1" if nodelay else "0"}


def _require_dcmtk() -> None:
    if not dcmtk_available():
        pytest.skip("dcmtk is not installed (apt-get install dcmtk)")


def storescu(
    files: Sequence[Path],
    host: str,
    port: int,
    *,
    calling_aet: str = "STORESCU",
    called_aet: str = "AIFI_EDGE",
    extra_args: Sequence[str] = (),
    timeout: float = 300.0,
    nodelay: bool = True,
    required_only: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with dcmtk ``storescu`` over one association (C-STORE, PS3.4 B).

    storescu proposes a compressed transfer syntax only when told with its
    ``-x?`` option, and otherwise fails on, say, a JPEG 2000 file ("unable to
    convert dataset"); the option is chosen here from the files' transfer
    syntax, so compressed files travel as they are stored (one compressed
    transfer syntax per call). With ``required_only`` (``-R``) it proposes
    per SOP class only what the files need, else also every uncompressed
    transfer syntax. ``extra_args`` go before the peer's address. The caller
    checks ``returncode`` (0: every C-STORE succeeded) and ``stderr``. The called
    AE title defaults to the edge's (``listener.ae_title``), which it checks.
    """
    if not files:
        raise ValueError("files must name at least one DICOM file")
    args = [
        "storescu",
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        *(["-R"] if required_only else []),
        *_propose_flag(files),
        *extra_args,
        host,
        str(port),
        *(str(path) for path in files),
    ]
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dcmtk_env(nodelay=nodelay),
    )


#: storescu's option proposing each compressed transfer syntax (``storescu --help``).
_PROPOSE = {
    uid.JPEG2000Lossless: "-xv",
    uid.JPEG2000: "-xw",
    uid.JPEGLosslessSV1: "-xs",
    uid.JPEGBaseline8Bit: "-xy",
    uid.JPEGExtended12Bit: "-xx",
    uid.JPEGLSLossless: "-xt",
    uid.JPEGLSNearLossless: "-xu",
    uid.RLELossless: "-xr",
    uid.DeflatedExplicitVRLittleEndian: "-xd",
}


def _propose_flag(files: Sequence[Path]) -> list[str]:
    """The ``-x?`` option that makes storescu propose the files' compressed syntax."""
    flags = set()
    for path in files:
        syntax = read_file_meta_info(path).TransferSyntaxUID
        if syntax in _PROPOSE:
            flags.add(_PROPOSE[syntax])
        elif syntax.is_compressed:
            raise ValueError(f"storescu cannot be told to propose transfer syntax {syntax}")
    if len(flags) > 1:
        raise ValueError(
            f"files use several compressed transfer syntaxes ({sorted(flags)}); "
            "send them in separate calls"
        )
    return sorted(flags)


def echoscu(
    host: str,
    port: int,
    *,
    calling_aet: str = "ECHOSCU",
    called_aet: str = "AIFI_EDGE",
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO (Verification, PS3.4 A) with dcmtk ``echoscu``; 0 means answered."""
    args = ["echoscu", "-aet", calling_aet, "-aec", called_aet, host, str(port)]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, env=dcmtk_env()
    )


def wait_for_port(host: str, port: int, *, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


@dataclass
class StoreScp:
    """A running dcmtk ``storescp``: where it listens and where it writes."""

    host: str
    port: int
    aet: str
    folder: Path
    process: subprocess.Popen[bytes]

    def files(self) -> list[Path]:
        """The instances received so far, sorted by name."""
        return sorted(path for path in self.folder.iterdir() if path.suffix == ".dcm")


@contextmanager
def start_storescp(
    folder: Path,
    *,
    port: int | None = None,
    aet: str = "STORESCP",
    extra_args: Sequence[str] = (),
    nodelay: bool = True,
) -> Iterator[StoreScp]:
    """Run dcmtk ``storescp`` on loopback until the block ends.

    It accepts every transfer syntax it knows (``+xa``) and unknown SOP
    classes (``-pm``), writes each instance bit-preserving (``+B``) as
    ``<modality>.<SOP Instance UID>.dcm`` in ``folder``, and does no reverse
    DNS lookups (``-dhl``). The process is stopped by its PID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = (folder.parent / f"storescp-{port}.log").open("wb")
    args = [
        "storescp",
        "-aet",
        aet,
        "-od",
        str(folder),
        "+xa",
        "-pm",
        "+B",
        "-dhl",
        "-fe",
        ".dcm",
        *extra_args,
        str(port),
    ]
    process = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env(nodelay=nodelay)
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield StoreScp("127.0.0.1", port, aet, folder, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreScp]:
    """A dcmtk Storage SCP on a free loopback port, writing to ``tmp_path/storescp``."""
    _require_dcmtk()
    with start_storescp(tmp_path / "storescp") as scp:
        yield scp
