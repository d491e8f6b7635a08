"""The results store of a sweep: one SQLite file, one row per finished run.

A row is written once, in one transaction, after its run has ended; the run id is the primary
key, so a run is never counted twice, and a sweep killed at any moment leaves only whole rows.
``status`` is ``"finished"`` (``results`` is the run's results.json) or ``"failed"`` (the run
stopped with a clear error, such as a diverged loss; ``results`` holds ``error``):
a failure is an outcome of that configuration, reported, not retried.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from equiprune.errors import ConfigError
from equiprune.experiments.results import read_results

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    method      TEXT NOT NULL,
    point       TEXT NOT NULL,
    budget      REAL,
    seed        INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    status      TEXT NOT NULL,
    results     TEXT NOT NULL,
    finished_at TEXT NOT NULL
)
"""
COLUMNS = ["run_id", "label", "method", "point", "budget", "seed", "config_hash", "status", "results", "finished_at"]


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A parallel sweep's workers write rows concurrently: wait for the lock rather than fail.
        self._db = sqlite3.connect(self.path, timeout=120)
        try:
            with self._db:
                self._db.execute(SCHEMA)
            columns = [row[1] for row in self._db.execute("PRAGMA table_info(runs)")]
            if columns != COLUMNS:
                raise sqlite3.DatabaseError(f"its table 'runs' has the columns {columns}")
        except sqlite3.DatabaseError as exc:  # another file under the store's name: leave it as it is
            self._db.close()
            raise ConfigError(
                f"{self.path} is not an equiprune results store ({exc}); it was not changed. "
                "Point the command at the directory `equiprune sweep --out` wrote, or move that file away."
            ) from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def config_hash(self, run_id: str) -> str | None:
        row = self._db.execute("SELECT config_hash FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def add(self, run_id: str, *, label: str, method: str, point: str, budget: float | None, seed: int,
            config_hash: str, results: dict[str, Any], status: str = "finished") -> None:  # fmt: skip
        with self._db:  # one transaction: the row is there whole or not at all
            self._db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, label, method, point, budget, seed, config_hash, status, json.dumps(results),
                 time.strftime("%Y-%m-%dT%H:%M:%S")),
            )  # fmt: skip

    def forget(self, label: str) -> int:
        """Delete every row of ``label`` (to run that method again); returns how many went."""
        with self._db:
            return self._db.execute("DELETE FROM runs WHERE label = ?", (label,)).rowcount

    def rows(self) -> list[dict[str, Any]]:
        cur = self._db.execute(
            "SELECT run_id, label, method, point, budget, seed, status, results FROM runs "
            "ORDER BY label, budget, point, seed"
        )
        return [
            {"run_id": r[0], "label": r[1], "method": r[2], "point": r[3], "budget": r[4], "seed": r[5],
             "status": r[6], "results": read_results(json.loads(r[7]))}
            for r in cur.fetchall()
        ]  # fmt: skip

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
