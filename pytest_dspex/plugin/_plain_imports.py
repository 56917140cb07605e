"""pytest-dspex's own modules import as plain Python, not through pytest's assertion rewriting.

pytest rewrites the ``assert`` statements of every module of a package that provides a plugin:
each such module is parsed to a syntax tree, rewritten and compiled when it is imported, in every
process — the controller and every xdist worker — and only cached where pytest may write its own
byte-code files (not under ``PYTHONDONTWRITEBYTECODE``, common in CI containers). For this package
that was a fifth of a worker's start-up CPU (~0.15 s a process with ``-n 8``: over a second a run),
for nothing: its few ``assert`` statements are internal checks, never a user's test.

``install()`` (run when this module is imported: the plugin module imports it first, before the
rest of the package) puts a finder ahead of pytest's on ``sys.meta_path`` that finds this package's submodules
the ordinary way (``importlib.machinery.PathFinder``: the installed byte-code is used). Only the
package's own names; everything else, users' tests and conftests included, is rewritten as ever.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

__all__ = ["install"]

_PREFIX = __name__.split(".")[0] + "."


class _PlainFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if path is None or not fullname.startswith(_PREFIX):
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, path, target)


def install() -> None:
    """Once per process: ahead of pytest's assertion rewriting, for this package's submodules."""
    if not any(isinstance(finder, _PlainFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PlainFinder())


install()
