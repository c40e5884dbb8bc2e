"""Small network helpers shared by the edge, the hub, the demo, tests and benchmarks."""

from __future__ import annotations

import socket

__all__ = ["free_port", "set_nodelay", "warning_header"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm: DICOM's small PDUs otherwise wait for delayed ACKs."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def warning_header(agent: str, text: str) -> str:
    """A ``Warning`` field value (RFC 7234 §5.5, code 299) carrying ``text`` as its quoted text.

    A field value is visible ASCII, spaces and tabs (RFC 9110 §5.5): a reason
    that echoes a request (an unknown UID, a search key) may hold anything,
    so every other character, and the double quote that would end the
    quoted string, becomes ``?``. Otherwise the HTTP server refuses to send
    the answer at all.
    """
    safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)
    return f'299 {agent}: "{safe}"'
