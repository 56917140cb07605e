"""The reliability suite (DESIGN §9): faults never abort a run and every example is accounted for."""

from __future__ import annotations

import json

import pytest

import pytest_dspex as dspex
from pytest_dspex.testing.fake_server import Faults

from .conftest import Triage, team_matches, triage_examples


def test_mixed_faults_on_500_examples(server_factory, make_lm):
    faults = Faults(http_500=0.10, http_429=0.10, retry_after=0.02, garbled=0.05, stall=0.02, stall_s=3, seed=11)
    server = server_factory(latency=0.02, faults=faults)
    lm = make_lm(server, timeout=0.4, concurrency=32, backoff_base=0.5)  # library defaults otherwise
    result = dspex.Evaluate(triage_examples(500), team_matches, concurrency=32)(dspex.Predict(Triage, lm=lm))
    assert result.n == 500 and sorted(r.index for r in result.records) == list(range(500))
    assert all(r.error_kind is None or r.error for r in result.records)  # an error always says what
    assert len([r for r in result.records if r.error_kind is None]) >= 495  # >= 99% scored
    assert result.score >= 0.99
    injected = sum(server.counts[k] for k in ("http_500", "http_429", "garbled", "stall"))
    assert injected >= 100 and result.usage.retries >= 100


class TestSecrets:
    CANARY = "sk-CANARY-5f2c9e"

    @pytest.mark.parametrize("way", ["env", "url"])
    def test_canary_key_is_nowhere_on_disk_or_in_output(self, pytester, server_factory, monkeypatch, way):
        server = server_factory(faults=Faults(http_500=0.3, garbled=0.1, seed=2))
        base_url = server.base_url
        if way == "env":
            monkeypatch.setenv("OPENAI_API_KEY", self.CANARY)
        else:  # dspex_base_url with credentials: they move into the Authorization header
            monkeypatch.delenv("OPENAI_API_KEY", raising=False)
            base_url = base_url.replace("http://", f"http://user:{self.CANARY}@")
        pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(12)) + "\n"})
        pytester.makefile(".jsonl", **{"data/train": "\n".join(json.dumps(e.toDict()) for e in triage_examples(12)) + "\n"})
        pytester.makepyfile(
            test_secret='''
import logging
import pytest
import pytest_dspex as dspex

triage = dspex.Predict("message -> team")

def metric(e, p, t=None):
    return e.team == p.team

@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(metric, threshold=0.99)
def test_triage(dspex_evaluate, dspex_lm):
    logging.getLogger("x").warning("lm is %r", dspex_lm)
    dspex_evaluate("data/dev.jsonl")

def test_traceback(dspex_lm):
    raise RuntimeError(f"boom with {dspex_lm!r}")
'''
        )
        args = [
            f"--dspex-base-url={base_url}", "--dspex-model=fake-model", "--dspex-retries=0",
            "--dspex-cache-dir=cache", "--dspex-report=report.json", "--junitxml=junit.xml",
            "--log-level=DEBUG", "--log-file=run.log", "-p", "no:xdist", "--showlocals", "-vv",
        ]
        compiled = pytester.runpytest_subprocess(*args, "--dspex-compile")
        normal = pytester.runpytest_subprocess(*args)
        assert compiled.ret == 1 and normal.ret == 1
        for r in (compiled, normal):
            assert self.CANARY not in r.stdout.str() + r.stderr.str()
        files = [p for p in pytester.path.rglob("*") if p.is_file()]
        # (whether compile writes a golden after this many errors is the error budget's call; any file it writes is checked)
        assert any(p.name == "cache.db" for p in files)
        for p in files:
            assert self.CANARY.encode() not in p.read_bytes(), p
        assert any("user:" in h.get("Authorization", "") or h.get("Authorization", "").startswith("Basic ")
                   for h in server.headers) == (way == "url")  # fmt: skip


def test_cache_shared_by_four_workers_has_no_corrupt_entries(pytester, server_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory()
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(40)) + "\n"})
    pytester.makepyfile(
        test_shared='''
import pytest
import pytest_dspex as dspex

@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(lambda e, p, t=None: e.team == p.team, threshold=0.9)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''
    )
    args = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache-dir=cache",
            "--dspex-missing-golden=zero-shot", "-n", "4"]  # fmt: skip
    assert pytester.runpytest_subprocess(*args).ret == 0
    assert server.requests == 40
    cache = dspex.ResponseCache(pytester.path / "cache", "replay")
    assert len(cache) == 40
    for key in list(cache._disk):
        json.loads(cache._disk.get(key))  # every entry is complete JSON
    cache.close()
    again = pytester.runpytest_subprocess(*args[:-2], "--dspex-cache=replay", "-n", "4")
    assert again.ret == 0 and server.requests == 40


def test_compile_with_four_workers_writes_each_of_six_goldens_once(pytester, server_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory()
    rows = "\n".join(json.dumps(e.toDict()) for e in triage_examples(8)) + "\n"
    pytester.makefile(".jsonl", **{"data/train": rows, "data/dev": rows})
    pytester.makeconftest(
        "def pytest_dspex_compile_result(program, result, outcome, path):\n"
        "    with open('compiles.log', 'a') as f:\n"
        "        f.write(f'{program} {outcome}\\n')\n"
    )
    body = ["import pytest", "import pytest_dspex as dspex", "def m(e, p, t=None):\n    return e.team == p.team"]
    for i in range(6):
        body.append(
            f'p{i} = dspex.Predict("message -> team")\n'
            f'@pytest.mark.dspex_program(p{i}, name="prog{i}", trainset="data/train.jsonl")\n'
            f"@pytest.mark.dspex_metric(m, threshold=0.5)\n"
            f'@pytest.mark.dspex_dataset("data/dev.jsonl")\n'
            f"def test_prog{i}_each(dspex_example, dspex_predict):\n    dspex_predict(dspex_example)\n"
        )
    pytester.makepyfile(test_many="\n\n".join(body))
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "--dspex-compile", "-n", "4"
    )
    assert result.ret == 0, result.stdout.str()
    lines = sorted((pytester.path / "compiles.log").read_text().splitlines())
    assert lines == [f"prog{i} created" for i in range(6)]
    for i in range(6):
        data = json.loads((pytester.path / f"__dspex__/test_many/prog{i}.json").read_text())
        assert data["program"] == f"prog{i}" and data["scores"]["validation"]["n"] == 8
