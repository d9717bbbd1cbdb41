"""Tests of the tuning cache: round trips, environment keys, refusing foreign files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import superopt
from superopt import _cache
from superopt._cache import SCHEMA_VERSION, TuningCache, cache_dir, record_key


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(folder))
    return folder


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- where the cache lives --------------------------------------------------------------


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SUPEROPT_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "superopt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "superopt"
    assert superopt.cache_dir is cache_dir


def test_default_path_creates_folder_meta_and_wal(cache_home: Path):
    with TuningCache() as cache:
        assert cache.path == cache_home / "superopt.sqlite"
    assert cache.path.is_file()
    conn = sqlite3.connect(cache.path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    assert meta == {"application": "superopt", "schema_version": str(SCHEMA_VERSION)}
    assert mode == "wal"


def test_folder_path_and_reopen_keep_data(tmp_path: Path):
    with TuningCache(tmp_path) as cache:
        cache.put_result("k", {"x": 1})
    with TuningCache(tmp_path / "superopt.sqlite") as cache:
        assert cache.get_result("k") == {"x": 1}


def test_empty_file_is_set_up(tmp_path: Path):
    path = tmp_path / "empty.sqlite"
    path.touch()
    with TuningCache(path) as cache:
        cache.put_result("k", {})
        assert cache.get_result("k") == {}


# --- measurements and results -----------------------------------------------------------


def test_measurements_round_trip(cache_home: Path):
    with TuningCache() as cache:
        cache.put_measurement("prog-a", "reference", 2e-3, spread=0.05, n=20)
        cache.put_measurement("prog-a", "reassoc", 5e-4, spread=0.1, n=30)
        cache.put_measurement("prog-b", "reference", 1.0)
        rows = cache.measurements("prog-a")
    assert [(m.variant_label, m.median_s, m.spread, m.n) for m in rows] == [
        ("reference", 2e-3, 0.05, 20),
        ("reassoc", 5e-4, 0.1, 30),
    ]
    first = rows[0]
    assert first.key == record_key("prog-a")
    assert first.program_key == "prog-a"
    assert first.backend == "cpu" or first.backend  # whatever jax.default_backend() says
    assert set(first.versions) == {"jax", "jaxlib", "egglog", "superopt"}
    assert first.created > 0


def test_record_key_depends_on_program_and_environment(monkeypatch: pytest.MonkeyPatch):
    key = record_key("p")
    assert key == record_key("p") and key != record_key("q")
    assert len(key) == 64
    other = {**_cache.environment(), "device_kind": "TPU v9"}
    monkeypatch.setattr(_cache, "environment", lambda: other)
    assert record_key("p") != key


def test_measurements_from_another_environment_are_kept_apart(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
):
    with TuningCache() as cache:
        cache.put_measurement("prog", "reference", 1e-3)
        here = _cache.environment()
        monkeypatch.setattr(
            _cache, "environment", lambda: {**here, "backend": "gpu", "device_kind": "H100"}
        )
        cache.put_measurement("prog", "reference", 1e-4)
        assert [m.device_kind for m in cache.measurements("prog")] == ["H100"]
        monkeypatch.undo()
        assert [m.median_s for m in cache.measurements("prog")] == [1e-3]
        both = cache.measurements("prog", all_environments=True)
        assert sorted(m.backend for m in both) == sorted([here["backend"], "gpu"])


def test_results_round_trip_replace_and_miss(cache_home: Path):
    with TuningCache() as cache:
        assert cache.get_result("nope") is None
        cache.put_result("k", {"speedup": 1.5, "rewrites": [["assoc", "a", "b"]]})
        assert cache.get_result("k") == {"speedup": 1.5, "rewrites": [["assoc", "a", "b"]]}
        cache.put_result("k", {"speedup": 2.0})
        assert cache.get_result("k") == {"speedup": 2.0}
        with pytest.raises(superopt.CacheError, match="JSON"):
            cache.put_result("bad", {"f": object()})
        assert cache.get_result("bad") is None


def test_entries_and_clear(cache_home: Path):
    with TuningCache() as cache:
        assert cache.entries() == []
        cache.put_measurement("prog", "reference", 1e-3)
        cache.put_measurement("prog", "fused", 4e-4)
        cache.put_result("r", {"a": 1})
        entries = cache.entries()
        assert sorted(e.kind for e in entries) == ["measurements", "result"]
        (group,) = [e for e in entries if e.kind == "measurements"]
        assert "2 timing(s) of 2 variant(s)" in group.summary
        assert "0.0004" in group.summary
        assert cache.clear() == 3
        assert cache.entries() == []
        assert cache.clear() == 0
        path = cache.path
    assert path.is_file()
    with TuningCache() as cache:  # still a valid superopt cache after clearing
        assert cache.measurements("prog") == []


def test_closed_cache_raises(cache_home: Path):
    cache = TuningCache()
    cache.close()
    cache.close()
    with pytest.raises(superopt.CacheError, match="closed"):
        cache.get_result("k")


# --- files that are not superopt's ------------------------------------------------------


def _assert_refused(path: Path, match: str) -> None:
    before = _digest(path)
    with pytest.raises(superopt.CacheError, match=match) as info:
        TuningCache(path)
    message = str(info.value)
    assert str(path) in message
    assert "SUPEROPT_CACHE_DIR" in message
    assert _digest(path) == before


def test_corrupt_file_is_refused_untouched(cache_home: Path):
    cache_home.mkdir()
    path = cache_home / "superopt.sqlite"
    path.write_bytes(os.urandom(8192))
    _assert_refused(path, "not an SQLite database")
    assert sorted(p.name for p in cache_home.iterdir()) == ["superopt.sqlite"]


def test_truncated_sqlite_file_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "superopt.sqlite"
    with TuningCache(path) as cache:
        cache.put_result("k", {"x": 1})
    data = path.read_bytes()
    path.write_bytes(data[:100] + os.urandom(len(data) - 100))
    _assert_refused(path, "not superopt's")


def test_other_applications_database_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "app.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    _assert_refused(path, "users")


def test_other_applications_wal_database_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "app.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('application', 'otherapp')")
    conn.commit()
    conn.close()
    _assert_refused(path, "otherapp")


def test_superopt_meta_with_foreign_tables_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "superopt.sqlite"
    TuningCache(path).close()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()
    _assert_refused(path, "invoices")


def test_newer_schema_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "superopt.sqlite"
    with TuningCache(path) as cache:
        cache.put_result("k", {"x": 1})
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    _assert_refused(path, "newer superopt")


# --- several processes at once ----------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from superopt._cache import TuningCache
    worker = sys.argv[1]
    with TuningCache() as cache:
        for i in range(40):
            cache.put_measurement("shared-program", f"w{worker}-v{i}", 1e-3 + i * 1e-6, n=5)
            cache.put_result(f"w{worker}-{i}", {"i": i})
    """
)


def test_concurrent_processes_share_the_cache(cache_home: Path):
    env = {**os.environ, "SUPEROPT_CACHE_DIR": str(cache_home), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(w)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(3)
    ]
    with TuningCache() as cache:
        for i in range(40):
            cache.put_measurement("shared-program", f"parent-v{i}", 2e-3)
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    with TuningCache() as cache:
        assert len(cache.measurements("shared-program")) == 160
        assert cache.get_result("w2-39") == {"i": 39}
        assert len([e for e in cache.entries() if e.kind == "result"]) == 120
