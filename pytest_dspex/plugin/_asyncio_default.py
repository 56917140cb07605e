"""Keep pytest-asyncio's "asyncio_default_fixture_loop_scope is unset" warning from users who never chose asyncio.

pytest-dspex depends on pytest-asyncio, so every project that installs pytest-dspex gets
pytest-asyncio's ``PytestDeprecationWarning`` on every run unless it sets
``asyncio_default_fixture_loop_scope``. When the project has not set it (ini file or ``-o``), this
ignores that one warning, by its message, while pytest-asyncio configures: with the option unset
pytest-asyncio runs each async fixture in a loop of the fixture's own scope, which is what the
project gets, so nothing but the warning changes. A project that sets the option keeps its value.

Only public interfaces: ``config.getini`` and a ``warnings`` filter added in this plugin's
``pytest_configure``, which runs first (``tryfirst``) inside the warning filters pytest sets up for
configuration (ahead of ``-W`` and ``filterwarnings``, and gone with them when the run ends).

Registered by the plugin with ``register(pluginmanager)``.
"""

from __future__ import annotations

import warnings

import pytest

OPTION = "asyncio_default_fixture_loop_scope"
#: the start of pytest-asyncio's warning (a regular expression for ``warnings.filterwarnings``)
UNSET_MESSAGE = r'The configuration option "asyncio_default_fixture_loop_scope" is unset'


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("asyncio"):
        return
    try:
        value = config.getini(OPTION)
    except ValueError:  # pytest-asyncio without this option: nothing to quiet
        return
    if not value:
        warnings.filterwarnings("ignore", message=UNSET_MESSAGE, category=pytest.PytestDeprecationWarning)


def register(pluginmanager: pytest.PytestPluginManager) -> None:
    """Register this module as a plugin (idempotent); call from the plugin's ``pytest_addhooks``."""
    import sys

    module = sys.modules[__name__]
    if not pluginmanager.is_registered(module):
        pluginmanager.register(module, "dspex-asyncio-default")
