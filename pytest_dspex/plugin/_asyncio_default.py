"""Keep pytest-asyncio's "asyncio_default_fixture_loop_scope is unset" warning from users who never chose asyncio.

pytest-dspex depends on pytest-asyncio, so every project that installs pytest-dspex gets
pytest-asyncio's ``PytestDeprecationWarning`` on every run unless it sets
``asyncio_default_fixture_loop_scope``. pytest-asyncio's documented remedy is to set that option;
when the project has not set it (ini file or ``-o``), this sets it for the run, before
pytest-asyncio reads it, to the value that keeps pytest-asyncio's current behaviour: ``fixture-scope``
where pytest-asyncio knows it (each async fixture's loop has the fixture's scope, what "unset" means
today), else ``function``. A project that sets the option keeps its value.

Registered by the plugin with ``register(pluginmanager)``; its ``pytest_configure`` runs first.
"""

from __future__ import annotations

from typing import Any

import pytest

OPTION = "asyncio_default_fixture_loop_scope"


def default_scope() -> str:
    """``fixture-scope`` where pytest-asyncio accepts it (no change of behaviour), else ``function``."""
    try:
        from pytest_asyncio import plugin
    except ImportError:  # pragma: no cover - a declared dependency
        return "function"
    return str(getattr(plugin, "_MATCH_FIXTURE_SCOPE", "function"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("asyncio"):
        return
    try:
        value = config.getini(OPTION)
    except ValueError:  # pytest-asyncio without this option: nothing to fill
        return
    cache: Any = getattr(config, "_inicache", None)
    if not value and isinstance(cache, dict):
        cache[OPTION] = default_scope()


def register(pluginmanager: pytest.PytestPluginManager) -> None:
    """Register this module as a plugin (idempotent); call from the plugin's ``pytest_addhooks``."""
    import sys

    module = sys.modules[__name__]
    if not pluginmanager.is_registered(module):
        pluginmanager.register(module, "dspex-asyncio-default")
