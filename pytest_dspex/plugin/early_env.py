"""What ``--dspex-openai-env`` changed in the environment before the initial conftests were imported.

``endpoint.export_early`` points ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` at the run's endpoint that
early; the options (``options``) still need the values the run found. Kept apart from ``endpoint``,
which knows the session, so that reading the options does not import it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import pytest

__all__ = ["EarlyEnv", "original_environ"]

_early_key = pytest.StashKey["EarlyEnv"]()


class EarlyEnv:
    """The environment ``export_early`` replaced, and the listening socket whose URL it exported."""

    def __init__(self, saved: dict[str, str | None], sock: socket.socket) -> None:
        self.saved = saved
        self.sock: socket.socket | None = sock

    def restore(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.saved = {}


def original_environ(config: pytest.Config) -> Mapping[str, str | None]:
    """The environment as the run found it: ``os.environ`` with what ``export_early`` replaced put back."""
    early = config.stash.get(_early_key, None)
    env: dict[str, str | None] = dict(os.environ)
    if early is not None:
        env.update(early.saved)
    return env
