"""A run's results: judged once, written in every format.

* ``run``: ``ProgramRun``, one program's records judged into its verdict and report row — the one
  pipeline the plugin (both test modes) and shard ``combine`` use;
* ``document``: ``RunDocument``, the ``--dspex-report`` JSON built from the rows;
* ``checkout``: where the run was made: HEAD's commit and whether tracked files had uncommitted changes;
* ``formats``: the output-format registry (json, html, markdown, junit) the plugin and the commands
  write through; a new format is one module with ``render(document)`` and one line there.

The renderers:

* ``render_html`` / ``write_html``: one self-contained HTML file with filters and search.
* ``render_markdown`` / ``write_markdown``: a PR-ready summary, also appended to ``$GITHUB_STEP_SUMMARY``.
* ``program_properties`` / ``example_properties``: JUnit XML properties as ``(name, value)`` pairs;
  ``junit.render_junit``: a JUnit file of the document.

Every renderer reads the same report dict (see the team contract's "Report JSON") and shows paths
exactly as the report holds them: relative to the rootdir. ``combine`` merges sharded runs' reports.

May import: ``golden``, ``evaluation``, ``programs``, ``lm``, ``observe``, ``_support``, ``errors``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "append_step_summary",
    "example_properties",
    "outcome",
    "program_properties",
    "render_html",
    "render_markdown",
    "write_html",
    "write_markdown",
]

#: where each public name lives; imported on first use (the plugin's start-up reads the format registry)
_HOME = {
    "append_step_summary": "markdown",
    "example_properties": "junit",
    "outcome": "_format",
    "program_properties": "junit",
    "render_html": "html",
    "render_markdown": "markdown",
    "write_html": "html",
    "write_markdown": "markdown",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = globals()[name] = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        return value  # kept: the next lookup (a per-example item's ``example_properties``) is a plain one
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
