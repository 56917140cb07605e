"""Code that takes its client (or URL) as an argument, gated through the ``dspex_endpoint`` fixture
(trial F9): the ``dspex_program`` marker is evaluated when the test module is imported, before any
fixture exists, so the program cannot be built from ``dspex_endpoint.base_url`` there. The README's
pattern: the program looks its client up when it is called, and a session fixture (autouse) builds
the client from the endpoint before any test runs. Its calls then go through the session: counted,
cached and replayed. With ``-n 2`` and ``-p no:xdist``, through a compile and a replay.
"""

from __future__ import annotations

import pytest

from .test_plugin import MODES, rows
from .test_plugin_functions import respond, run, table_row

pytest.importorskip("openai")

PROJECT = '''
import openai
import pytest

# the application's code: it takes its client
def classify(message: str, *, client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": message}])
    return reply.choices[0].message.content.strip()

# the test module: the client is built from the session's endpoint by the fixture below, before any
# test runs; the program looks it up when called (the marker below is evaluated at import, too early)
client = None

@pytest.fixture(scope="session", autouse=True)
def _endpoint_client(dspex_endpoint):
    global client
    client = openai.OpenAI(base_url=dspex_endpoint.base_url, api_key="unused")

def route(message: str) -> str:
    return classify(message, client=client)

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(route, outputs=["team"])
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
def test_route(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(route, outputs=["team"])
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_route_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


@pytest.mark.parametrize("mode", list(MODES))
def test_code_taking_a_client_goes_through_the_session_endpoint(pytester, server_factory, monkeypatch, mode):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-used")
    pytester.makefile(".jsonl", **{"data/dev": rows(10)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")  # no dspex_openai_env
    pytester.makepyfile(test_app=PROJECT)
    upstream = server_factory(respond)
    compiled = run(pytester, upstream, *MODES[mode], "--dspex-compile")
    assert compiled.ret == 0, compiled.stdout.str()
    compiled.stdout.fnmatch_lines(["*golden created: __dspex__/test_app/route.json*"])
    asked = upstream.requests
    assert asked >= 10  # the function's calls reached the session's endpoint, and through it the upstream
    replayed = run(pytester, upstream, *MODES[mode], "--dspex-cache=replay")
    assert replayed.ret == 0, replayed.stdout.str()
    assert upstream.requests == asked  # every answer from the session's cache
    for row in (table_row(replayed, "route"),):
        assert row[1] == "dataset" and row[2] == "1.000"
    replayed.stdout.fnmatch_lines(["*route*per-example*1.000*pass*"])
