"""The output formats: every file a run's document (``RunDocument``) is written as, in one registry.

    for fmt in FORMATS.values():          # json, html, markdown, junit
        fmt.write(document, path)         # atomically; '-' writes to stdout

The plugin writes the formats its ``--dspex-<option>`` options name at session end (each option and
its ini twin come from here); ``python -m pytest_dspex report`` and ``combine`` offer ``--<option>``
for each. A new format is one module with ``render(document) -> str`` and one line in ``FORMATS``.
The registry imports no renderer until one is used: the plugin's start-up reads it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "Format", "add_format_arguments", "write_formats"]


@dataclass(frozen=True)
class Format:
    """One output format: its name (``dspex <name> report: <path>``), where its ``render`` lives, its
    option (pytest ``--dspex-<option>`` with ini ``dspex_<option>``; ``--<option>`` on the command line)."""

    name: str
    render_path: str  # "<module relative to this package>:<function>", loaded on first use
    option: str
    help: str  # the pytest option's
    cli_help: str  # the command line's
    #: the plugin writes it at session end (JUnit is pytest's own ``--junitxml``: the plugin adds properties)
    plugin: bool = True

    def render(self, document: Mapping[str, Any]) -> str:
        module, _, name = self.render_path.partition(":")
        render: Callable[[Mapping[str, Any]], str] = getattr(importlib.import_module(module, __package__), name)
        return render(document)

    def write(self, document: Mapping[str, Any], path: str | Path) -> None:
        """Render ``document`` into ``path`` atomically (nothing half-written); ``-`` is stdout."""
        from .._support.atomic import atomic_write_text

        text = self.render(document)
        if str(path) == "-":
            sys.stdout.write(text)
        else:
            atomic_write_text(Path(path), text)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("json", ".document:render_json", "report", "write a JSON report of every evaluation to this path",
           "write the JSON report here"),
    Format("html", ".html:render_html", "html", "write a self-contained HTML report (filters, search, prompts) to this path",
           "write the HTML report here"),
    Format("markdown", ".markdown:render_markdown", "markdown",
           "write a markdown summary (one row per program, then the regressions) to this path; "
           "it is also appended to $GITHUB_STEP_SUMMARY whenever that is set",
           "write the markdown summary here ('-' for stdout)"),
    Format("junit", ".junit:render_junit", "junit", "", "write a JUnit XML file (one test case per program gate)",
           plugin=False),
)}  # fmt: skip


def add_format_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = ()) -> None:
    """``--<option> PATH`` on a command (``report``, ``combine``) for every format but ``exclude``."""
    for fmt in FORMATS.values():
        if fmt.name not in exclude:
            parser.add_argument(f"--{fmt.option}", dest=f"format_{fmt.name}", metavar="PATH", help=fmt.cli_help)


def wanted_formats(args: argparse.Namespace) -> list[tuple[Format, str]]:
    """The formats a command's arguments ask for, with their paths."""
    return [(f, path) for f in FORMATS.values() if (path := getattr(args, f"format_{f.name}", None))]


def write_formats(document: Mapping[str, Any], args: argparse.Namespace) -> tuple[bool, list[str]]:
    """Write every format a command's arguments ask for: ``(to_stdout, unwritten)``, ``to_stdout`` True
    when one went to stdout (``-``). A path that cannot be written (under a file, an unwritable folder) is
    one line on stderr, in ``unwritten``; the other formats are still written (as the plugin's reports)."""
    from .._support.atomic import describe_os_error

    wanted = wanted_formats(args)
    unwritten: list[str] = []
    for fmt, path in wanted:
        try:
            fmt.write(document, path)
        except OSError as exc:
            sys.stderr.write(f"pytest-dspex: {fmt.name} report not written: {path}: {describe_os_error(exc)}\n")
            unwritten.append(str(path))
    return any(path == "-" for _, path in wanted), unwritten
