"""Where a run was made: the git checkout's HEAD commit, and whether its tracked files had changes.

    git_commit(root)   # "0fd1388…" or None: read from ``.git``, no subprocess
    git_dirty(root)    # True: a tracked file differs from HEAD (the commit does not hold what ran);
                       # False: it does not; None: not known (no git, not a checkout, too slow)
    check = DirtyCheck(root); ...; check.result()   # the same, asked now, answered later

A report names the commit so that a reader can find what ran; a report made on edited files (the usual
case: a prompt edited, pytest run before the commit) says so beside it, so nobody signs a report believing
it describes the commit. Untracked files do not count (a new scratch file is not the program that ran).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

__all__ = ["DIRTY_TIMEOUT_S", "DirtyCheck", "commit_text", "git_commit", "git_dirty"]

#: a checkout so large that ``git status`` takes longer is said as "not known", never waited for
DIRTY_TIMEOUT_S = 3.0


def git_commit(root: Path) -> str | None:
    """HEAD's commit, read from ``.git`` (no subprocess); None outside a git checkout."""
    for d in (root, *root.parents):
        git = d / ".git"
        if git.is_file():  # a worktree or a submodule: "gitdir: <path>" (relative to the folder, or absolute)
            git = d / git.read_text().split(":", 1)[1].strip()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head
            ref = head.split(":", 1)[1].strip()
            # a linked worktree's branches are the main checkout's: its gitdir names that one in "commondir"
            common = git / (git / "commondir").read_text().strip() if (git / "commondir").is_file() else git
            for ref_file in (git / ref, common / ref):
                if ref_file.exists():
                    return ref_file.read_text().strip()
            packed = common / "packed-refs"
            for line in packed.read_text().splitlines() if packed.exists() else []:
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
        except OSError:
            return None
        return None
    return None


class DirtyCheck:
    """Whether a tracked file of the checkout at ``root`` differs from HEAD (staged or not), asked as this
    object is made, answered by ``result()``: the plugin starts it as the run begins (the tree the run was
    made from: the goldens a compile writes are the run's output, not its input) and takes the answer when
    it writes the reports, the subprocess overlapping the run.

    One ``git status --porcelain --untracked-files=no`` (it compares the tracked files' stat data with the
    index and hashes only those whose stat changed); ``--no-optional-locks``: it never writes the index, so
    it never holds the lock a user's own git command would wait for; its output goes to a file, so it never
    waits for a reader. ``result()`` is None when ``root`` is in no checkout (no subprocess then), git is
    not installed or refuses the checkout ("dubious ownership"), or it did not answer within ``timeout``
    seconds of the start (a huge checkout: not waited for)."""

    def __init__(self, root: Path, *, timeout: float = DIRTY_TIMEOUT_S) -> None:
        self._deadline = time.monotonic() + timeout
        self._answer: bool | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        exe = shutil.which("git") if git_commit(root) is not None else None
        if exe is None:
            return
        out = tempfile.TemporaryFile()  # noqa: SIM115  (git's output; closed in result())
        try:
            self._proc = subprocess.Popen(
                [exe, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            out.close()
            return
        self._out = out

    def result(self) -> bool | None:
        """True: uncommitted changes; False: none; None: not known. Waits at most until the deadline."""
        proc, out, self._proc, self._out = self._proc, self._out, None, None
        if proc is None or out is None:
            return self._answer
        with out:
            try:
                code = proc.wait(timeout=max(0.0, self._deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return None
            if code == 0:  # else: not a checkout, git refused it, or it was interrupted
                self._answer = out.seek(0, os.SEEK_END) > 0
        return self._answer


def git_dirty(root: Path, *, timeout: float = DIRTY_TIMEOUT_S) -> bool | None:
    """``DirtyCheck(root).result()``: whether the checkout at ``root`` has uncommitted changes to tracked
    files now (None: not known)."""
    return DirtyCheck(root, timeout=timeout).result()


def commit_text(commit: object, dirty: object, *, width: int | None = 12) -> str:
    """``"0fd13885a1b2 (uncommitted changes)"``: the commit as the views name it (``width`` characters,
    None for all), with the tree's state when it had changes."""
    text = str(commit)[:width] if width else str(commit)
    return f"{text} (uncommitted changes)" if dirty is True else text
