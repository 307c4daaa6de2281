"""The node's memory, in SQLite under ``--state``: the last change of Orthanc's feed that was read, and each series'
state, so that a restarted node resumes where it stopped and never processes or forwards a series twice.

States: ``pending`` (seen stable, not yet handled) -> ``processing`` -> ``done`` (derived series uploaded) ->
``forwarding`` (an Orthanc store job runs) -> ``forwarded``; or ``skipped`` / ``failed`` / ``forward_failed``, each
with its reason; or ``held`` (uploaded, a slice flagged by the checks, not forwarded until released). A series left
``processing`` by a stopped node is picked up again at the next start.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from mdrn_edge.errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id TEXT PRIMARY KEY,             -- Orthanc's series id
    state TEXT NOT NULL,
    reason TEXT,
    derived_id TEXT,                 -- Orthanc's id of the derived series
    job_id TEXT,                     -- Orthanc's store job forwarding it
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    first_failed REAL,               -- when its forward first failed: retries span --retry-window from there
    description TEXT                 -- its SeriesDescription, to name it in every line
);
"""
TODO = ("pending", "processing")


class NodeState:
    """One node's state folder: ``node.sqlite``, ``audit.jsonl`` and ``work/`` (downloads and outputs of the
    series in hand). A lock file keeps a second node from sharing it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.work = self.folder / "work"
        self.work.mkdir(exist_ok=True)
        self._lock = open(self.folder / "node.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise InputError(f"{self.folder}: another mdrn-node uses this --state folder; give each node its own") from None
        self.db = sqlite3.connect(self.folder / "node.sqlite", isolation_level=None)  # each statement commits
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(series)")}
        for column, kind in (("first_failed", "REAL"), ("description", "TEXT")):  # a state an older node wrote
            if column not in columns:
                self.db.execute(f"ALTER TABLE series ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.db.close()
        self._lock.close()

    @property
    def is_new(self) -> bool:
        """No change of the feed was ever read into this state (a new or lost --state folder)."""
        return self.db.execute("SELECT 1 FROM meta WHERE key = 'last_change'").fetchone() is None

    def retry_failed(self) -> dict[str, int]:
        """Failed forwards are forwarded again, failed series processed again: ``{"forwards", "series"}``."""
        with self.db:
            self.db.execute("BEGIN")
            forwards = self.db.execute("UPDATE series SET state = 'done', job_id = NULL, attempts = 0, first_failed = "
                                       "NULL, reason = NULL WHERE state = 'forward_failed'").rowcount
            series = self.db.execute("UPDATE series SET state = 'pending', reason = NULL WHERE state = 'failed'").rowcount
        return {"forwards": forwards, "series": series}

    def release_held(self) -> int:
        """Held series (flagged, reviewed by a person) become ``done``, so the node forwards them; returns how many."""
        return self.db.execute("UPDATE series SET state = 'done', job_id = NULL, reason = NULL WHERE state = 'held'").rowcount

    @property
    def last_change(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'last_change'").fetchone()
        return int(row["value"]) if row else 0

    def record_changes(self, series_ids: list[str], last: int) -> None:
        """New stable series become pending and the feed position advances, in one transaction: a crash between
        the two can neither lose a series nor see one twice."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO series (id, state, updated) VALUES (?, 'pending', ?)",
                                [(sid, now) for sid in series_ids])
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_change', ?)", (str(last),))

    def set(self, series_id: str, state: str, **fields: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE series SET state = ?, updated = ?{', ' + names if names else ''} WHERE id = ?",
                        (state, time.time(), *fields.values(), series_id))

    def get(self, series_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM series WHERE id = ?", (series_id,)).fetchone()
        return dict(row) if row else None

    def in_state(self, *states: str) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(states))
        return [dict(r) for r in self.db.execute(f"SELECT * FROM series WHERE state IN ({marks}) ORDER BY rowid", states)]

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.db.execute("SELECT state, COUNT(*) AS n FROM series GROUP BY state")}

    def audit(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``audit.jsonl`` (series, model, timings, outcome)."""
        with open(self.folder / "audit.jsonl", "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}) + "\n")
