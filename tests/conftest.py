from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.testing.fake_server import FakeLMServer, Faults, triage_responder

from .needs import say_skips


class Triage(dspex.Signature):
    """Route a customer message to the team that should handle it."""

    message: str = dspex.InputField()
    team: str = dspex.OutputField()


#: a per-example test of a triage Predict over data/dev.jsonl that never fails on its score (the
#: run-wide limits and budget tests count requests, not scores)
PER_EXAMPLE = '''
import pytest
import pytest_dspex as dspex

@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(lambda e, p, t=None: e.team == p.team, threshold=0.0)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


def triage_examples(n: int) -> list[dspex.Example]:
    out = []
    for i in range(n):
        if i % 2:
            out.append(dspex.Example(message=f"I was charged twice ({i})", team="billing"))
        else:
            out.append(dspex.Example(message=f"the app crashes on start ({i})", team="technical"))
    return [e.with_inputs("message") for e in out]


def team_matches(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.team == prediction.team)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytest's own ``pytester``, its runs started without ``CI``/``BUILD_NUMBER``: under those
    pytest prints the short summary untruncated (every failure message a second time), so the
    output a test asserts would depend on where the suite runs. A test about CI sets them itself."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    return pytester


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A redis-server of its own on a loopback port (the shared cache and limits tests); under CI a
    missing binary fails the test, elsewhere it is a named skip."""
    from .needs import REDIS_INSTALL, need
    from .redis_server import RedisServer, redis_server_binary

    binary = redis_server_binary()
    need("redis-server", "not installed" if binary is None else None, REDIS_INSTALL)
    assert binary is not None
    server = RedisServer(binary).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., FakeLMServer]]:
    started: list[FakeLMServer] = []

    def make(responder: Any = triage_responder, **kwargs: Any) -> FakeLMServer:
        s = FakeLMServer(responder, **kwargs).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory: Callable[..., FakeLMServer]) -> FakeLMServer:
    return server_factory()


@pytest.fixture
def make_lm(tmp_path: Any) -> Iterator[Callable[..., dspex.LM]]:
    lms: list[dspex.LM] = []

    def make(server: FakeLMServer, **kwargs: Any) -> dspex.LM:
        kwargs.setdefault("api_key", "sk-test-key")
        kwargs.setdefault("cache", None)
        kwargs.setdefault("backoff_base", 0.01)
        # a fresh breaker per test: breakers are per endpoint and each test server has its own port
        lm = dspex.LM("fake-model", base_url=server.base_url, **kwargs)
        lms.append(lm)
        return lm

    yield make
    for lm in lms:
        lm.close()


__all__ = ["Faults", "Triage", "team_matches", "triage_examples", "triage_responder"]



def pytest_terminal_summary(terminalreporter: Any) -> None:
    say_skips(terminalreporter)


@pytest.fixture(autouse=True)
def _runs_under_test_are_not_this_suites_workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytest run made by a test (pytester) must not inherit this suite's own xdist worker id: under
    ``pytest -n 2`` a ``-p no:xdist`` run under test took itself for worker gw0 (a metric sent SIGINT to
    its parent, this suite's worker; an atexit handler named its file after gw0)."""
    if "pytester" in request.fixturenames:
        for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
            monkeypatch.delenv(name, raising=False)
