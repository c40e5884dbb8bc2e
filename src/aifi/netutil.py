"""Small network helpers shared by the demo, tests and benchmarks."""

from __future__ import annotations

import socket

__all__ = ["free_port", "set_nodelay"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm: DICOM's small PDUs otherwise wait for delayed ACKs."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
