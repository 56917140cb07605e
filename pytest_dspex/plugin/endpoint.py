"""The session's loopback endpoint (``programs/loopback``): the ``dspex_endpoint`` fixture and ``--dspex-openai-env``.

One endpoint per process that runs tests (each xdist worker has its own; the controller of an
xdist run runs none), in front of the session's LM, started on first use. With
``--dspex-openai-env`` (ini ``dspex_openai_env = true``) it starts with the session and the run's
environment points the usual variables at it — ``OPENAI_BASE_URL`` its ``/v1`` URL,
``OPENAI_API_KEY`` a placeholder — before test modules are imported, so application code that
builds its client from the environment (``OpenAI()``, LiteLLM, DSPy's ``dspy.LM("openai/...")``)
goes through the session's cache, replay, limits and budget without a change. The variables are set
before the initial conftests are imported (``export_early``, from ``pytest_load_initial_conftests``:
a ``conftest.py`` that imports the application builds its client then), on a port reserved for the
endpoint, which starts on it with the session. The real key is read first and handed to the session's
LM only (``HeldKey``): the application never sees it. Both variables are restored when the session ends.

``--dspex-loopback-process`` (ini ``dspex_loopback_process``; ``auto``: on in a run of one process with
two cores or more, off in xdist workers) gives the endpoint a serving process (``programs.piped``)
that does its LM work; in one process the run's coordinator is started then (``session.run_limits``)
so that the session's LM here and the serving process's share one in-flight limit, breaker and budget.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from .early_env import EarlyEnv, _early_key, original_environ

if TYPE_CHECKING:
    from ..programs.loopback import LoopbackEndpoint
    from .session import DspexSession

__all__ = ["HeldKey", "SessionEndpoint", "add_options", "dspex_endpoint"]

PLACEHOLDER_KEY = "sk-dspex-loopback"  # what the application is given instead of a key: not a secret
_key = pytest.StashKey["SessionEndpoint"]()


def add_options(parser: pytest.Parser) -> None:
    parser.getgroup("dspex").addoption(
        "--dspex-openai-env",
        dest="dspex_openai_env",
        action="store_true",
        default=None,
        help="point OPENAI_BASE_URL / OPENAI_API_KEY at the session's loopback endpoint for the run, so LM code "
        "that builds its client from the environment uses the session's cache, replay, limits and budget",
    )
    parser.addini("dspex_openai_env", "like --dspex-openai-env", type="bool", default=False)
    parser.getgroup("dspex").addoption(
        "--dspex-loopback-process",
        dest="dspex_loopback_process",
        choices=("auto", "on", "off"),
        default=None,
        help="where the loopback endpoint's LM work (cache, upstream calls) runs: on, a serving process of its own "
        "sharing the run's limits and budget, each call still counted for its example (frees the evaluating "
        "process's core for the application's SDK); off, the evaluating process; auto (default): on in a run "
        "of one process with two cores or more, off under xdist (its workers use the cores)",
    )
    parser.addini("dspex_loopback_process", "like --dspex-loopback-process (auto/on/off)", default="auto")


def loopback_process_wanted(config: pytest.Config, *, worker: bool) -> bool:
    value = str(config.getoption("dspex_loopback_process", None) or config.getini("dspex_loopback_process")).strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    if value != "auto":
        raise pytest.UsageError(f"dspex_loopback_process = {value!r}: expected auto, on or off")
    return not worker and _cores() >= 2


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def openai_env_wanted(config: pytest.Config) -> bool:
    flag = config.getoption("dspex_openai_env", None)
    return bool(flag) if flag is not None else bool(config.getini("dspex_openai_env"))


def _early_option(config: pytest.Config, dest: str) -> Any:
    """An option's command-line value while the command line is still being parsed (None: not given)."""
    return getattr(config.known_args_namespace, dest, None)


def export_early(config: pytest.Config) -> None:
    """``--dspex-openai-env``, before the initial conftests are imported: reserve the endpoint's port and
    point ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` at it, so an application client built while a
    ``conftest.py`` imports it goes through the endpoint too (``configure`` starts the endpoint on that
    port). Not in an xdist controller (it runs no tests: each worker reserves its own)."""
    flag = _early_option(config, "dspex_openai_env")
    try:
        wanted = bool(flag) if flag is not None else bool(config.getini("dspex_openai_env"))
    except (ValueError, KeyError):
        return
    if not wanted or _early_distributing(config):
        return
    key_env = _early_option(config, "dspex_api_key_env") or config.getini("dspex_api_key_env") or "OPENAI_API_KEY"
    names = {"OPENAI_BASE_URL", "OPENAI_API_KEY", str(key_env)}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
    except OSError:
        sock.close()
        return  # the endpoint binds its own port in ``configure``, as before
    early = EarlyEnv({name: os.environ.get(name) for name in names}, sock)
    config.stash[_early_key] = early
    config.add_cleanup(early.restore)
    os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    os.environ["OPENAI_API_KEY"] = PLACEHOLDER_KEY
    if key_env != "OPENAI_API_KEY":
        os.environ.pop(str(key_env), None)


