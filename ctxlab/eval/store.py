"""Per-sample results in SQLite, committed one sample at a time, so a killed run loses at most the samples in flight.

Layout of a run directory:
    run.json               the run's settings and fingerprint (written once; `--resume` must match it)
    store/rank-<r>.sqlite  one shard per writing process (rank r of a torchrun job; a single process is rank 0)

Each shard has exactly one writer (its rank), so SQLite never sees concurrent writers (the "database is locked"
failures of other harnesses). WAL journal + synchronous=FULL: a committed sample survives SIGKILL (and power
loss); a half-written one is rolled back when the file is next opened. Samples are keyed by (task, sample id), not
by rank, and every shard present is read when a run resumes or is merged, so a resumed run may use a different
number of processes. `samples` are returned sorted by (task, index); a sample found in several shards (possible
only if two runs wrote the same directory at once) is kept once, from the lowest shard, and counted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.fileio import jsonable, write_json_atomic

SCHEMA_VERSION = 1
_DDL = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS samples ("
    " task TEXT NOT NULL, sample_id TEXT NOT NULL, idx INTEGER NOT NULL, sample_hash TEXT NOT NULL,"
    " record TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (task, sample_id))",
)


@dataclass(frozen=True)
class SampleRecord:
    """One finished sample. `prediction` is the task's parsed answer, `generation` the raw model text, `scores`
    the per-sample metric values (floats, or lists of sufficient statistics for corpus metrics)."""

    task: str
    sample_id: str
    index: int
    sample_hash: str  # sha256 of the task's unfitted prompt + reference: detects changed data on resume
    prompt_hash: str  # sha256 of the prompt actually sent (after fitting to the context)
    prediction: Any
    generation: str
    reference: Any
    scores: dict[str, Any]
    flops: float | None = None
    wall_s: float = 0.0
    prompt_tokens: int | None = None
    truncated_tokens: int = 0
    rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True, default=jsonable)

    @classmethod
    def from_json(cls, text: str) -> SampleRecord:
        return cls(**json.loads(text))


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        else:
            conn = sqlite3.connect(path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for ddl in _DDL:
                conn.execute(ddl)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            conn.commit()
    except sqlite3.DatabaseError as e:
        raise CtxlabError(f"{path}: not a usable results store ({e})") from None
    return conn


class Shard:
    """The writable shard of one rank. Use as a context manager or call close()."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = _connect(path, readonly=False)

    def put(self, rec: SampleRecord) -> bool:
        """Commit one sample (its own transaction). False if (task, id) was already stored (kept as it was)."""
        with self.conn:  # BEGIN ... COMMIT, or ROLLBACK on error
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                (rec.task, rec.sample_id, rec.index, rec.sample_hash, rec.to_json(), time.time()),
            )
        return cur.rowcount == 1

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Shard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Merged:
    records: list[SampleRecord]
    duplicates: int  # samples found in more than one shard (kept once)


class RunStore:
    """A run directory's store: shard files plus run.json."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.dir = self.out / "store"
        self.run_json = self.out / "run.json"

    def exists(self) -> bool:
        return self.run_json.is_file() or any(self.shards())

    def discard_if_empty(self, created_out: bool) -> None:
        """After a failed start: remove run.json and empty shards when no sample was stored, and the run directory
        itself when this run created it, so that nothing blocks a retry."""
        try:
            if any(True for _ in self.iter_records()):
                return
        except CtxlabError:
            return  # unreadable shards: leave them for the user to inspect
        for path in self.shards():
            for part in (path, *path.parent.glob(path.name + "-*")):  # the shard and its -wal / -shm files
                part.unlink(missing_ok=True)
        self.run_json.unlink(missing_ok=True)
        for d in (self.dir, self.out) if created_out else (self.dir,):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    def shards(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("rank-*.sqlite"), key=lambda p: int(p.stem.split("-")[1]))

    def shard(self, rank: int) -> Shard:
        return Shard(self.dir / f"rank-{rank}.sqlite")

    # -- run settings

    def read_run(self) -> dict[str, Any] | None:
        if not self.run_json.is_file():
            return None
        try:
            run = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CtxlabError(f"{self.run_json}: corrupt ({e}); move it away to start a new run") from None
        if not isinstance(run, dict) or not isinstance(run.get("settings"), dict):
            raise CtxlabError(f"{self.run_json}: not a run record (no settings); move it away to start a new run")
        return run

    def write_run(self, settings: dict[str, Any]) -> None:
        write_json_atomic(self.run_json, settings)

    # -- reading

    def iter_records(self) -> Iterator[tuple[int, SampleRecord]]:
        """(shard number, record) for every stored sample of every shard."""
        for path in self.shards():
            n = int(path.stem.split("-")[1])
            with closing(_connect(path, readonly=True)) as conn:
                try:
                    has_table = conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'samples'").fetchone()
                    # a writer killed while creating its shard leaves an empty file: nothing was stored there
                    rows = conn.execute("SELECT record FROM samples").fetchall() if has_table else []
                except sqlite3.DatabaseError as e:
                    raise CtxlabError(f"{path}: cannot read results ({e})") from None
            for (text,) in rows:
                yield n, SampleRecord.from_json(text)

    def done(self) -> dict[tuple[str, str], str]:
        """(task, sample id) → sample hash of every stored sample."""
        return {(r.task, r.sample_id): r.sample_hash for _, r in self.iter_records()}

    def merged(self) -> Merged:
        seen: dict[tuple[str, str], SampleRecord] = {}
        dup = 0
        for _, rec in self.iter_records():  # shards in rank order: the lowest shard wins
            key = (rec.task, rec.sample_id)
            if key in seen:
                dup += 1
                continue
            seen[key] = rec
        return Merged(sorted(seen.values(), key=lambda r: (r.task, r.index)), dup)
