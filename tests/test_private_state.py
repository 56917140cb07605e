"""Locks, compile markers and xdist hand-off files are private to the user and the project (issue 19).

Before: ``<tmp>/pytest-dspex-locks/<sha256(path)[:24]>.compiled|.lock``, shared by every user of the
machine and written with ``write_text`` (following symlinks): another user's planted symlink made the
victim's ``--dspex-compile`` overwrite the link's target with a run id.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from pytest_dspex._support.private import private_dir, read_private, write_private
from pytest_dspex.errors import ConfigError
from pytest_dspex.testing.fake_server import FakeLMServer, triage_responder

from .test_plugin import MODES
from .test_plugin_verdicts import DATASET_TEST, EACH_TEST, dev_rows


def test_a_private_dir_is_0700_and_narrowed_when_wider(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "state")
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    os.chmod(d, 0o777)
    private_dir(d)
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700


def test_a_symlink_or_a_file_is_never_taken_for_the_private_dir(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ConfigError, match="found a symlink"):
        private_dir(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="found a file"):
        private_dir(tmp_path / "file")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a folder to another user"
)
def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o777)
    os.chown(d, 12345, 12345)
    with pytest.raises(ConfigError, match="belongs to another user"):
        private_dir(d)


def test_private_files_never_write_or_read_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    marker = tmp_path / "abc.compiled"
    marker.symlink_to(victim)
    assert read_private(marker) is None  # not followed
    write_private(marker, "run-id")
    assert victim.read_text() == "precious"
    assert not marker.is_symlink() and read_private(marker) == "run-id"
    assert stat.S_IMODE(os.lstat(marker).st_mode) == 0o600


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def test_compile_keeps_its_locks_in_the_projects_private_folder_not_in_tmp(
    pytester: pytest.Pytester, server_factory: Any, mode: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server: FakeLMServer = server_factory(triage_responder)
    shared_tmp = tmp_path / "shared-tmp"
    shared_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    each = "@pytest.mark.dspex_program" + EACH_TEST.split("@pytest.mark.dspex_program", 1)[1]
    source = (DATASET_TEST + "\n" + each).replace('name="triage")', 'name="triage", trainset="data/dev.jsonl")')
    source = source.replace("THRESHOLD", "0.4")  # both test modes
    pytester.makefile(".jsonl", **{"data/dev": dev_rows(8)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=source)
    golden = pytester.path / "__dspex__/test_triage/triage.json"
    # what another user of the machine planted in the old shared folder: a link to the victim's file
    victim = pytester.path / "victim.txt"
    victim.write_text("precious")
    digest = hashlib.sha256(str(golden.resolve()).encode()).hexdigest()[:24]
    (shared_tmp / "pytest-dspex-locks").mkdir(mode=0o777)
    (shared_tmp / "pytest-dspex-locks" / f"{digest}.compiled").symlink_to(victim)
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-compile", "--dspex-candidates=0", *mode, timeout=300,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    assert victim.read_text() == "precious"
    state = pytester.path / ".pytest_cache/d/dspex"
    assert stat.S_IMODE(os.lstat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(state / "locks").st_mode) == 0o700
    names = sorted(p.name for p in (state / "locks").iterdir())
    assert names == [f"{digest}.compiled"]  # the lock's empty file went with its last holder (trial5 T5-9)
    assert not any(p.name.startswith(("chunks-", "usage-")) for p in state.iterdir())  # hand-off files removed
    assert sorted(p.name for p in shared_tmp.iterdir()) == ["pytest-dspex-locks"]  # nothing new in the shared tmp


# -- no empty lock file left behind (trial5 T5-9) ------------------------------------------------------
def test_a_golden_lock_leaves_no_file_and_stays_exclusive(tmp_path: Path) -> None:
    import threading

    from filelock import Timeout

    from pytest_dspex.golden.store import GoldenStore, _locks

    golden = tmp_path / "__dspex__" / "test_x" / "p.json"
    one = GoldenStore(tmp_path / "__dspex__", state_dir=tmp_path / "state")
    with one.lock(golden):
        with one.lock(golden):  # re-entrant: the inner end removes nothing
            pass
        assert list((tmp_path / "state" / "locks").iterdir())
    assert list((tmp_path / "state" / "locks").iterdir()) == []
    # another process's lock on the same file: a FileLock of its own (not this process's shared object)
    key = next(k for k in _locks if k.startswith(str(tmp_path)))
    from filelock import FileLock

    from pytest_dspex.golden.store import _GoldenLock

    other = _GoldenLock(FileLock(key, timeout=5, thread_local=False), key)
    third = _GoldenLock(FileLock(key, timeout=0.3, thread_local=False), key)
    held = threading.Event()
    release = threading.Event()

    def wait_then_hold() -> None:
        with other:  # waits on the file the first holder then removes
            held.set()
            release.wait(5)

    with one.lock(golden):
        waiter = threading.Thread(target=wait_then_hold)
        waiter.start()
        assert not held.wait(0.3)  # it waits
    assert held.wait(5)  # the first let go: the waiter holds the lock now, on the file the path names
    with pytest.raises(Timeout), third:  # a newcomer still cannot take it
        pass
    release.set()
    waiter.join(5)
    assert list((tmp_path / "state" / "locks").iterdir()) == []


@pytest.mark.parametrize("mode", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist-2"])
def test_a_run_without_the_cache_provider_leaves_no_lock_file_in_the_users_state(
    pytester: pytest.Pytester, server_factory: Any, mode: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """trial5 T5-9: every run with -p no:cacheprovider left its goldens' empty ``.lock`` files in
    ``~/.cache/pytest-dspex/locks``; nothing removed them."""
    server: FakeLMServer = server_factory(triage_responder)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    each = "@pytest.mark.dspex_program" + EACH_TEST.split("@pytest.mark.dspex_program", 1)[1]
    source = (DATASET_TEST + "\n" + each).replace('name="triage")', 'name="triage", trainset="data/dev.jsonl")')
    pytester.makefile(".jsonl", **{"data/dev": dev_rows(8)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=source.replace("THRESHOLD", "0.4"))
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-compile", "--dspex-candidates=0", "-p", "no:cacheprovider", *mode, timeout=300,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert (pytester.path / "__dspex__/test_triage/triage.json").exists()
    locks = home / ".cache" / "pytest-dspex" / "locks"
    assert locks.is_dir()  # the run used it
    assert [p.name for p in locks.iterdir() if p.name.endswith(".lock")] == []
