"""A folder private to the user, for locks, compile markers and xdist hand-off files.

What processes of a run leave for each other (a golden's lock, the marker naming the run that
compiled it, the chunk map and usage errors of xdist workers) lives in a folder that only its owner
can enter (mode 0700), never in a shared, predictable folder of the temporary directory where
another user could plant a symlink or take the name first:

* under pytest, the project's own cache: ``<rootdir>/.pytest_cache/d/dspex`` (``config.cache``);
* otherwise (a script, ``-p no:cacheprovider``, a read-only checkout): ``$XDG_CACHE_HOME/pytest-dspex``
  (``~/.cache/pytest-dspex``), else ``<tmp>/pytest-dspex-<uid>`` — each used only if it is a real
  directory (not a symlink) owned by this user; a wider mode is narrowed to 0700.

Files in it are created with ``O_NOFOLLOW | O_EXCL`` (a temporary name, then renamed over the
target: a rename replaces a planted symlink, it never writes through it) and read with
``O_NOFOLLOW``. Names are keyed by the run id or by a digest of the golden's resolved path, so
projects and runs do not collide.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from ..errors import ConfigError
from .atomic import replace_with

__all__ = ["default_state_dir", "private_dir", "read_private", "remove_private", "write_private"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _uid() -> int | None:
    getuid = getattr(os, "getuid", None)
    return getuid() if getuid is not None else None


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can enter: created 0700 if missing; a symlink, a file
    or a folder owned by another user is a ``ConfigError`` naming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: expected a private directory, found {'a symlink' if stat.S_ISLNK(st.st_mode) else 'a file'}; remove it")
    uid = _uid()
    if uid is not None and st.st_uid != uid:
        raise ConfigError(f"{path}: belongs to another user (uid {st.st_uid}); pytest-dspex keeps its locks in a folder of its own")
    if uid is not None and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def default_state_dir() -> Path:
    """The private folder used outside a pytest project's cache (see the module docs)."""
    candidates: list[Path] = []
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        candidates.append(Path(xdg) / "pytest-dspex")
    try:
        candidates.append(Path.home() / ".cache" / "pytest-dspex")
    except RuntimeError:  # no home directory
        pass
    candidates.append(Path(tempfile.gettempdir()) / f"pytest-dspex-{_uid() if _uid() is not None else 'user'}")
    problems = []
    for candidate in candidates:
        try:
            return private_dir(candidate)
        except (OSError, ConfigError) as exc:
            problems.append(f"{candidate} ({exc})")
    raise ConfigError("no private folder for pytest-dspex's locks could be used: " + "; ".join(problems))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) without following a symlink: a fresh temporary file, renamed over it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    replace_with(fd, tmp, path, text)


def read_private(path: Path) -> str | None:
    """The text of ``path``, or None when it is missing — or is a symlink (never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # ELOOP: a symlink planted where our file should be
        return None
    with os.fdopen(fd, encoding="utf-8") as fh:
        return fh.read()


def remove_private(path: Path) -> None:
    """Remove ``path`` if it is there (a symlink is removed, not its target)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
