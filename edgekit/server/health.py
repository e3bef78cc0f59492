"""`/healthz`: can this server read its database and can ingest write to it?

Two questions, each answered for real:

- reads: every table the server needs is queried. For SQLite the query runs on a fresh connection, since a
  long-lived connection may answer from its page cache while the file under it is damaged; a file that is
  no longer a database, or a missing table, fails the check.
- writes: a rolled-back write cannot find a full disk (SQLite and PostgreSQL only write at commit), so the
  server remembers the last failed ingest write, with its time. While one is remembered, each health check
  commits one tiny row (`server_health`) to see whether writing works again; the first success, from
  ingest or from this probe, clears it. For SQLite the free space of the database's file system is also
  checked, so a disk that is about to be full shows before a batch fails.

The answer is 200 `{"status": "ok"}` or 503 with `{"status": "unavailable", "problems": [...]}` naming
what is wrong.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from edgekit.server.storage import SCHEMA, Database

__all__ = ["TABLES", "HealthCheck"]

# Every table of the schema: ingest writes its quota, bundle and quarantine tables in the same transaction
# as the events, so a server that can read only the original five still fails every batch.
TABLES = tuple(
    match.group(1)
    for statement in SCHEMA
    if (match := re.match(r"\s*CREATE TABLE IF NOT EXISTS (\w+)", statement)) is not None
)
MIN_FREE_BYTES = 16 << 20  # bytes free under the SQLite file below which ingest is about to fail


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


class HealthCheck:
    """The server's health, from real queries and the remembered outcome of ingest writes."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock
        self._lock = threading.Lock()
        self._write_failure: tuple[float, str] | None = None

    # -- what ingest reports ---------------------------------------------------------------------------
    def write_failed(self, error: BaseException | str) -> None:
        """Remember that an ingest write failed now (kept until a write succeeds)."""
        text = error if isinstance(error, str) else _first_line(error)
        with self._lock:
            if self._write_failure is None:
                self._write_failure = (self._clock(), text)
            else:
                self._write_failure = (self._write_failure[0], text)  # since the first failure

    def write_succeeded(self) -> None:
        """Forget a remembered write failure."""
        with self._lock:
            self._write_failure = None

    # -- the check -------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """What is wrong now (empty when healthy). Blocking: run it off the event loop."""
        found: list[str] = []
        try:
            self._read_tables()
        except Exception as e:  # any failure to read is the answer, not an error of the check
            found.append(f"database: cannot query the tables the server needs ({_first_line(e)})")
            return found  # a write probe on a database that cannot be read says nothing more
        with self._lock:
            failure = self._write_failure
        if failure is not None:
            try:
                self._probe_write()
            except Exception as e:
                since, what = failure
                found.append(
                    f"ingest: cannot write to the database since {since:.0f} (unix time): {what}; "
                    f"a write just now failed too ({_first_line(e)})"
                )
            else:
                self.write_succeeded()
        if self._db.kind == "sqlite" and self._db.path is not None:
            try:
                stat = os.statvfs(self._db.path.parent)
                free = stat.f_bavail * stat.f_frsize
            except OSError as e:
                found.append(f"disk: cannot stat {self._db.path.parent} ({_first_line(e)})")
            else:
                if free < MIN_FREE_BYTES:
                    found.append(
                        f"disk: {free} bytes free under {self._db.path.parent}, fewer than {MIN_FREE_BYTES}; "
                        "ingest is about to fail: free space or move the database"
                    )
        return found

    def answer(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for /healthz."""
        found = self.problems()
        if not found:
            return 200, {"status": "ok"}
        return 503, {"status": "unavailable", "problems": found}

    def _read_tables(self) -> None:
        queries = [f"SELECT COUNT(*) FROM (SELECT 1 FROM {table} LIMIT 1) AS one" for table in TABLES]
        if self._db.kind == "sqlite" and self._db.path is not None:
            if not self._db.path.is_file():
                raise FileNotFoundError(f"{self._db.path} does not exist")
            connection = sqlite3.connect(str(self._db.path), timeout=5.0, isolation_level=None)
            try:
                for query in queries:
                    connection.execute(query).fetchall()
            finally:
                connection.close()
        else:
            for query in queries:
                self._db.execute(query)

    def _probe_write(self) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO server_health (name, time) VALUES ('write-probe', ?) "
                "ON CONFLICT (name) DO UPDATE SET time = excluded.time",
                (self._clock(),),
            )
