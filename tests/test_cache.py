"""The response cache on disk: only real damage is moved aside; permissions are clear errors;
read-only and replay modes never write."""

from __future__ import annotations

import os
import sqlite3

import pytest

import pytest_dspex as dspex
from pytest_dspex.lm.cache import DiskStorage

ANSWER = {"choices": [{"message": {"content": "billing"}}], "usage": {}}


def _filled(directory) -> None:
    cache = dspex.ResponseCache(directory)
    cache.set("k1", ANSWER)
    cache.flush()
    cache.close()


def _damage(directory) -> None:
    for db in directory.rglob("cache.db"):
        db.write_bytes(b"this is not sqlite" * 100)


def _snapshot(directory, *, data_only: bool = False) -> dict[str, bytes]:
    """Every file's bytes; ``data_only``: without SQLite's -wal/-shm companions (a reader's index)."""
    files = [p for p in directory.rglob("*") if p.is_file()]
    if data_only:
        files = [p for p in files if not p.name.endswith(("-shm", "-wal"))]
    return {str(p): p.read_bytes() for p in files}


def test_damage_is_moved_aside_under_a_unique_name_each_time(tmp_path):
    d = tmp_path / "c"
    asides = set()
    for _ in range(2):
        _filled(d)
        _damage(d)
        with pytest.warns(RuntimeWarning, match="unreadable"):
            cache = dspex.ResponseCache(d)
        assert cache.get("k1") is None  # a fresh, working cache
        cache.set("k1", ANSWER)
        cache.flush()
        cache.close()
        asides = {p.name for p in tmp_path.glob("c.corrupt-*")}
    assert len(asides) == 2
    assert all(name.startswith(f"c.corrupt-{os.getpid()}-") for name in asides)


@pytest.mark.parametrize(
    "error",
    [PermissionError(13, "Permission denied"), sqlite3.OperationalError("attempt to write a readonly database")],
)
def test_permission_and_read_only_errors_are_config_errors_and_nothing_is_moved(tmp_path, monkeypatch, error):
    d = tmp_path / "c"
    _filled(d)
    before = _snapshot(d)

    def refuse(self):
        raise error

    monkeypatch.setattr(DiskStorage, "_try_open", refuse)
    with pytest.raises(dspex.ConfigError, match=f"LM cache directory {d} cannot be used.*permissions"):
        dspex.ResponseCache(d)
    assert _snapshot(d) == before and not list(tmp_path.glob("c.corrupt-*"))


def test_replay_and_read_only_never_write(tmp_path):
    d = tmp_path / "c"
    _filled(d)
    before = _snapshot(d, data_only=True)
    for mode in ("replay", "read-only"):
        cache = dspex.ResponseCache(d, mode)
        assert cache.get("k1") == ANSWER
        cache.set("k2", ANSWER)
        cache.flush()
        cache.close()
    after = dspex.ResponseCache(d, "read-only")
    assert after.get("k2") is None and len(after) == 1
    after.close()
    assert _snapshot(d, data_only=True) == before  # not a byte of the cache written
    missing = tmp_path / "never-recorded"
    cache = dspex.ResponseCache(missing, "replay")
    with pytest.raises(dspex.CacheMissError, match="replay mode"):
        cache.miss("k1", "m")
    assert cache.get("k1") is None and not missing.exists()  # not even created


def test_a_damaged_cache_in_replay_mode_is_reported_and_left_alone(tmp_path):
    d = tmp_path / "c"
    _filled(d)
    _damage(d)
    before = _snapshot(d)
    with pytest.raises(dspex.ConfigError, match=f"LM cache at {d} is damaged.*'replay' never writes"):
        dspex.ResponseCache(d, "replay")
    assert _snapshot(d) == before and not list(tmp_path.glob("c.corrupt-*"))


def test_a_new_cache_folder_is_ignored_by_git_and_a_users_folder_is_left_alone(tmp_path):
    """As pytest does for ``.pytest_cache``: ``git add -A`` never commits the cache (issue 23)."""
    import subprocess

    d = tmp_path / ".dspex_cache"
    _filled(d)
    assert (d / ".gitignore").read_text().splitlines()[-1] == "*"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "kept.txt").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "-A"], check=True)
    staged = subprocess.run(["git", "-C", str(tmp_path), "diff", "--cached", "--name-only"], check=True, capture_output=True, text=True)
    assert staged.stdout.split() == ["kept.txt"]
    mine = tmp_path / "mine"
    mine.mkdir()
    _filled(mine)
    assert not (mine / ".gitignore").exists()  # a folder the user made is theirs


def test_answers_set_from_many_threads_are_all_on_disk_for_the_next_run(tmp_path):
    """The writer takes the entries waiting together (one transaction per shard): none is lost."""
    import threading

    cache = dspex.ResponseCache(tmp_path / "c")

    def fill(t: int) -> None:
        for i in range(50):
            cache.set(f"t{t}-{i}", {**ANSWER, "n": i})

    threads = [threading.Thread(target=fill, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cache.set("last", ANSWER)
    cache.flush()
    on_disk = DiskStorage(str(tmp_path / "c"))
    assert on_disk.get("last") is not None  # flushed: on disk before close
    on_disk.close()
    cache.close()
    replay = dspex.ResponseCache(tmp_path / "c", "replay")
    assert all(replay.get(f"t{t}-{i}") == {**ANSWER, "n": i} for t in range(8) for i in range(50))
    assert len(replay) == 401


def test_a_batch_the_storage_refuses_is_written_one_entry_at_a_time(tmp_path, monkeypatch):
    refused = []

    def refuse(self, items):
        refused.append(len(items))
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(DiskStorage, "set_many", refuse)
    cache = dspex.ResponseCache(tmp_path / "c")
    for i in range(20):
        cache.set(f"k{i}", ANSWER)
    cache.close()
    assert refused and sum(refused) <= 20  # the batch was tried, then each entry on its own
    replay = dspex.ResponseCache(tmp_path / "c", "replay")
    assert all(replay.get(f"k{i}") == ANSWER for i in range(20))


def test_a_writer_that_falls_behind_holds_at_most_max_pending_entries(tmp_path, monkeypatch):
    """Answers arriving faster than the disk takes them: the backlog stays bounded, nothing is lost."""
    import threading

    from pytest_dspex.lm import cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_PENDING", 16)
    gate = threading.Event()
    real = DiskStorage.set_many

    def slow(self, items):
        if threading.current_thread().name.startswith("dspex-cache"):
            gate.wait(5)  # the writer thread is stuck until every answer has been set
        real(self, items)

    monkeypatch.setattr(DiskStorage, "set_many", slow)
    cache = dspex.ResponseCache(tmp_path / "c")
    seen = []
    for i in range(200):
        cache.set(f"k{i}", {**ANSWER, "n": i})
        seen.append(len(cache._pending))
    gate.set()
    cache.close()
    assert max(seen) < 16
    replay = dspex.ResponseCache(tmp_path / "c", "replay")
    assert all(replay.get(f"k{i}") == {**ANSWER, "n": i} for i in range(200))