def _early_distributing(config: pytest.Config) -> bool:
    """An xdist controller, as far as the command line says before xdist has read it (a worker is given
    the controller's command line, ``-n`` included, and runs tests; ``configure`` corrects a wrong guess)."""
    if not config.pluginmanager.hasplugin("xdist") or os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    n = _early_option(config, "numprocesses")
    return bool(n) or bool(_early_option(config, "tx")) or (_early_option(config, "dist") or "no") != "no"


class HeldKey:
    """The upstream API key read before ``--dspex-openai-env`` replaced its variable: handed to the
    session's LM only; never shown, never pickled (it would otherwise travel with the session)."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "HeldKey(***)"

    def __reduce__(self) -> Any:
        raise TypeError("an API key is not serializable")


class SessionEndpoint:
    """The process's loopback endpoint and the environment it replaced."""

    def __init__(self, session: DspexSession, *, serving: bool = False, early: EarlyEnv | None = None) -> None:
        self.session = session
        self.serving = serving  # the loopback's LM work in a serving process (``programs.piped``)
        self.endpoint: LoopbackEndpoint | None = None
        self._saved_env: dict[str, str | None] | None = None
        self.early = early  # the port and environment ``export_early`` set: the endpoint starts on that port

    def get(self) -> LoopbackEndpoint:
        if self.endpoint is None:
            from ..programs.loopback import LoopbackEndpoint

            serving = None
            lms = self.session.lms
            if self.serving and not self.session.is_worker and lms.can_share_limits():
                # one process: the run's limits (a coordinator, as an xdist controller's), shared by this
                # process's LM and the serving process's; an xdist worker has its controller's already
                lms.share_limits(self.session.run_limits())
            if self.serving:
                from ..programs.piped import ServingProcess

                serving = self.session.lms.serving = ServingProcess(self.session.lms.serving_config)
            sock = self.early.sock if self.early is not None else None
            if self.early is not None:
                self.early.sock = None  # the endpoint's now (it closes it when it stops)
            self.endpoint = LoopbackEndpoint(lambda: self.session.lm, serving=serving, sock=sock).start()
        return self.endpoint

    def export_env(self) -> None:
        """Point ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` at the endpoint, keeping the real key for the LM."""
        lms = self.session.lms
        key_env = self.session.options.api_key_env
        names = {"OPENAI_BASE_URL", "OPENAI_API_KEY", key_env}
        found = original_environ(self.session.config) if self.early is not None else os.environ
        self._saved_env = {name: found.get(name) for name in names}
        if self.early is not None:
            self.early.saved = {}  # restored by ``close`` from here on
        url = self.session.options.base_url or ""
        if not (url and "@" in urlsplit(url).netloc):  # credentials in the base URL win over any key anyway
            lms.held_key = HeldKey(self._saved_env.get(key_env))
        endpoint = self.get()
        os.environ["OPENAI_BASE_URL"] = endpoint.base_url
        os.environ["OPENAI_API_KEY"] = PLACEHOLDER_KEY
        if key_env != "OPENAI_API_KEY":
            os.environ.pop(key_env, None)

    def close(self) -> None:
        if self._saved_env is not None:
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved_env = None
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None


def configure(config: pytest.Config, session: DspexSession) -> None:
    """Called from the plugin's ``pytest_configure``, once the session exists."""
    distributing = not session.is_worker and config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") != "no"
    o = session.options
    serving = not (o.local or o.estimate or o.cache_url or distributing) and loopback_process_wanted(config, worker=session.is_worker)
    early = config.stash.get(_early_key, None)
    if early is not None and (distributing or not openai_env_wanted(config)):
        early.restore()  # xdist read the command line otherwise: this process runs no tests
        early = None
    holder = SessionEndpoint(session, serving=serving, early=early)
    config.stash[_key] = holder
    config.add_cleanup(holder.close)
    if openai_env_wanted(config) and not distributing:  # an xdist controller runs no tests: its workers export their own
        holder.export_env()


@pytest.fixture(scope="session")
def dspex_endpoint(request: pytest.FixtureRequest) -> LoopbackEndpoint:
    """The session's loopback OpenAI-compatible endpoint: point any LM code at ``dspex_endpoint.base_url``.

    Every request goes through the session's LM (cache and ``--dspex-cache=replay``, retries,
    breaker, limits, budget, accounting), and counts for the example being evaluated::

        @pytest.fixture
        def client(dspex_endpoint):
            return openai.OpenAI(base_url=dspex_endpoint.base_url, api_key="unused")
    """
    return request.config.stash[_key].get()
