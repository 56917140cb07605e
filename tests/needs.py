"""What a test needs from the machine (redis-server, chromium, network namespaces).

Outside CI a missing need skips the test (a developer's machine may lack them; the run ends with one
line naming every skip and its reason, see ``conftest.pytest_terminal_summary``). Under ``CI`` (the
variable set) it fails the test, saying which: CI is where these must run, and a skip there would let
a whole feature go untested while the run stays green.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

CHROMIUM_INSTALL = "apt-get install chromium, or set DSPEX_CHROMIUM"
REDIS_INSTALL = "apt-get install redis-server, or set DSPEX_REDIS_SERVER"

#: read once, when the suite is collected: the ``pytester`` fixture (conftest) takes ``CI`` out of the
#: environment of the pytest runs it starts, which must not turn a CI failure here into a skip.
UNDER_CI = bool(os.environ.get("CI"))


def need(what: str, missing: str | None, install: str) -> None:
    """Skip (outside CI) or fail (under ``CI``) when ``missing`` says why ``what`` is unavailable."""
    if missing is None:
        return
    if UNDER_CI or os.environ.get("CI"):
        pytest.fail(f"CI needs {what}: {missing} ({install})", pytrace=False)
    pytest.skip(f"needs {what}: {missing} ({install})")


def say_skips(terminalreporter: Any) -> None:
    """One line at the end of the run naming what was skipped and why (pytest shows skip reasons
    only with ``-rs``); the conftest's ``pytest_terminal_summary`` calls it."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        parts = "; ".join(f"{n} × {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        terminalreporter.write_line(f"skipped {sum(reasons.values())}: {parts}", yellow=True)
