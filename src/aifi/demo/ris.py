"""The demo's RIS: a real MLLP listener that acknowledges and keeps HL7 messages."""

from __future__ import annotations

import asyncio
import logging
import threading

import hl7
import hl7.mllp

from aifi.netutil import free_port

__all__ = ["DemoRis"]

logger = logging.getLogger(__name__)


class DemoRis:
    """An MLLP server (python-hl7's asyncio server) on loopback, in its own thread."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.messages: list[hl7.Message] = []
        self.ack_code = "AA"  # what the RIS answers (MSA-1); "AE" rejects
        self.hold = False  # True: keep each message but answer only once set back to False
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()

        async def handle(
            reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter
        ) -> None:
            try:
                while not writer.is_closing():
                    message = await reader.readmessage()
                    self.messages.append(message)
                    while self.hold and not writer.is_closing():
                        await asyncio.sleep(0.05)
                    writer.writemessage(message.create_ack(ack_code=self.ack_code))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def serve() -> None:
            self._stop = asyncio.Event()
            server = await hl7.mllp.start_hl7_server(
                handle,
                self.host,
                self.port,
                encoding="utf-8",  # MSH-18 UNICODE UTF-8 or ASCII
            )
            ready.set()
            await self._stop.wait()
            server.close()
            await server.wait_closed()

        self._thread = threading.Thread(
            target=lambda: self._loop.run_until_complete(serve()), name="demo-ris", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the demo RIS did not start")

    def stop(self) -> None:
        if self._thread is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=5)
            self._thread = None
            self._loop.close()
