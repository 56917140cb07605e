"""Ctrl-C pressed more than once: the session still ends as interrupted, in one line, not a traceback.

pytest reports the first KeyboardInterrupt (``pytest_keyboard_interrupt``: a traceback's source
lines, which take a moment) and only then marks the session interrupted. A second Ctrl-C in that
moment escaped the session as a raw traceback and left its status "ok", so ``pytest_sessionfinish``
wrote a report of the part that had run over the previous one. These wrappers catch the second
signal there and during the session's finish, say so in one line, and record the run as interrupted.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

__all__ = ["InterruptHooks", "was_interrupted"]

_key = pytest.StashKey["InterruptHooks"]()


def was_interrupted(config: pytest.Config) -> bool:
    """Whether pytest began reporting a KeyboardInterrupt in this session (whatever its exit status says)."""
    hooks = config.stash.get(_key, None)
    return hooks is not None and hooks.interrupted


class InterruptHooks:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.interrupted = False
        config.stash[_key] = self

    def _say(self, text: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        try:
            if tr is not None:
                tr.ensure_newline()
                tr.write_line(text, yellow=True)
        except (KeyboardInterrupt, OSError):  # a third Ctrl-C, a closed terminal: the exit status still says it
            pass

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo: Any) -> Generator[None, Any, Any]:
        self.interrupted = True
        try:
            return (yield)
        except KeyboardInterrupt:
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None and getattr(tr, "_keyboardinterrupt_memo", False) is None:
                # what pytest's reporter was making when cut short (it shows it at the end): no source lines
                tr._keyboardinterrupt_memo = excinfo.getrepr(style="value")
            self._say("dspex: interrupted again while pytest reported the interruption: stopping (reports keep their previous content)")
            return []

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, Any, Any]:
        try:
            return (yield)
        except KeyboardInterrupt:
            self.interrupted = True
            session.exitstatus = pytest.ExitCode.INTERRUPTED
            self._say("dspex: interrupted while the run was finishing: stopping (the rest of the summary is skipped)")
            return None
