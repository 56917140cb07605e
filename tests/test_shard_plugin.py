"""End to end through pytest: sharded runs combine into the unsharded verdict; the Redis cache option.

Skipped until the plugin has the options (``--dspex-shard``, ``--dspex-cache-url``): the wiring is
the lead's (see H6's report). Every run is a real pytest in a subprocess (pytester), against a
loopback fake LM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_dspex.evaluation.sharding import shard_of
from pytest_dspex.reports.combine import combine_files
from pytest_dspex.testing.fake_server import FakeLMServer, triage_responder

from .needs import REDIS_INSTALL, need
from .redis_server import RedisServer, redis_server_binary
from .test_plugin import TRIAGE_PROGRAM

N = 30
VERDICT_FIELDS = ("score", "n", "ci95", "errors", "errors_by_kind", "infra_errors", "verdict", "comparison")

TEST_FILE = TRIAGE_PROGRAM + '''
@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.3)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(triage, name="triage_each", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.3)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


def rows(n: int, offset: int = 0) -> str:
    out = []
    for i in range(offset, offset + n):
        msg = f"case {i}: I was charged twice" if i % 2 else f"case {i}: the app crashes on start"
        out.append({"id": f"ex-{i}", "message": msg, "team": "billing" if i % 2 else "technical"})
    return "\n".join(json.dumps(r) for r in out) + "\n"


@pytest.fixture
def lm_server() -> Iterator[FakeLMServer]:
    # right on case N when N % 3 == 0: a score near 1/3, misses and hits on every shard
    server = FakeLMServer(lambda body: triage_responder(body, pass_every=3)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-CANARY-shards")
    for var in ("DSPEX_SHARD", "CI_NODE_INDEX", "CI_NODE_TOTAL", "CIRCLE_NODE_INDEX", "CIRCLE_NODE_TOTAL",
                "BUILDKITE_PARALLEL_JOB", "BUILDKITE_PARALLEL_JOB_COUNT"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    pytester.makefile(".jsonl", **{"data/train": rows(9, 300), "data/dev": rows(N)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=TEST_FILE)
    return pytester


def run(pytester: pytest.Pytester, server: FakeLMServer, *args: str) -> pytest.RunResult:
    opts = [
        "--dspex-model=fake-model",
        f"--dspex-base-url={server.base_url}",
        "--dspex-retries=0",
        "-p",
        "no:cacheprovider",
    ]
    return pytester.runpytest_subprocess(*opts, *args, timeout=180)


def programs(path: Path) -> dict[str, dict[str, Any]]:
    return {p["program"]: p for p in json.loads(path.read_text())["programs"]}


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_three_shards_combine_into_the_unsharded_verdict(
    project: pytest.Pytester, lm_server: FakeLMServer, xdist: list[str]
) -> None:
    root = project.path
    compiled = run(project, lm_server, "-p", "no:xdist", "--dspex-compile", "--dspex-cache=off")
    assert compiled.ret == 0, compiled.stdout.str()
    whole = run(project, lm_server, *xdist, "--dspex-report=whole.json")
    assert whole.ret == 0, whole.stdout.str()
    paths = []
    for k in (1, 2, 3):
        shard = run(project, lm_server, *xdist, f"--dspex-shard={k}/3", f"--dspex-report=shard-{k}.json")
        # a shard does not judge its share (a third of the examples fails near the threshold by chance):
        # it passes, says so per program and leaves the gate to combine
        assert shard.ret == 0, shard.stdout.str()
        report = json.loads((root / f"shard-{k}.json").read_text())
        assert report["shard"] == {"index": k, "count": 3}
        for row in report["programs"]:
            assert all(shard_of(r["key"], 3) == k for r in row["records"])
            assert row["dataset_size"] == N
            assert row["verdict"]["kind"] == "deferred" and row["comparison"] is None
            mode = row["mode"]
            shard.stdout.fnmatch_lines([
                f"{row['program']} [[]{mode}]: shard {k}/3: {row['n']} of {N} examples; "
                "gate deferred to `python -m pytest_dspex combine`"
            ])  # fmt: skip
        paths.append(str(root / f"shard-{k}.json"))
    merged = combine_files(paths, rootdir=root)
    reference = programs(root / "whole.json")
    for row in merged["programs"]:
        ref = reference[row["program"]]
        assert {f: row[f] for f in VERDICT_FIELDS} == {f: ref[f] for f in VERDICT_FIELDS}, row["program"]
        assert row["comparison"]["shared"] == N  # the paired gate ran on all examples, merged from 3 shards
        assert [r["key"] for r in row["records"]] == [r["key"] for r in ref["records"]]
    assert merged["passed"] == json.loads((root / "whole.json").read_text())["passed"]


def test_the_shard_comes_from_the_ci_environment_only_when_asked_and_bad_values_are_usage_errors(
    project: pytest.Pytester, lm_server: FakeLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(project, lm_server, "-p", "no:xdist", "--dspex-compile", "--dspex-cache=off")
    monkeypatch.setenv("CI_NODE_INDEX", "2")
    monkeypatch.setenv("CI_NODE_TOTAL", "3")

    def collected(*args: str) -> list[str]:
        result = run(project, lm_server, "-p", "no:xdist", "-k", "each", "--co", "-q", *args)
        return sorted(line.split("[", 1)[1].rstrip("]") for line in result.stdout.lines if "test_triage_each[" in line)

    # GitLab's parallel: alone does not shard the LM examples (issue 19): every example is collected
    assert collected() == sorted(f"ex-{i}" for i in range(N))
    expected = sorted(f"ex-{i}" for i in range(N) if shard_of(f"ex-{i}", 3) == 2)
    assert collected("--dspex-shard=ci") == expected
    project.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_shard = ci\n")
    assert collected() == expected
    project.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    bad = run(project, lm_server, "-p", "no:xdist", "--dspex-shard=4/3")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--dspex-shard='4/3': the shard index must be between 1 and 3*"])
    # compile is one writer: never sharded (here the shard comes from GitLab's variables)
    compile_in_shard = run(project, lm_server, "-p", "no:xdist", "--dspex-compile", "--dspex-shard=ci")
    assert compile_in_shard.ret == pytest.ExitCode.USAGE_ERROR
    compile_in_shard.stderr.fnmatch_lines(["*--dspex-compile is not sharded*shard 2/3 (from GitLab CI*"])
    assert run(project, lm_server, "-p", "no:xdist", "--dspex-compile").ret == 0


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_ci_parallel_variables_alone_keep_the_gate(
    project: pytest.Pytester, lm_server: FakeLMServer, monkeypatch: pytest.MonkeyPatch, xdist: list[str]
) -> None:
    """Issue 19: with CI_NODE_INDEX=1 CI_NODE_TOTAL=2, a gate that fails unsharded exited 0 with "gate
    deferred". The gate is judged on every example, and the summary says why the variables were ignored."""
    run(project, lm_server, "-p", "no:xdist", "--dspex-compile", "--dspex-cache=off")
    project.makepyfile(test_triage=TEST_FILE.replace("threshold=0.3", "threshold=0.9"))  # a third is right
    monkeypatch.setenv("CI_NODE_INDEX", "1")
    monkeypatch.setenv("CI_NODE_TOTAL", "2")
    result = run(project, lm_server, *xdist, "--dspex-cache=off", "--dspex-report=r.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    report = json.loads((project.path / "r.json").read_text())
    assert report["shard"] is None and not report["passed"]
    assert all(p["n"] == N and p["verdict"]["kind"] == "below_threshold" for p in report["programs"])
    assert "deferred" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*CI_NODE_INDEX=1, CI_NODE_TOTAL=2 are set: not sharded*--dspex-shard=ci*"])


@pytest.fixture
def redis_url() -> Iterator[str]:
    binary = redis_server_binary()
    need("redis-server", "not installed" if binary is None else None, REDIS_INSTALL)
    assert binary is not None
    pytest.importorskip("redis")
    server = RedisServer(binary).start()
    try:
        yield server.url
    finally:
        server.stop()


def test_cache_url_shares_answers_between_machines_and_replays_offline(
    project: pytest.Pytester, lm_server: FakeLMServer, redis_url: str
) -> None:
    root = project.path
    first = run(project, lm_server, "-n", "2", f"--dspex-cache-url={redis_url}", "--dspex-cache-dir=machine-a",
                "--dspex-missing-golden=zero-shot", "--dspex-report=a.json")  # fmt: skip
    assert first.ret == 0, first.stdout.str()
    calls = lm_server.requests
    assert calls >= N
    # another machine: its own (empty) cache directory, the same Redis; then offline, replay only
    lm_server.stop()
    second = run(project, lm_server, "-n", "2", f"--dspex-cache-url={redis_url}", "--dspex-cache-dir=machine-b",
                 "--dspex-cache=replay", "--dspex-missing-golden=zero-shot", "--dspex-report=b.json")  # fmt: skip
    assert second.ret == 0, second.stdout.str()
    for name, row in programs(root / "b.json").items():
        assert row["errors"] == 0, (name, row["errors_by_kind"])
        assert row["usage"]["cache_hits"] == row["n"] == N
        assert row["score"] == programs(root / "a.json")[name]["score"]
    assert not (root / "machine-b").exists()


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_a_shard_job_defers_a_failing_gate_and_leaves_the_job_summary_to_combine(
    project: pytest.Pytester, lm_server: FakeLMServer, monkeypatch: pytest.MonkeyPatch, xdist: list[str]
) -> None:
    root = project.path
    project.makepyfile(test_triage=TEST_FILE.replace("threshold=0.3", "threshold=0.9"))  # a third is right
    summary = root / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    common = ("--dspex-missing-golden=zero-shot", "--dspex-cache=off")
    whole = run(project, lm_server, *xdist, *common)
    assert whole.ret == pytest.ExitCode.TESTS_FAILED, whole.stdout.str()  # unsharded: the gate fails
    assert summary.exists()
    summary.unlink()
    shard = run(project, lm_server, *xdist, *common, "--dspex-shard=2/3", "--dspex-report=shard-2.json")
    assert shard.ret == 0, shard.stdout.str()
    shard.stdout.fnmatch_lines(["*triage_each [[]per-example]: shard 2/3: * of 30 examples; gate deferred to*"])
    assert "FAILED" not in shard.stdout.str()
    assert not summary.exists()  # the partial summary is not the job's: combine writes the whole one
    rows = programs(root / "shard-2.json")
    assert {r["verdict"]["kind"] for r in rows.values()} == {"deferred"}
    assert all(r["records"] for r in rows.values())


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_a_shard_jobs_markdown_html_and_junit_say_deferred_not_pass(
    project: pytest.Pytester, lm_server: FakeLMServer, xdist: list[str]
) -> None:
    """Trial 9 (T9-1): a shard job's share scoring 0.33 against a threshold of 0.9 read "✅ 1 program
    passed" in its markdown (the PR comment), "passed" in its HTML and ``dspex_verdict=pass`` in JUnit:
    its gate is deferred to ``combine``, and every view says so."""
    root = project.path
    project.makepyfile(test_triage=TEST_FILE.replace("threshold=0.3", "threshold=0.9"))  # a third is right
    shard = run(project, lm_server, *xdist, "--dspex-missing-golden=zero-shot", "--dspex-cache=off", "--dspex-shard=2/3",
                "--dspex-report=s.json", "--dspex-markdown=s.md", "--dspex-html=s.html", "--junitxml=s.xml")  # fmt: skip
    assert shard.ret == 0, shard.stdout.str()
    md = (root / "s.md").read_text()
    headline = md.splitlines()[0]
    assert "passed" not in headline and "✅" not in md, md
    assert "shard 2/3" in headline and "deferred" in headline and "combine" in headline, headline
    assert md.count("| ⏸️ shard 2/3:") == 2, md  # each row's verdict
    html = (root / "s.html").read_text()
    status = html.split('id="status">', 1)[1].split("<", 1)[0]
    assert "deferred" in status and "passed" not in status, status
    assert 'class="verdict pass"' not in html and 'class="badge pass"' not in html
    junit = (root / "s.xml").read_text()
    assert 'name="dspex_verdict" value="pass"' not in junit and 'name="dspex_aggregate_verdict" value="pass"' not in junit
    assert junit.count('name="dspex_verdict" value="deferred"') == 1, junit
    assert junit.count('name="dspex_aggregate_verdict" value="deferred"') == 1, junit
    # the CLI renders the shard's JSON the same way
    from pytest_dspex.cli import main

    assert main(["report", str(root / "s.json"), "--markdown", str(root / "again.md")]) == 0
    assert (root / "again.md").read_text().splitlines()[0] == headline


def test_a_program_exception_still_fails_its_item_in_a_shard_job(
    project: pytest.Pytester, lm_server: FakeLMServer
) -> None:
    broken = TEST_FILE.replace(
        "triage = dspex.Predict(Triage)",
        "class Broken(dspex.Module):\n"
        "    def __init__(self):\n        self.p = dspex.Predict(Triage)\n"
        "    def forward(self, message):\n"
        "        if 'case 3:' in message:\n            raise ValueError('boom on case 3')\n"
        "        return self.p(message=message)\n"
        "triage = Broken()",
    )
    project.makepyfile(test_triage=broken)
    shard = shard_of("ex-3", 3)
    result = run(project, lm_server, "-p", "no:xdist", "-k", "each", "--dspex-missing-golden=zero-shot",
                 "--dspex-cache=off", f"--dspex-shard={shard}/3")  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*FAILED*test_triage_each[[]ex-3]*boom on case 3*"])
    assert result.stdout.str().count("FAILED test_triage.py") == 1  # the gate itself is deferred
    result.stdout.fnmatch_lines([f"*triage_each [[]per-example]: shard {shard}/3: * of 30 examples; gate deferred*"])
