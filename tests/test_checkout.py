"""Where a run was made (``reports.checkout``): HEAD's commit, and whether tracked files had changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pytest_dspex.reports.checkout import DirtyCheck, commit_text, git_commit, git_dirty

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="no git executable")


def _git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True, text=True).stdout


@needs_git
def test_only_a_change_to_a_tracked_file_is_uncommitted(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "prompt.py").write_text("INSTRUCTIONS = 'Route a message.'\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "x")
    sub = tmp_path / "tests"
    sub.mkdir()
    assert git_commit(sub) == _git(tmp_path, "rev-parse", "HEAD").strip()
    (sub / "scratch.txt").write_text("untracked\n")
    assert git_dirty(sub) is False  # an untracked file is not what ran
    os.utime(tmp_path / "prompt.py", (time.time() + 5, time.time() + 5))
    assert git_dirty(tmp_path) is False  # touched, the same content
    (tmp_path / "prompt.py").write_text("INSTRUCTIONS = 'Route a message!'\n")
    check = DirtyCheck(sub)  # asked now ...
    assert check.result() is True and check.result() is True  # ... answered later, once
    _git(tmp_path, "add", "prompt.py")
    assert git_dirty(tmp_path) is True  # staged, not committed
    assert not (tmp_path / ".git" / "index.lock").exists()


@needs_git
def test_a_linked_worktree_names_its_branchs_commit(tmp_path: Path) -> None:
    main = tmp_path / "main"
    main.mkdir()
    _git(main, "init", "-q")
    (main / "a.txt").write_text("a\n")
    _git(main, "add", "-A")
    _git(main, "commit", "-q", "-m", "x")
    _git(main, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "other")
    (tmp_path / "wt" / "b.txt").write_text("b\n")
    _git(tmp_path / "wt", "add", "-A")
    _git(tmp_path / "wt", "commit", "-q", "-m", "y")
    assert git_commit(tmp_path / "wt") == _git(tmp_path / "wt", "rev-parse", "HEAD").strip() != git_commit(main)
    _git(main, "pack-refs", "--all")  # the branch in packed-refs only
    assert git_commit(tmp_path / "wt") == _git(tmp_path / "wt", "rev-parse", "HEAD").strip()
    assert git_dirty(tmp_path / "wt") is False


def test_outside_a_checkout_or_without_git_it_is_not_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(a))
    assert git_commit(tmp_path) is None and git_dirty(tmp_path) is None
    assert calls == []  # no subprocess outside a checkout
    monkeypatch.undo()
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert git_commit(tmp_path) == "0123456789abcdef0123456789abcdef01234567"
    assert git_dirty(tmp_path) is None  # no git executable


@pytest.mark.skipif(os.name != "posix", reason="a shell script as git")
def test_a_git_that_does_not_answer_in_time_is_not_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    start = time.monotonic()
    assert git_dirty(tmp_path, timeout=0.2) is None
    assert time.monotonic() - start < 10
    fake.write_text("#!/bin/sh\necho 'fatal: detected dubious ownership' >&2\nexit 128\n")
    assert git_dirty(tmp_path) is None  # git refused the checkout


def test_the_views_name_the_commit_with_its_state() -> None:
    sha = "0fd13885a1b2c3d4e5f60718293a4b5c6d7e8f90"
    assert commit_text(sha, True) == "0fd13885a1b2 (uncommitted changes)"
    assert commit_text(sha, False) == commit_text(sha, None) == "0fd13885a1b2"
    assert commit_text(sha, True, width=None) == f"{sha} (uncommitted changes)"
