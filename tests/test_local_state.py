"""The embedded model's state around the server: no wait for a zombie, stale folders pruned (no model needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_dspex.lm.local import embedded as local_lm


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are read from /proc")
def test_an_exited_server_not_yet_reaped_by_the_worker_that_started_it_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(200):  # until it has exited (a zombie: nobody has reaped it)
            if Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                break
            time.sleep(0.05)
        assert not local_lm._pid_alive(child.pid)
        assert local_lm._pid_alive(os.getpid())
    finally:
        child.wait()
    assert not local_lm._pid_alive(child.pid)


def test_stop_server_of_another_process_does_not_wait_for_its_zombie(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # a server started by "a worker" (here: a child of ours we do not reap while stop_server runs)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    state = local_lm._state_dir("run-x")
    (state / "server.json").write_text(json.dumps({"pid": child.pid, "owner": os.getpid(), "url": "http://127.0.0.1:9/v1"}))
    polls = []
    real_sleep = time.sleep
    monkeypatch.setattr(local_lm.time, "sleep", lambda s: (polls.append(s), real_sleep(s)))
    try:
        local_lm.stop_server("run-x")
        # stopped by SIGTERM, and found gone while still a zombie: no SIGKILL after the full wait
        assert child.poll() is not None or not local_lm._pid_alive(child.pid)
        assert sum(polls) < 2.0
        assert not state.exists()
    finally:
        child.kill()
        child.wait()


def test_the_next_run_prunes_folders_of_runs_that_were_killed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "pytest-dspex-local"
    killed = root / "killed-run"
    killed.mkdir(parents=True)
    (killed / "server.json").write_text(json.dumps({"pid": dead.pid, "owner": dead.pid, "url": "x"}))
    (killed / "server.log").write_text("log")
    running = root / "running-run"
    running.mkdir()
    (running / "server.json").write_text(json.dumps({"pid": dead.pid, "owner": os.getpid(), "url": "x"}))
    starting = root / "starting-run"  # no state file yet: a run starting its server right now
    starting.mkdir()
    old = root / "old-unfinished"
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    local_lm._prune_stale(root, keep="mine")
    assert sorted(p.name for p in root.iterdir()) == ["running-run", "starting-run"]


def test_the_state_folder_is_private_to_the_user(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    state = local_lm._state_dir("run-y")
    assert state.parent == tmp_path / "pytest-dspex" / "local"
    for folder in (state.parent, tmp_path / "pytest-dspex"):
        assert folder.stat().st_mode & 0o077 == 0
    # a symlink planted where the folder goes is refused, never followed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    (tmp_path / "other").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "other" / "pytest-dspex").symlink_to(tmp_path / "elsewhere")
    assert local_lm._local_root().parent != tmp_path / "other" / "pytest-dspex"


def test_the_server_asks_for_huge_pages_and_keeps_the_users_own_glibc_tunables(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert local_lm.server_env(1)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # the user's own, kept
    assert local_lm.server_env(1)["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")  # the user said no
    assert local_lm.server_env(1)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"
