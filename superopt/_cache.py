"""The tuning cache: measured runtimes and finished optimizations, in SQLite.

One file, `cache_dir()/superopt.sqlite`, in WAL mode with a busy timeout so that several
processes (a benchmark sweep, a notebook, `superopt collect`) can share it. A `meta` table
marks the file as superopt's and records its schema version. Measurements are keyed by a
hash of the program together with the backend, device kind and library versions, because a
timing taken anywhere else says nothing about this machine.

A file that is not superopt's (random bytes, another application's database, a newer
schema) is never written to: opening it raises `CacheError` and leaves it byte-for-byte as
it was.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ._errors import CacheError

SCHEMA_VERSION = 1
FILENAME = "superopt.sqlite"
APPLICATION = "superopt"
_BUSY_TIMEOUT_S = 30.0
_SQLITE_MAGIC = b"SQLite format 3\x00"

_TABLES: dict[str, str] = {
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "measurements": (
        "CREATE TABLE IF NOT EXISTS measurements ("
        "id INTEGER PRIMARY KEY, key TEXT NOT NULL, program_key TEXT NOT NULL, "
        "variant_label TEXT NOT NULL, backend TEXT NOT NULL, device_kind TEXT NOT NULL, "
        "versions TEXT NOT NULL, median_s REAL NOT NULL, spread REAL NOT NULL, "
        "n INTEGER NOT NULL, created REAL NOT NULL)"
    ),
    "results": (
        "CREATE TABLE IF NOT EXISTS results ("
        "key TEXT PRIMARY KEY, payload TEXT NOT NULL, created REAL NOT NULL)"
    ),
}
_COLUMNS: dict[str, set[str]] = {
    "meta": {"key", "value"},
    "measurements": {
        "id", "key", "program_key", "variant_label", "backend", "device_kind", "versions",
        "median_s", "spread", "n", "created",
    },
    "results": {"key", "payload", "created"},
}  # fmt: skip
_INDEXES = ("CREATE INDEX IF NOT EXISTS measurements_by_key ON measurements (key)",)

_NOT_OURS_MSG = (
    "{path} is not superopt's tuning cache: {why}. superopt has left it untouched. "
    "Move or delete the file if it is a stale cache, or point superopt at another folder, "
    "e.g. `export SUPEROPT_CACHE_DIR=~/.cache/superopt-new`, or pass a different path to "
    "`TuningCache(path)`."
)
_NEWER_MSG = (
    "{path} was written by a newer superopt (cache schema version {found}; this superopt "
    "reads version {ours}). Upgrade superopt, or point it at another folder with "
    "`export SUPEROPT_CACHE_DIR=...`. The file has been left untouched."
)
_OLDER_MSG = (
    "{path} holds superopt cache schema version {found}, which this superopt (version {ours}) "
    "cannot read. Delete the file (it only holds cached measurements and results), or point "
    "superopt at another folder with `export SUPEROPT_CACHE_DIR=...`."
)


def cache_dir() -> Path:
    """The folder of the tuning cache.

    `$SUPEROPT_CACHE_DIR` when set, else `$XDG_CACHE_HOME/superopt`, else
    `~/.cache/superopt`. The folder is not created here.

    **Returns:**

    The folder as an absolute `Path`.
    """
    explicit = os.environ.get("SUPEROPT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "superopt").absolute()


@functools.cache
def environment() -> dict[str, Any]:
    """The backend, device kind and library versions that measurements depend on."""
    import importlib.metadata

    import jax
    import jaxlib

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "egglog": version("egglog"),
            "superopt": version("superopt"),
        },
    }


def record_key(program_key: str) -> str:
    """A key for `program_key` on this backend, device kind and library versions.

    **Arguments:**

    - `program_key`: the canonical key of a program (`Program.canonical_key()`), or any
        string that identifies what was optimized.

    **Returns:**

    A hex SHA-256 digest; equal only for the same program in the same environment.
    """
    blob = json.dumps({"program": program_key, **environment()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Measurement:
    """One stored timing of one variant of a program.

    **Arguments:**

    - `key`: the record key (program plus environment, see `record_key`).
    - `program_key`: the program's canonical key.
    - `variant_label`: which variant was timed (e.g. `"reference"`, a rewrite label).
    - `backend`, `device_kind`: where it was timed.
    - `versions`: library versions at the time.
    - `median_s`, `spread`, `n`: the timing summary (see `superopt.Timing`).
    - `created`: Unix time of the measurement.
    """

    key: str
    program_key: str
    variant_label: str
    backend: str
    device_kind: str
    versions: dict[str, str] = field(hash=False)
    median_s: float
    spread: float
    n: int
    created: float


@dataclass(frozen=True)
class CacheEntry:
    """A one-line summary of a group of cache rows, as `superopt cache ls` shows it.

    **Arguments:**

    - `kind`: `"result"` or `"measurements"`.
    - `key`: the record key.
    - `created`: Unix time of the newest row in the group.
    - `summary`: a readable description.
    """

    kind: str
    key: str
    created: float
    summary: str


class TuningCache:
    """The SQLite database of measurements and finished optimizations.

    ```python
    with superopt.TuningCache() as cache:
        cache.put_measurement(program.canonical_key(), "reference", 1.2e-3, spread=0.04, n=20)
        print(cache.measurements(program.canonical_key()))
    ```

    **Arguments:**

    - `path`: the database file, or a folder to hold `superopt.sqlite`; by default
        `cache_dir()/superopt.sqlite`. Missing folders are created.

    **Raises:**

    `CacheError` if the file is not a superopt cache (corrupt, another application's,
    or written by a newer superopt), or cannot be opened; the file is left untouched.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            path = cache_dir() / FILENAME
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / FILENAME
        self.path = path.absolute()
        self._conn: sqlite3.Connection | None = _open(self.path)

    # -- plumbing -------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CacheError(f"the tuning cache at {self.path} is closed; open a new TuningCache")
        return self._conn

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.DatabaseError as err:
            raise CacheError(
                f"the tuning cache at {self.path} failed ({err}); if this persists, delete "
                "the file or point SUPEROPT_CACHE_DIR elsewhere"
            ) from err

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> TuningCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TuningCache({str(self.path)!r})"

    # -- measurements ---------------------------------------------------------------------

    def record_key(self, program_key: str) -> str:
        """See the module function `record_key`."""
        return record_key(program_key)

    def put_measurement(
        self,
        program_key: str,
        variant_label: str,
        median_s: float,
        *,
        spread: float = 0.0,
        n: int = 1,
    ) -> None:
        """Store a timing of one variant of a program, measured in this environment.

        **Arguments:**

        - `program_key`: the program's canonical key.
        - `variant_label`: which variant was timed.
        - `median_s`: median seconds per call.
        - `spread`: `(p75 - p25) / median` of the timed calls.
        - `n`: how many calls the median is over.
        """
        env = environment()
        self._execute(
            "INSERT INTO measurements (key, program_key, variant_label, backend, device_kind, "
            "versions, median_s, spread, n, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record_key(program_key),
                program_key,
                variant_label,
                env["backend"],
                env["device_kind"],
                json.dumps(env["versions"], sort_keys=True),
                float(median_s),
                float(spread),
                int(n),
                time.time(),
            ),
        )

    def measurements(
        self, program_key: str, *, all_environments: bool = False
    ) -> list[Measurement]:
        """The stored timings of a program, oldest first.

        **Arguments:**

        - `program_key`: the program's canonical key.
        - `all_environments`: also return timings taken on other backends, devices or
            library versions (by default only this environment's, the only ones that are
            comparable with a timing taken now).

        **Returns:**

        A list of `Measurement`s.
        """
        if all_environments:
            where, arg = "program_key = ?", program_key
        else:
            where, arg = "key = ?", record_key(program_key)
        rows = self._execute(
            "SELECT key, program_key, variant_label, backend, device_kind, versions, median_s, "
            f"spread, n, created FROM measurements WHERE {where} ORDER BY created, id",
            (arg,),
        ).fetchall()
        return [Measurement(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), *r[6:]) for r in rows]

    # -- results --------------------------------------------------------------------------

    def put_result(self, key: str, payload: dict[str, Any]) -> None:
        """Store (or replace) the JSON payload of a finished optimization.

        **Arguments:**

        - `key`: usually `record_key(program.canonical_key())` plus the options used.
        - `payload`: a JSON-serialisable dict.
        """
        try:
            text = json.dumps(payload, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise CacheError(
                f"the result for key {key!r} cannot be stored: its payload is not JSON "
                f"serialisable ({err}); store plain dicts, lists, strings and numbers"
            ) from err
        self._execute(
            "INSERT OR REPLACE INTO results (key, payload, created) VALUES (?, ?, ?)",
            (key, text, time.time()),
        )

    def get_result(self, key: str) -> dict[str, Any] | None:
        """The payload stored under `key`, or `None` when there is none.

        A payload that no longer parses is treated as missing: a cache miss costs time,
        never correctness.
        """
        row = self._execute("SELECT payload FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            payload = json.loads(row[0])
        except json.JSONDecodeError:
            return None
        return payload if isinstance(payload, dict) else None

    # -- housekeeping ---------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """One summary per stored result and per program's group of measurements.

        **Returns:**

        `CacheEntry`s, newest first.
        """
        out: list[CacheEntry] = []
        for key, size, created in self._execute(
            "SELECT key, length(payload), created FROM results"
        ).fetchall():
            out.append(CacheEntry("result", key, created, f"optimization result, {size} bytes"))
        for key, program_key, backend, device, count, variants, best, created in self._execute(
            "SELECT key, program_key, backend, device_kind, count(*), "
            "count(DISTINCT variant_label), min(median_s), max(created) "
            "FROM measurements GROUP BY key"
        ).fetchall():
            short = program_key if len(program_key) <= 40 else program_key[:37] + "..."
            out.append(
                CacheEntry(
                    "measurements",
                    key,
                    created,
                    f"{count} timing(s) of {variants} variant(s) on {backend}/{device}, "
                    f"best median {best:.3g} s; program {short}",
                )
            )
        out.sort(key=lambda e: e.created, reverse=True)
        return out

    def clear(self) -> int:
        """Delete every measurement and result (the file and its `meta` stay).

        **Returns:**

        The number of rows deleted.
        """
        db = self._db
        try:
            with _transaction(db):
                deleted = db.execute("DELETE FROM measurements").rowcount
                deleted += db.execute("DELETE FROM results").rowcount
        except sqlite3.DatabaseError as err:
            raise CacheError(f"clearing the tuning cache at {self.path} failed ({err})") from err
        return deleted


class _transaction:
    """`BEGIN IMMEDIATE ... COMMIT` on an autocommit connection (rollback on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _open(path: Path) -> sqlite3.Connection:
    """Open or create the cache at `path`, refusing any file that is not superopt's."""
    if path.exists() and path.stat().st_size > 0:
        _check_foreign_file(path)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(
                f"cannot create the tuning cache folder {path.parent} ({err}); point "
                "SUPEROPT_CACHE_DIR at a writable folder"
            ) from err
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as err:
        raise CacheError(
            f"cannot open the tuning cache at {path} ({err}); point SUPEROPT_CACHE_DIR at a "
            "writable folder"
        ) from err
    try:
        # Check again under the write lock: another process may have created the file
        # since the read-only look, and only then is it safe to switch it to WAL.
        with _transaction(conn):
            if not _validate(conn, path):
                for sql in (*_TABLES.values(), *_INDEXES):
                    conn.execute(sql)
                conn.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                )
        _enable_wal(conn, path)
    except sqlite3.Error as err:
        conn.close()
        raise CacheError(
            f"cannot set up the tuning cache at {path} ({err}); if this persists, move or "
            "delete the file, or point SUPEROPT_CACHE_DIR elsewhere"
        ) from err
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            # Switching journal mode needs a moment with no other connection mid-write;
            # it does not wait on the busy handler, so retry here.
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise CacheError(
                    f"cannot switch the tuning cache at {path} to WAL ({err})"
                ) from err
            time.sleep(0.01)


def _check_foreign_file(path: Path) -> None:
    """Look at an existing file without writing to it: header, then a read-only open."""
    try:
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
    except OSError as err:
        raise CacheError(f"cannot read the tuning cache at {path} ({err})") from err
    if header != _SQLITE_MAGIC:
        raise CacheError(
            _NOT_OURS_MSG.format(path=path, why="it is not an SQLite database (corrupt or foreign)")
        )
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise CacheError(f"cannot open the tuning cache at {path} read-only ({err})") from err
    try:
        _validate(conn, path)
    except sqlite3.OperationalError as err:
        # A WAL database whose -shm file cannot be created read-only: the checks are
        # repeated under the write lock in `_open`, before anything is written.
        if "unable to open" not in str(err) and "readonly" not in str(err):
            raise CacheError(f"cannot read the tuning cache at {path} ({err})") from err
    finally:
        conn.close()


def _validate(conn: sqlite3.Connection, path: Path) -> bool:
    """Whether `conn` holds superopt's schema (`False`: an empty database to set up).

    Raises `CacheError` for anything else; reads only.
    """
    try:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as err:
        raise CacheError(
            _NOT_OURS_MSG.format(path=path, why=f"SQLite cannot read it ({err})")
        ) from err
    if not tables:
        return False
    if "meta" not in tables:
        listed = ", ".join(sorted(tables))
        raise CacheError(
            _NOT_OURS_MSG.format(path=path, why=f"it has tables ({listed}) but no superopt meta")
        )
    if _columns(conn, "meta") != _COLUMNS["meta"]:
        raise CacheError(_NOT_OURS_MSG.format(path=path, why="its meta table is another's"))
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("application") != APPLICATION:
        why = f"its meta table names application {meta.get('application')!r}"
        raise CacheError(_NOT_OURS_MSG.format(path=path, why=why))
    try:
        found = int(meta.get("schema_version", ""))
    except ValueError:
        why = f"its schema_version {meta.get('schema_version')!r} is not a number"
        raise CacheError(_NOT_OURS_MSG.format(path=path, why=why)) from None
    if found > SCHEMA_VERSION:
        raise CacheError(_NEWER_MSG.format(path=path, found=found, ours=SCHEMA_VERSION))
    if found < SCHEMA_VERSION:
        raise CacheError(_OLDER_MSG.format(path=path, found=found, ours=SCHEMA_VERSION))
    extra = tables - set(_TABLES)
    if extra:
        why = f"it also holds tables superopt does not own ({', '.join(sorted(extra))})"
        raise CacheError(_NOT_OURS_MSG.format(path=path, why=why))
    for table in tables:
        if _columns(conn, table) != _COLUMNS[table]:
            why = f"its {table} table has columns superopt does not write"
            raise CacheError(_NOT_OURS_MSG.format(path=path, why=why))
    # Tables missing from an otherwise valid file are created by the caller.
    return tables == set(_TABLES)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
