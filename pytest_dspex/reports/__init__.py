"""Reports people look at, rendered from the JSON report (``--dspex-report``).

* ``render_html`` / ``write_html``: one self-contained HTML file with filters and search.
* ``render_markdown`` / ``write_markdown``: a PR-ready summary, also appended to ``$GITHUB_STEP_SUMMARY``.
* ``program_properties`` / ``example_properties``: JUnit XML properties as ``(name, value)`` pairs.

Every renderer reads the same report dict (see the team contract's "Report JSON") and shows paths
exactly as the report holds them: relative to the rootdir.
"""

from __future__ import annotations

from ._format import outcome
from .html import render_html, write_html
from .junit import example_properties, program_properties
from .markdown import append_step_summary, render_markdown, write_markdown

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
