"""Acceptance: ``--dspex-loopback-process=on``, the loopback's LM work in a serving process (issue 22).

What a user sees is what the in-process loopback gives — every call counted for its example, a
replay with no upstream call, a spent budget stopping as LM errors — with the session LM's work
done in a process of its own, whose run-wide limits and budget it shares; the upstream key reaches
it over its pipe only (not its command line, not its environment); a serving process that dies
mid-run, or cannot start, leaves every request answered in process with one warning, never a hang.
With ``-n 2`` and ``-p no:xdist``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from pytest_dspex.testing.fake_server import FakeLMServer, Faults

from .test_plugin import MODES, rows
from .test_plugin_functions import CANARY, assert_no_canary, respond, table_row

pytest.importorskip("openai")

PROJECT = '''
import os
import signal
import threading
import time
import openai
import pytest
import pytest_dspex as dspex

client = openai.OpenAI()
aclient = openai.AsyncOpenAI()
SERVING = {}
KILL_AT = os.environ.get("KILL_AT")  # the example whose call kills the serving process first

ANSWERED = threading.Event()

def wait_until_ready(serving):
    for _ in range(3000):  # requests until it is up are answered in process
        if serving.ready or serving.lost is not None:
            return
        time.sleep(0.01)

def triage(message: str) -> str:
    kill = KILL_AT is not None and message.endswith(KILL_AT)
    if KILL_AT is not None and not kill and int(message.rsplit(" ", 1)[1]) > int(KILL_AT.rsplit(" ", 1)[1]):
        ANSWERED.wait(10)  # the later examples' calls are in flight when the serving process dies
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": message}])
    if kill:
        serving = SERVING["it"]
        wait_until_ready(serving)
        ANSWERED.set()
        for _ in range(500):
            if serving.in_flight:
                break
            time.sleep(0.01)
        os.kill(serving.pid, signal.SIGKILL)
        for _ in range(500):  # its end is noticed (by the requests waiting for it, or the pipe's end)
            if serving.lost is not None:
                break
            time.sleep(0.01)
    return reply.choices[0].message.content.strip()

async def atriage(message: str) -> str:
    messages = [{"role": "system", "content": "One word."}, {"role": "user", "content": message}]
    reply = await aclient.chat.completions.create(model="gpt-4o-mini", messages=messages)
    return reply.choices[0].message.content.strip()

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.fixture(autouse=True)
def _serving(dspex_endpoint):
    SERVING["it"] = dspex_endpoint.serving

@pytest.mark.dspex_program(triage, outputs=["team"])
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
def test_dataset(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(dspex.program(atriage, outputs=["team"]), name="async")
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)

def test_served_apart(dspex_endpoint):
    serving = dspex_endpoint.serving
    if os.environ.get("EXPECT_SERVED") == "1":
        wait_until_ready(serving)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}])
    if os.environ.get("EXPECT_SERVED") == "1":
        assert serving is not None and serving.pid is not None
        if serving.lost is None:
            assert serving.forwarded > 0
            with open(f"/proc/{serving.pid}/cmdline", "rb") as f:
                assert b"sk-canary" not in f.read()
            with open(f"/proc/{serving.pid}/environ", "rb") as f:
                assert b"sk-canary" not in f.read()
'''


@pytest.fixture
def upstream(server_factory: Any) -> FakeLMServer:
    return server_factory(respond, latency=0.5)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("KILL_AT", raising=False)
    monkeypatch.setenv("EXPECT_SERVED", "1")
    pytester.makefile(".jsonl", **{"data/dev": rows(10)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_openai_env = true\ndspex_loopback_process = on\n")
    pytester.makepyfile(test_app=PROJECT)
    return pytester


def run(pytester: pytest.Pytester, upstream: FakeLMServer, *args: str) -> pytest.RunResult:
    opts = [f"--dspex-base-url={upstream.base_url}", "--dspex-model=fake-model", "--dspex-retries=0", "-p", "no:cacheprovider"]
    return pytester.runpytest_subprocess(*opts, *args, timeout=180)


def served_warnings(result: pytest.RunResult) -> int:
    return len(re.findall(r"RuntimeWarning: pytest-dspex: the loopback's serving process", result.stdout.str()))


@pytest.mark.parametrize("mode", list(MODES))
def test_record_then_replay_counted_per_example(project: pytest.Pytester, upstream: FakeLMServer, mode: str) -> None:
    first = run(project, upstream, *MODES[mode], "--dspex-missing-golden=zero-shot")
    first.assert_outcomes(passed=12)
    assert upstream.requests == 21  # 10 examples, two programs; test_served_apart's call
    assert all(h["Authorization"] == f"Bearer {CANARY}" for h in upstream.headers)
    assert table_row(first, "triage")[-5:-3] == table_row(first, "async")[-5:-3] == ["10", "0"]
    replay = run(project, upstream, *MODES[mode], "--dspex-missing-golden=zero-shot", "--dspex-cache=replay")
    replay.assert_outcomes(passed=12)
    assert upstream.requests == 21  # replay: nothing reached the endpoint
    for program in ("triage", "async"):
        row = table_row(replay, program)
        assert row[2] == "1.000" and row[-1] == "pass"
        assert row[-5:-3] == ["10", "10"]  # 10 calls, all cached: counted per example, in both modes
    assert served_warnings(first) == served_warnings(replay) == 0
    assert_no_canary(project, first, replay)


def test_a_spent_budget_is_the_runs_shared_with_the_serving_process(project: pytest.Pytester, upstream: FakeLMServer) -> None:
    result = run(project, upstream, "-p", "no:xdist", "--dspex-missing-golden=zero-shot", "--dspex-cache=off",
                 "--dspex-max-calls=3", "-k", "test_dataset")  # fmt: skip
    result.assert_outcomes(failed=1, deselected=11)
    assert upstream.requests == 3
    result.stdout.fnmatch_lines(["*LM errors: 7 of 10 examples could not be answered (budget: 7)*"])
    assert_no_canary(project, result)


@pytest.mark.parametrize("mode", list(MODES))
def test_killed_mid_run_every_request_is_answered_in_process_with_one_warning(
    project: pytest.Pytester, upstream: FakeLMServer, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("KILL_AT", "case 4")
    result = run(project, upstream, *MODES[mode], "--dspex-missing-golden=zero-shot", "-k", "test_dataset or test_served_apart")
    result.assert_outcomes(passed=2)
    row = table_row(result, "triage")
    assert row[2] == "1.000" and row[-5] == "10"  # every example answered and counted
    assert upstream.requests >= 10
    assert served_warnings(result) == 1
    result.stdout.fnmatch_lines(["*the loopback's serving process (pid *) ended (killed by SIGKILL)*answered the * request(s) it was serving*in this process*"])
    assert int(re.findall(r"answered the (\d+) request", result.stdout.str())[0]) >= 1  # they were waiting for it
    assert_no_canary(project, result)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_serving_process_that_cannot_start_leaves_the_loopback_in_process(
    project: pytest.Pytester, upstream: FakeLMServer, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    project.makeconftest("import pytest_dspex.programs.piped as piped\npiped.SERVING_MODULE = 'no_such_module_here'\n")
    monkeypatch.setenv("EXPECT_SERVED", "0")
    result = run(project, upstream, *MODES[mode], "--dspex-missing-golden=zero-shot")
    result.assert_outcomes(passed=12)
    assert upstream.requests == 21
    assert table_row(result, "triage")[-5:-3] == table_row(result, "async")[-5:-3] == ["10", "0"]
    assert 1 <= served_warnings(result) <= 2  # one per process that runs tests
    result.stdout.fnmatch_lines(["*the loopback's serving process could not start*"])
    assert_no_canary(project, result)


# -- the endpoint with a serving process, without pytest around it --------------------------------------
@pytest.fixture
def served(server: FakeLMServer, tmp_path: Any) -> Any:
    """A loopback endpoint whose LM work is done by a serving process linked to a coordinator."""
    import pytest_dspex as dspex
    from pytest_dspex.lm.coordinator import Coordinator
    from pytest_dspex.lm.link import RunLink
    from pytest_dspex.programs.loopback import LoopbackEndpoint
    from pytest_dspex.programs.piped import ServingProcess

    coordinator = Coordinator(max_calls=100)
    coordinator.start()
    config = {"model": "fake", "url": server.base_url, "api_key": CANARY, "env_key": None, "budget": [None, 100],
              "settings": {"retries": 0, "hedge_after": None}, "cache": {"mode": "on", "directory": str(tmp_path)},
              "limits": f"{coordinator.address} {coordinator.token}"}  # fmt: skip
    serving = ServingProcess(lambda: config)
    lm = dspex.LM("fake", base_url=server.base_url, api_key=CANARY, cache=False, retries=0, hedge_after=None,
                  limits=RunLink(coordinator.address, coordinator.token))  # fmt: skip
    with LoopbackEndpoint(lm, serving=serving) as endpoint:
        for _ in range(3000):
            if serving.ready or serving.lost:
                break
            time.sleep(0.01)
        assert serving.ready, serving.lost
        yield endpoint
    lm.close()
    coordinator.stop()


def test_served_over_the_socket_and_in_process_attributed_with_errors_and_streams(served: Any, server: FakeLMServer) -> None:
    import json
    import urllib.error
    import urllib.request

    import openai

    from pytest_dspex.lm import callers
    from pytest_dspex.lm.usage import track_usage
    from pytest_dspex.observe import events

    seen: list[Any] = []
    unsubscribe = events.subscribe(seen.append)
    try:
        client = openai.OpenAI(base_url=served.base_url, api_key="app", max_retries=0)
        with track_usage() as usage:
            reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "I was charged twice, case 1"}])
            again = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "I was charged twice, case 1"}])
            chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "case 2"}], stream=True))
        assert reply.choices[0].message.content == again.choices[0].message.content
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert (usage.calls, usage.cache_hits) == (3, 1) and usage.prompt_tokens > 0
        assert [e.cache_hit for e in seen if isinstance(e, events.LMCallEvent)] == [False, True, False]
        # a client that is not httpx: over the socket, attributed by its sending thread's context
        request = urllib.request.Request(served.base_url + "/chat/completions", method="POST", headers={"content-type": "application/json"},
                                         data=json.dumps({"messages": [{"role": "user", "content": "case 3"}]}).encode())  # fmt: skip
        with track_usage() as usage, urllib.request.urlopen(request) as resp:
            assert resp.status == 200 and resp.headers["x-dspex-cache"] == "miss"
        assert usage.calls == 1
        # a bad request and an upstream error: OpenAI-shaped, the error told to the caller's lm_errors
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=[])
        server.set_faults(Faults(http_500=1.0))
        with track_usage() as usage, callers.lm_errors() as errors, pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "case 4"}])
        assert [type(e).__name__ for e in errors] == ["LMHTTPError"] and errors[0].status == 500
        assert usage.errors == 1
    finally:
        unsubscribe()
    assert served.serving.forwarded == 6 and served.serving.lost is None
    assert (served.counts["answered"], served.counts["cache_hits"], served.counts["streamed"]) == (4, 1, 1)
    assert (served.counts["bad_requests"], served.counts["errors"]) == (1, 1)


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["-p", "no:xdist"], "auto"), (["-p", "no:xdist", "--dspex-loopback-process=off"], "0"), (["-n", "2"], "0"), (["-n", "2", "--dspex-loopback-process=on"], "1")],
    ids=["one-process-auto", "opt-out", "xdist-auto", "xdist-on"],
)
def test_the_default_serves_apart_in_one_process_with_two_cores(
    pytester: pytest.Pytester, upstream: FakeLMServer, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str
) -> None:
    import os

    if expected == "auto":
        expected = "1" if len(os.sched_getaffinity(0)) >= 2 else "0"
    pytester.makepyfile(
        "import os\n"
        "def test_where(dspex_endpoint):\n"
        "    assert (dspex_endpoint.serving is not None) == (os.environ['EXPECTED'] == '1')\n"
    )
    monkeypatch.setenv("EXPECTED", expected)
    result = pytester.runpytest_subprocess(f"--dspex-base-url={upstream.base_url}", "--dspex-model=fake-model", "-p", "no:cacheprovider", *args, timeout=120)
    result.assert_outcomes(passed=1)


def test_frames_go_out_a_few_at_a_time_not_at_the_end_of_a_long_turn() -> None:
    """A burst of answers woke 50 examples in one turn of the loop; each sent its next request, and all
    50 waited for the turn's end to be written together (the run then moved in waves: a call 81 ms
    against the serving process's 56). Now at most ``FLUSH_AT`` frames wait; the rest of a turn's
    frames still go out together at its end, and nothing is written twice or lost."""
    import asyncio

    from pytest_dspex.programs import piped

    class Writer:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return False

    async def turn() -> tuple[list[bytes], list[bytes]]:
        writer = Writer()
        out = piped.Coalescer(writer)  # type: ignore[arg-type]
        for i in range(10):  # one long turn: ten frames sent without yielding to the loop
            out.send(piped.frame(i + 1, b"x" * i))
        during = list(writer.writes)
        await asyncio.sleep(0)  # the turn ends: the scheduled flush runs
        return during, writer.writes

    during, after = asyncio.run(turn())
    assert len(during) == 10 // piped.FLUSH_AT  # two writes of four while the turn runs
    assert b"".join(after) == b"".join(piped.frame(i + 1, b"x" * i) for i in range(10))
    assert len(after) == len(during) + 1  # the two left over, in one write at the turn's end


def test_a_reply_frame_carries_the_calls_usage_events_and_errors_exactly() -> None:
    """The reply's usage is packed (no JSON: ~15 µs a call less on each side); the LM call events go only
    to an evaluating process that listens, the LM errors always; a usage field the packing cannot hold
    exactly goes as JSON; the headers a caller gets are its own (a cache of their JSON is not shared)."""
    from pytest_dspex.errors import BudgetExceededError, LMHTTPError
    from pytest_dspex.lm.usage import Usage
    from pytest_dspex.programs import piped

    reply = (200, {"content-type": "application/json", "x-dspex-cache": "hit"}, b'{"id": "x"}')
    usage = Usage(calls=1, cache_hits=1, prompt_tokens=12, completion_tokens=3, cost=0.00042, retries=2, estimated_limit=7)
    assert piped.split_reply(piped.reply_frame(3, reply, usage, None, [])[8:]) == (reply, usage, {})
    event = {"event": "lm_call", "model": "m", "cache_hit": True}
    errors = [LMHTTPError("slow down", status=429, retry_after=2.0), BudgetExceededError("spent")]
    got, got_usage, accounting = piped.split_reply(piped.reply_frame(4, reply, usage, [event], errors)[8:])
    assert (got, got_usage, accounting["events"]) == (reply, usage, [event])
    rebuilt = [piped.rebuild_error(info) for info in accounting["errors"]]
    assert [(type(e), str(e)) for e in rebuilt] == [(LMHTTPError, "slow down"), (BudgetExceededError, "spent")]
    assert rebuilt[0].status == 429 and rebuilt[0].retry_after == 2.0  # type: ignore[attr-defined]
    odd = Usage(calls=1, prompt_tokens=2**70)  # past 64 bits: sent as JSON, counted exactly
    _, none, accounting = piped.split_reply(piped.reply_frame(5, reply, odd, None, [])[8:])
    assert none is None and accounting["usage"]["prompt_tokens"] == 2**70
    got[1]["x-mutated"] = "yes"  # one caller's headers, changed: the next reply's are not
    assert piped.split_reply(piped.reply_frame(6, reply, usage, None, [])[8:])[0] == reply
    assert piped.split_request(piped.request_frame(7, "POST", "/v1/chat/completions", "r-2", b'{"a": 1}', False)[8:]) == (
        "POST", "/v1/chat/completions", "r-2", b'{"a": 1}', False)  # fmt: skip
    assert piped.split_request(piped.request_frame(8, "POST", "/p", None, b"\0body\0", True)[8:])[3:] == (b"\0body\0", True)
