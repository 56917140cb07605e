"""Trial2 F7: a replay (and an estimate) on the embedded model never starts the llama.cpp server.

No request can leave a replay (a miss fails as a miss) nor an estimate (a miss is counted), so the
run pays no model load. The server is stood in for by the fake endpoint: the project's conftest
replaces ``ensure_server`` and writes down every start, in the controller and in each xdist worker.
"""

from __future__ import annotations

import json
import re

import pytest

from .conftest import triage_examples
from .test_plugin import MODES

STAND_IN = '''
import os
from pytest_dspex.lm.local import embedded

def _stand_in(run_id, owner_pid, **kwargs):
    with open(os.environ["DSPEX_TEST_STARTS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    return os.environ["DSPEX_TEST_STAND_IN"]

embedded.ensure_server = _stand_in
# the URL the session's LM is given before anything starts (the stand-in listens where it listens)
embedded.reserve_server = lambda run_id, owner_pid: os.environ["DSPEX_TEST_STAND_IN"]
'''

TEST = '''
import pytest
import pytest_dspex as dspex

@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(lambda e, p, t=None: e.team == p.team, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(lambda e, p, t=None: e.team == p.team, threshold=0.0)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


def _dataset(pytester: pytest.Pytester, n: int) -> None:
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(n)) + "\n"})


def _starts(pytester: pytest.Pytester) -> int:
    path = pytester.path / "starts.txt"
    return len(path.read_text().split()) if path.exists() else 0


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_a_replay_on_the_embedded_model_starts_no_server(pytester, server_factory, monkeypatch, mode):
    server = server_factory()
    monkeypatch.setenv("DSPEX_TEST_STARTS", str(pytester.path / "starts.txt"))
    monkeypatch.setenv("DSPEX_TEST_STAND_IN", server.base_url)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    pytester.makeconftest(STAND_IN)
    pytester.makepyfile(test_replay=TEST)
    _dataset(pytester, 6)
    args = ["--dspex-cache-dir=cache", "--dspex-missing-golden=zero-shot", "-rA", *mode]
    recorded = pytester.runpytest_subprocess(*args)
    assert recorded.ret == 0, recorded.stdout.str()[-3000:]
    started = _starts(pytester)
    assert started >= 1 and server.requests == 6  # the embedded model (its stand-in) answered
    recorded.assert_outcomes(passed=7)

    replayed = pytester.runpytest_subprocess(*args, "--dspex-cache=replay")
    assert replayed.ret == 0, replayed.stdout.str()[-3000:]
    replayed.assert_outcomes(passed=7)  # the same verdict, from the same cache keys
    assert server.requests == 6
    assert _starts(pytester) == started  # not started: nothing could have asked it

    estimate = pytester.runpytest_subprocess(*args, "--dspex-estimate")
    assert estimate.ret == 0, estimate.stdout.str()[-3000:]
    assert re.search(r"a run would make 0 LM calls", estimate.stdout.str()), estimate.stdout.str()[-3000:]

    _dataset(pytester, 7)  # one example the recording never asked
    missed = pytester.runpytest_subprocess(*args, "--dspex-cache=replay")
    assert missed.ret == 1
    out = missed.stdout.str()
    assert re.search(r"cache_miss error: CacheMissError: replay mode", out) and "message: the app crashes on start (6)" in out, out[-3000:]
    assert server.requests == 6
    assert _starts(pytester) == started  # neither the estimate nor the replays started the model


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_a_replay_from_an_empty_cache_folder_says_one_miss_and_blames_no_url(pytester, monkeypatch, mode):
    """trial 4 F8/F9: on the embedded model a replay miss said "the endpoint URL (--dspex-base-url) is part of
    the cache key" (its answers are keyed by the model's name) and listed five identical misses, each with
    its own request key, instead of the one line an LM error of every example gets."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    pytester.makepyfile(test_replay=TEST)
    _dataset(pytester, 6)
    pytester.mkdir("empty")
    result = pytester.runpytest_subprocess("--dspex-cache=replay", "--dspex-cache-dir=empty",
                                           "--dspex-missing-golden=zero-shot", "-k", "not each", *mode)  # fmt: skip
    out = result.stdout.str()
    assert result.ret == 1, out
    assert "all 6 examples below 1.0 failed with the same LM error (cache_miss): CacheMissError: replay mode: no cached answer" in out, out
    assert "or check the model/settings match the recording and the requests are the recorded ones" in out
    assert "is part of the cache key" not in out
