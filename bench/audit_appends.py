"""Audit appends/s and latency: per-hospital chains against the old single chain (issue 12).

Each run gives a fresh database the audit tables only, starts 1, 2 and 4
processes (one appending thread each) that append events for ``--hospitals``
hospitals picked at random for ``--seconds``, then verifies every chain and
prints appends/s, p50 and p99 of one append, and the ratio of each store
to the old single-chain store: today's store with one chain (what the code
alone changed: statements built once, values bound per call, the events
table keyed by its primary key on SQLite) and with one chain per hospital
(:func:`aifi.hub.auditing.audit_log`, what the hub runs). The old store
is the one the hub ran before schema 0008: ``src/aifi/audit/store.py`` and
``tables.py`` of commit ``f090bbb``, read with ``git show`` and run in the
same script, on the same machine, right before.

Backends: the hub's SQLite file (WAL, ``synchronous=NORMAL``, as
``aifi.hub.db.make_engine`` sets it) and PostgreSQL from ``tests/peers``
(a throwaway cluster on loopback), measured twice: durability off as the
tests run it, and ``fsync``/``synchronous_commit`` on as a real hub runs.

    .venv/bin/python bench/audit_appends.py [--seconds 5] [--hospitals 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO, use_test_peers

OLD_COMMIT = "f090bbb"
"""The last commit with the single-chain store."""

STORES = (
    "single chain (before 0008)",
    "one chain, new code",
    "chain per hospital",
    "per hospital, outbox (0012)",
)
"""The old store; today's store with every event in one chain (what the code alone
changed); today's store, one chain per hospital, appended directly; and as the hub
writes a change's event since schema 0012: recorded pending in a transaction of its
own (standing for the change's) and sealed right after its commit."""


def _old_store_module() -> types.ModuleType:
    """The single-chain store and its tables as of :data:`OLD_COMMIT`, as one module."""
    module = types.ModuleType("old_audit_store")
    for path in ("src/aifi/audit/tables.py", "src/aifi/audit/store.py"):
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        exec(compile(source, f"{OLD_COMMIT}:{path}", "exec"), module.__dict__)
    return module


def _log(store: str, engine: Any) -> Any:
    """The audit log of ``store`` kind on ``engine``, its tables created."""
    from sqlalchemy import MetaData

    if store == STORES[0]:
        old = _old_store_module()
        metadata = MetaData()
        tables = old.define_audit_tables(metadata)
        metadata.create_all(engine, checkfirst=True)
        return old.SqlAuditLog(engine, tables)
    from aifi.audit.store import SqlAuditLog
    from aifi.hub.auditing import audit_log
    from aifi.hub.db import is_transient
    from aifi.hub.models import AUDIT_TABLES

    for table in (AUDIT_TABLES.events, AUDIT_TABLES.head, AUDIT_TABLES.pending):
        assert table is not None
        table.create(engine, checkfirst=True)
    if store == STORES[1]:
        return SqlAuditLog(engine, AUDIT_TABLES, transient=is_transient)
    return audit_log(engine)


def _worker(url: str, store: str, hospitals: int, seconds: float, barrier: Any, out: Any) -> None:
    """One process: append for ``seconds``; put the append latencies (s) on ``out``."""
    from aifi.hub.db import make_engine

    engine = make_engine(url)
    log = _log(store, engine)
    ids = [f"h{n:03d}" for n in range(hospitals)]
    rng = random.Random()
    latencies: list[float] = []
    barrier.wait()
    end = time.perf_counter() + seconds
    outbox = store == STORES[3]
    while (start := time.perf_counter()) < end:
        event: dict[str, Any] = {
            "actor": "bench",
            "hospital": rng.choice(ids),
            "task": f"{rng.getrandbits(64):016x}",
            "algorithm": "integrity-check",
            "algorithm_version": "1.0.0",
            "detail": {"instances": 4, "bytes": 2_000_000},
        }
        if outbox:  # the change's transaction writes the event; sealed after its commit
            with engine.begin() as connection:
                pending = log.record(connection, "task.created", **event)
            log.seal([pending])
        else:
            log.append("task.created", **event)
        latencies.append(time.perf_counter() - start)
    engine.dispose()
    out.put(latencies)


@dataclass
class Row:
    backend: str
    store: str
    processes: int
    appends: int
    seconds: float
    p50_ms: float
    p99_ms: float
    intact: bool

    @property
    def per_s(self) -> float:
        return self.appends / self.seconds


def _measure(url: str, store: str, processes: int, args: argparse.Namespace, backend: str) -> Row:
    from aifi.hub.db import make_engine

    engine = make_engine(url)
    _log(store, engine)  # tables made once, before the processes race to make them
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(url, store, args.hospitals, args.seconds, barrier, out))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    latencies: list[float] = []
    for _ in workers:
        latencies += out.get(timeout=args.seconds + 300)
    for w in workers:
        w.join()
    log = _log(store, engine)
    recorded = sum(1 for _ in log.events(action="task.created"))
    intact = log.verify() == [] and recorded == len(latencies)
    engine.dispose()
    cuts = statistics.quantiles(latencies, n=100)
    return Row(
        backend, store, processes, len(latencies), args.seconds, cuts[49] * 1e3, cuts[98] * 1e3,
        intact,
    )  # fmt: skip


@contextmanager
def _sqlite() -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="aifi-audit-bench-") as folder:
        counter = iter(range(1000))
        yield lambda: f"sqlite:///{folder}/audit-{next(counter)}.sqlite"


@contextmanager
def _postgres(durable: bool) -> Iterator[Any]:
    use_test_peers()
    from peers.postgres import start_postgres

    with start_postgres() as cluster:
        if durable:
            with cluster.connect() as connection:
                for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                    connection.execute(f"ALTER SYSTEM SET {setting} = on")
                connection.execute("SELECT pg_reload_conf()")
        yield lambda: cluster.url(cluster.create_database())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--hospitals", type=int, default=20)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument(
        "--backends", default="sqlite,postgresql,postgresql-durable", help="comma-separated"
    )
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.processes.split(",")]
    use_test_peers()
    from peers.postgres import postgres_bin

    rows: list[Row] = []
    for backend in args.backends.split(","):
        if backend.startswith("postgresql") and postgres_bin() is None:
            print(f"{backend}: skipped, PostgreSQL server binaries not found", file=sys.stderr)
            continue
        urls = _sqlite() if backend == "sqlite" else _postgres(backend.endswith("durable"))
        with urls as new_url:
            for processes in counts:
                for store in STORES:
                    row = _measure(new_url(), store, processes, args, backend)
                    rows.append(row)
                    print(
                        f"  {backend} {store} x{processes}: {row.per_s:,.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
    print(_table(rows, args))
    return 0 if all(r.intact for r in rows) else 1


def _table(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"{args.hospitals} hospitals, {args.seconds:g} s per run, one appending thread per process",
        f"{'backend':<20} {'procs':>5} {'store':<27} {'appends/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'vs single':>9} {'verified':>8}",
        "-" * 102,
    ]
    for row in rows:
        old = next(
            r for r in rows
            if (r.backend, r.processes, r.store) == (row.backend, row.processes, STORES[0])
        )  # fmt: skip
        lines.append(
            f"{row.backend:<20} {row.processes:>5} {row.store:<27} {row.per_s:>10,.0f} "
            f"{row.p50_ms:>8.2f} {row.p99_ms:>8.2f} {row.per_s / old.per_s:>8.2f}x "
            f"{'yes' if row.intact else 'NO':>8}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
