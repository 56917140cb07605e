"""Writing JSON files so a reader never sees half a file: temp file in the same dir, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_json", "atomic_write_text", "describe_os_error", "dumps_stable", "replace_with"]


def dumps_stable(data: Any) -> str:
    """Diff-friendly JSON: sorted keys, two-space indent, UTF-8, newline at the end."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, dumps_stable(data))


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write ``text`` (UTF-8) so that ``path`` holds either the old content or all of the new.

    The file gets ``mode`` before it appears (``mkstemp`` creates 0600; reports and goldens are shared).
    Text UTF-8 cannot hold (a lone surrogate from a dataset row) is written as its ``\\udcxx`` escape —
    inside a JSON string, the same character — rather than failing after every LM call was paid for.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    replace_with(fd, tmp, path, text, mode=mode, sync=True)


def replace_with(fd: int, tmp: str | os.PathLike[str], path: Path, text: str, *, mode: int | None = None, sync: bool = False) -> None:
    """Write ``text`` (UTF-8; what it cannot hold as ``\\udcxx`` escapes) through ``fd``, a new temporary
    file ``tmp`` beside ``path``, then rename it over ``path``. ``mode``: set before the rename;
    ``sync``: on disk before the rename. On any failure the temporary file is removed."""
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def describe_os_error(exc: BaseException) -> str:
    """An I/O error in a line: what the system said and where (the folder, for a temporary file of ours)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = str(exc.filename or "")
        name = os.path.basename(where)
        if name.startswith(".") and name.endswith(".tmp"):  # atomic writes' temporary file: say the folder
            where = f"cannot create a file in {os.path.dirname(where) or '.'}"
        return exc.strerror + (f" ({where})" if where else "")
    return f"{type(exc).__name__}: {exc}"
