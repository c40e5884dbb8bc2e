"""MLLP over TLS for the order listener (``[orders.tls]``; IHE ATNA secure node, BCP 195).

The certificates are made by the test (:mod:`peers.certs`): a hospital CA, the
edge's server certificate and the RIS's client certificate. The RIS is a TLS
client written with the standard library, framing MLLP itself.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifi.edge.config import EdgeSettings, HubPeer, ListenerSettings, load_edge_settings
from aifi.edge.orders import OrderDesk
from aifi.edge.orders_config import OrdersSettings
from aifi.edge.orders_hl7 import MllpListener
from aifi.edge.service import EdgeService
from aifi.edge.state import EdgeState
from aifi.edge.tls import TlsSettings, server_context
from aifi.errors import ConfigError
from aifi.netutil import free_port
from peers.certs import Pki, make_pki


def orm() -> str:
    """ORM^O01 v2.3 as IHE RAD-4 has it (OBR-18 accession), as in test_orders."""
    return (
        "MSH|^~\\&|RIS|HOSP|AIFI|EDGE|20260115093000||ORM^O01|MSG-PLC-1-NW|P|2.3\r"
        "ORC|NW|PLC-1|FIL-PLC-1||SC||^^^^^R\r"
        "OBR|1|PLC-1|FIL-PLC-1|XRHANDBA^Hand bone age^L||||||||||||||ACC-1|RP-1\r"
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[OrderDesk]:
    settings = EdgeSettings(
        data_dir=tmp_path / "edge-data", orders=OrdersSettings(codes={"XRHANDBA": "bone-age"})
    )
    state = EdgeState(settings.data_dir / "edge.db")
    yield OrderDesk(settings, state)
    state.close()


@pytest.fixture
def listener(desk: OrderDesk, pki: Pki) -> Iterator[MllpListener]:
    tls = TlsSettings(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca)
    mllp = MllpListener(desk, "127.0.0.1", 0, max_bytes=1 << 20, tls=server_context(tls, "orders"))
    mllp.start()
    yield mllp
    mllp.stop()


def ris_context(pki: Pki, *, client_cert: bool = True, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca or pki.ca))
    if client_cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def send_tls(port: int, message: str, ctx: ssl.SSLContext) -> str:
    """One MLLP message over TLS; the acknowledgement, or "" when the edge closed instead."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\x0d")
        reply = b""
        while not reply.endswith(b"\x1c\x0d"):
            chunk = sock.recv(65536)
            if not chunk:
                return ""
            reply += chunk
    return reply[1:-2].decode()


def test_an_order_over_tls_with_the_ris_certificate_is_acknowledged(
    listener: MllpListener, desk: OrderDesk, pki: Pki
) -> None:
    ack = send_tls(listener.port, orm(), ris_context(pki))
    assert "MSA|AA|MSG-PLC-1-NW|" in ack
    (item,) = desk.order_items()
    assert item["algorithm_id"] == "bone-age"


def test_a_ris_without_a_client_certificate_is_refused_and_recorded(
    listener: MllpListener, desk: OrderDesk, pki: Pki
) -> None:
    # TLS 1.3: the client's handshake ends before the edge checks its certificate, so the
    # refusal shows at the first read (an alert, or the connection closed)
    try:
        ack = send_tls(listener.port, orm(), ris_context(pki, client_cert=False))
    except (ssl.SSLError, ConnectionError):
        ack = ""
    assert ack == ""
    assert not desk.order_items()
    # the edge records the refusal on its connection's thread, after the RIS saw it close
    deadline = time.monotonic() + 5
    while not desk.state.events("order-connection-refused") and time.monotonic() < deadline:
        time.sleep(0.02)
    (refused,) = desk.state.events("order-connection-refused")
    assert "MLLP over TLS from 127.0.0.1: handshake failed" in refused["detail"]


def test_a_ris_that_does_not_trust_the_edge_certificate_sends_nothing(
    listener: MllpListener, desk: OrderDesk, pki: Pki
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        send_tls(listener.port, orm(), ris_context(pki, ca=pki.other_ca))
    assert not desk.order_items()


def test_plain_mllp_to_the_tls_listener_gets_no_ack(
    listener: MllpListener, desk: OrderDesk
) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(b"\x0b" + orm().encode() + b"\x1c\x0d")
        try:
            reply = sock.recv(65536)
        except ConnectionError:
            reply = b""
    assert b"MSA" not in reply
    assert not desk.order_items()


def test_orders_tls_in_edge_toml_is_read_relative_to_the_file_and_served(
    tmp_path: Path, pki: Pki
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        'environment = "development"\n'
        '[listener]\nport = 0\nallowed_calling_aets = ["PACS"]\n'
        f'[hub]\nurl = "http://127.0.0.1:{free_port()}"\n'
        '[orders]\nport = 0\ncodes = { XRHANDBA = "bone-age" }\n'
        '[orders.tls]\ncert = "pki/server.pem"\nkey = "pki/server.key"\nca_bundle = "pki/ca.pem"\n'
    )
    settings = load_edge_settings(config)
    assert settings.orders is not None and settings.orders.tls is not None
    assert settings.orders.tls.cert == pki.server_cert
    service = EdgeService(settings)
    service.start()
    try:
        assert service.mllp is not None
        ack = send_tls(service.mllp.port, orm(), ris_context(pki))
        assert "MSA|AA|" in ack
    finally:
        service.stop()


def test_orders_tls_with_a_missing_key_stops_the_start(tmp_path: Path, pki: Pki) -> None:
    tls = TlsSettings(cert=pki.server_cert, key=tmp_path / "nowhere.key", ca_bundle=pki.ca)
    settings = EdgeSettings(
        data_dir=tmp_path / "edge-data",
        listener=ListenerSettings(port=0, allowed_calling_aets=["PACS"]),
        hub=HubPeer(url=f"http://127.0.0.1:{free_port()}"),
        orders=OrdersSettings(port=0, codes={"XRHANDBA": "bone-age"}, tls=tls),
    )
    service = EdgeService(settings)
    with pytest.raises(ConfigError, match=r"orders\.tls: cannot load the certificate files"):
        service.start()
    service.stop()
