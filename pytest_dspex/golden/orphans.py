"""Orphaned goldens: when a program's golden is missing, the golden files that look like it.

Renaming a program (``name=``) or moving/renaming its test file changes the golden's path
(``<test dir>/__dspex__/<test module>/<program>.json``), so the next run finds no golden although
the old one is still there. ``look_alikes`` names those files, so the failure can say which one to
``git mv``: a golden is a look-alike when its predictors and their fields (names, roles, types) are
the program's — instructions may differ — and it is either in the same test module's folder under
another name, or named for this program in another test module's folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["look_alikes"]

#: folders never searched for ``__dspex__`` (virtualenvs, VCS and tool caches)
_SKIP = {
    ".git",
    ".hg",
    ".svn",
    ".tox",
    ".nox",
    ".venv",
    "venv",
    "node_modules",
    "site-packages",
    "__pycache__",
    "build",
    "dist",
}
_MAX_DIRS = 2000  # a bound on the walk in very large trees


def _dspex_dirs(root: Path) -> Iterator[Path]:
    seen = 0
    for here, dirs, _files in os.walk(root):
        seen += 1
        if seen > _MAX_DIRS:
            return
        if os.path.basename(here) == "__dspex__":
            dirs[:] = []
            yield Path(here)
            continue
        dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.startswith("."))


def _shape(fingerprints: dict[str, dict[str, Any]]) -> dict[str, list[tuple[str, str, str]]]:
    return {p: [(f["name"], f["role"], f["type"]) for f in fp.get("fields", [])] for p, fp in fingerprints.items()}


def look_alikes(missing: Path, program: Any, root: Path) -> list[Path]:
    """Golden files under ``root`` that look like the missing golden ``missing`` of ``program``."""
    from ..errors import GoldenFileError
    from ..programs.signatures import fingerprint
    from .file import read_golden

    want = _shape({path: fingerprint(p.signature) for path, p in program.named_predictors()})
    module_dir = missing.parent
    candidates: list[Path] = sorted(p for p in module_dir.glob("*.json") if p != missing) if module_dir.is_dir() else []
    if root.is_dir() and missing.is_relative_to(root):
        for d in _dspex_dirs(root):
            candidates += sorted(p for p in d.glob(f"*/{missing.name}") if p != missing and p not in candidates)
    found = []
    for path in candidates:
        try:
            golden = read_golden(path)
        except (GoldenFileError, OSError):
            continue
        if _shape(golden.fingerprints()) == want:
            found.append(path)
    return found
