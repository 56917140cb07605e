"""The embedded server dying during a run is said as such (trial 4, F1): before, every example after it was
"connection refused" and the server's log was removed with the run's state folder, so nothing told why.
And a run whose every answer is cached does not start it (trial 4, F7).

No model needed: the run's "embedded server" is the fake OpenAI-compatible server, started where the
plugin starts llama.cpp (``embedded.ensure_server``), and a metric kills it (SIGKILL) at its first call.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFTEST = r'''
import json, os, subprocess, sys, time

from pytest_dspex.lm.local import embedded


def _fake_server(run_id, owner_pid, **kwargs):
    d = embedded._state_dir(run_id)
    with open("starts.log", "a") as f:  # how many times the run started "the model" (cwd: the project)
        f.write(f"{os.getpid()}\n")
    port = getattr(embedded, "_reserved_port", lambda _: None)(d / "server.json") or embedded._free_port()  # the URL the LM was given
    with open(d / "server.log", "wb") as log:
        log.write(b"llama_model_loader: loaded meta data\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "pytest_dspex.testing.fake_server", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    while not embedded._alive(url):
        time.sleep(0.05)
    (d / "server.json").write_text(json.dumps({"pid": proc.pid, "owner": owner_pid, "url": url}))
    embedded._started[run_id] = (proc, owner_pid)
    return url


embedded.ensure_server = _fake_server
'''

TEST = r'''
import json, os, signal
from pathlib import Path

import pytest
import pytest_dspex as dspex
from pytest_dspex.lm.local import embedded


def kill_the_server_once(example, prediction, trace=None):
    try:
        fd = os.open("killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return example.team == prediction.team
    os.close(fd)
    for d in embedded._local_root().iterdir():
        state = d / "server.json"
        if state.exists():
            os.kill(json.loads(state.read_text())["pid"], signal.SIGKILL)
    return example.team == prediction.team


@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(kill_the_server_once, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("dev.jsonl")
'''


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "n2"])
def test_a_server_that_died_during_the_run_is_named_with_how_and_its_log(pytester, monkeypatch, tmp_path, xdist):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("DSPEX_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the run's state folders, apart from others'
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_died=TEST)
    rows = "".join(json.dumps({"message": f"charged twice {i}", "team": "billing"}) + "\n" for i in range(12))
    pytester.path.joinpath("dev.jsonl").write_text(rows)
    result = pytester.runpytest_subprocess(*xdist, "--dspex-missing-golden=zero-shot", "--dspex-retries=0",
                                           "--dspex-concurrency=1", "-p", "no:cacheprovider")  # fmt: skip
    out = result.stdout.str()
    assert result.ret == 1, out
    assert "dspex: the embedded llama.cpp server (pid " in out, out
    assert "exited during the run (killed by SIGKILL)" in out, out
    assert "llama_model_loader: loaded meta data" in out  # the log's last lines, its request lines left out
    assert '"POST /v1/' not in out.split("exited during the run")[1].split("=====")[0]
    kept = out.split("its log: ")[1].split(";")[0]
    assert "loaded meta data" in Path(kept).read_text()  # the log kept where the line says, after the run


CACHED = r'''
import pytest
import pytest_dspex as dspex


@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(lambda e, p, t=None: True, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("dev.jsonl")


@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(lambda e, p, t=None: True, threshold=0.5)
@pytest.mark.dspex_dataset("dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "n2"])
def test_a_run_answered_from_the_cache_does_not_start_the_embedded_server(pytester, monkeypatch, tmp_path, xdist):
    """trial 4 F7: every answer cached, the llama.cpp server was still started (and the model loaded) for nothing:
    ~1.4 s CPU and ~3.5 s wall on a 15-item run."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("DSPEX_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cached=CACHED)
    rows = "".join(json.dumps({"message": f"charged twice {i}", "team": "billing"}) + "\n" for i in range(6))
    pytester.path.joinpath("dev.jsonl").write_text(rows)
    starts = pytester.path / "starts.log"
    args = [*xdist, "--dspex-missing-golden=zero-shot", "--dspex-cache-dir=answers", "-p", "no:cacheprovider"]
    first = pytester.runpytest_subprocess(*args)
    assert first.ret == 0, first.stdout.str()
    assert 1 <= len(starts.read_text().splitlines()) <= 2, starts.read_text()  # the cold run started it (a worker each at most)
    before = starts.read_text()
    again = pytester.runpytest_subprocess(*args)
    assert again.ret == 0, again.stdout.str()
    assert "every answer came from the LM cache" in again.stdout.str()
    assert starts.read_text() == before  # not started: nothing was asked of it
    assert not list((tmp_path / "xdg" / "pytest-dspex" / "local").glob("*/server.json"))  # nothing left behind
