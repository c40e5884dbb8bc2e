"""Several C-STOREs over one association: no response may be lost (the ``aifi demo`` flake).

pynetdicom runs a reactor thread in a *requestor* association too, and that
thread takes any complete DIMSE message off the queue unless ``send_c_store``
has paused it. The pause has a hole: ``send_c_store`` unpauses the reactor
after each response (``_reactor_checkpoint.set()``), and when the next
``send_c_store`` comes before the woken reactor thread has run, it finds the
stale ``_is_paused = True``, sends, and the reactor, when it finally runs,
takes the C-STORE-RSP meant for ``send_c_store``. It logs "Received unexpected
C-STORE service message" (a response is not a valid request) and the store
waits for the DIMSE timeout. In the demo about one run in ten hit it, when the
two cores were busy and the reactor thread was scheduled late.

Here that schedule is made to happen on every store: the woken reactor thread
runs only once the next response is on the queue, and the thread waiting in
``send_c_store`` takes a response ``LATE_S`` after it arrived (two threads a
busy scheduler runs late, as the demo's two cores did).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.association import Association

from aifi.demo.pacs import DemoPacs
from aifi.demo.samples import cr_study
from aifi.edge import pacs as edge_pacs
from aifi.edge.config import DicomPeer

#: How late the thread in ``send_c_store`` takes its response.
LATE_S = 0.2


class LateTaker(queue.Queue[Any]):
    """pynetdicom's DIMSE message queue, whose blocking reader is scheduled late."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            deadline = time.monotonic() + (timeout or 5.0)
            while self.empty() and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(LATE_S)
            timeout = max(deadline - time.monotonic(), 0.01)
        return super().get(block, timeout)


class LateWakeup(threading.Event):
    """The reactor's checkpoint: once woken, its thread runs when a message has come."""

    def __init__(self, messages: queue.Queue[Any]) -> None:
        super().__init__()
        self.messages = messages

    def wait(self, timeout: float | None = None) -> bool:
        was_set = self.is_set()
        woken = super().wait(timeout)
        if woken and not was_set:
            deadline = time.monotonic() + 1.0
            while self.messages.empty() and time.monotonic() < deadline:
                time.sleep(0.001)
        return woken


@pytest.fixture
def late_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requestor associations whose reactor and caller threads run late."""
    original = Association.__init__

    def init(self: Association, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.is_requestor:
            self.dimse.msg_queue = LateTaker()
            self._reactor_checkpoint = LateWakeup(self.dimse.msg_queue)
            self._reactor_checkpoint.set()

    monkeypatch.setattr(Association, "__init__", init)
    # a lost response would otherwise cost the 60 s of production
    monkeypatch.setattr(edge_pacs, "DIMSE_TIMEOUT_S", 3.0)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[DemoPacs]:
    with DemoPacs(tmp_path / "pacs") as server:
        yield server


def test_every_store_on_one_association_gets_its_answer(
    late_threads: None, pacs: DemoPacs, caplog: pytest.LogCaptureFixture
) -> None:
    datasets = cr_study(n_images=4, rows=64, columns=64)
    peer = DicomPeer(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.port)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        results = edge_pacs.store_to_pacs(peer, datasets)
    took = time.monotonic() - started

    assert [r.detail for r in results if not r.ok] == []
    assert sorted(p.stem for p in pacs.instances()) == sorted(
        str(ds.SOPInstanceUID) for ds in datasets
    )
    assert not [r for r in caplog.records if "unexpected" in r.getMessage()]
    assert took < 4 * LATE_S + 2.5, f"{took:.1f} s for 4 stores: a response waited for the timeout"


def test_stores_from_many_threads_at_once_all_arrive(pacs: DemoPacs) -> None:
    """The delivery loop and the destinations store at once, each on its own association."""
    peer = DicomPeer(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.port)
    batches = [cr_study(n_images=3, rows=32, columns=32) for _ in range(6)]
    outcomes: list[list[edge_pacs.StoreResult]] = []
    lock = threading.Lock()

    def send(datasets: list[Any]) -> None:
        results = edge_pacs.store_to_pacs(peer, datasets)
        with lock:
            outcomes.append(results)

    threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(outcomes) == len(batches)
    assert all(r.ok for results in outcomes for r in results)
    assert len(pacs.instances()) == sum(len(batch) for batch in batches)
