"""Infrastructure is never a program's score (issue 19, item 4).

An unusable cache is one clear error (and the read-only modes work on a read-only cache); a
refusal is its own outcome kind, named in the verdict; a metric may return any real number or
bool-like value (NumPy, Decimal, Fraction); a metric that raises is a ``metric`` error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.evaluation.metrics import to_score
from pytest_dspex.testing.fake_server import FakeLMServer, Faults

from .conftest import Triage, triage_examples
from .needs import need
from .test_plugin import MODES, TRIAGE_PROGRAM
from .test_plugin import rows as plugin_rows

np = pytest.importorskip("numpy")

TESTS = (
    TRIAGE_PROGRAM
    + '''
@pytest.mark.dspex_program(triage, name="triage")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(triage, name="triage_each")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''
)


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def project(pytester: pytest.Pytester, n: int = 10, source: str = TESTS) -> None:
    pytester.makefile(".jsonl", **{"data/dev": plugin_rows(n, ids=True)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_missing_golden = zero-shot\n")
    pytester.makepyfile(test_triage=source)


def run(pytester: pytest.Pytester, server: FakeLMServer, *args: str) -> pytest.RunResult:
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-retries=0", "-p", "no:cacheprovider"]
    return pytester.runpytest_subprocess(*opts, *args, "--dspex-report=report.json", timeout=300)


def report_rows(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    return {r["mode"]: r for r in json.loads((pytester.path / "report.json").read_text())["programs"]}


# -- metric values ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "score"),
    [
        (np.int64(0), 0.0), (np.int64(1), 1.0), (np.False_, 0.0), (np.True_, 1.0), (np.float32(0.5), 0.5),
        (np.float64(0.25), 0.25), (np.array(1), 1.0), (Decimal("0.75"), 0.75), (Fraction(1, 4), 0.25),
        (True, 1.0), (0, 0.0), (0.5, 0.5),
    ],
)  # fmt: skip
def test_any_real_number_or_bool_like_is_a_score(value: Any, score: float) -> None:
    assert to_score(value, "m") == score


@pytest.mark.parametrize("value", [np.int64(2), np.float64(-0.1), Decimal("NaN"), Fraction(3, 2), "1", None, np.array([1]), 1j])
def test_values_out_of_range_or_not_numbers_stay_metric_errors(value: Any) -> None:
    with pytest.raises(dspex.MetricError, match="metric m returned"):
        to_score(value, "m")


def _evaluate(server: FakeLMServer, metric: Any, n: int = 8) -> dspex.EvaluationResult:
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache=None)
    try:
        return dspex.Evaluate(triage_examples(n), metric, concurrency=4)(dspex.Predict(Triage, lm=lm))
    finally:
        lm.close()


def test_numpy_and_decimal_metrics_score_the_program(server: FakeLMServer) -> None:
    for metric in (
        lambda ex, pred, trace=None: np.bool_(ex.team == pred.team),
        lambda ex, pred, trace=None: np.int64(ex.team == pred.team),
        lambda ex, pred, trace=None: Decimal(int(ex.team == pred.team)),
    ):
        result = _evaluate(server, metric)
        assert result.score == 1.0 and not result.errors_by_kind


def test_a_metric_that_raises_is_a_metric_error_not_the_programs(server: FakeLMServer) -> None:
    def broken(example: Any, prediction: Any, trace: Any = None) -> bool:
        raise KeyError("label")

    result = _evaluate(server, broken)
    assert result.errors_by_kind == {"metric": 8}
    assert "metric broken raised KeyError" in (result.records[0].error or "")


def test_a_program_that_raises_is_still_a_program_error(server: FakeLMServer) -> None:
    class Broken(dspex.Module):
        async def aforward(self, **kwargs: Any) -> Any:
            raise ValueError("bug")

    result = dspex.Evaluate(triage_examples(3), lambda e, p, t=None: True)(Broken())
    assert result.errors_by_kind == {"program": 3}


# -- an endpoint answering 5xx ------------------------------------------------------------------------
def test_an_endpoint_answering_500_is_named_as_failing_not_unreachable(
    pytester: pytest.Pytester, server_factory: Any, mode: list[str]
) -> None:
    # trial3 T8: the verdict said "lm_unavailable … could not reach the LM endpoint"; the 500 the endpoint
    # answered was only in the cut example lines
    server = server_factory(faults=Faults(http_500=1.0))
    project(pytester)
    result = run(pytester, server, *mode, "--dspex-cache=off")
    out = result.stdout.str()
    assert result.ret == 1 and server.requests > 0, out
    said = "the endpoint answered HTTP 500 Internal Server Error: it was reached and is failing (its logs say why), not unreachable"
    for row in report_rows(pytester).values():
        assert row["verdict"]["kind"] == "lm_errors" and said in row["verdict"]["reason"], row["verdict"]
    assert f"LM endpoint failing: {said} (this is not a low score)" in out
    assert "could not reach the LM endpoint" not in out


# -- refusals -----------------------------------------------------------------------------------
def test_a_refusal_is_its_own_kind_not_a_parse_error(server_factory: Any) -> None:
    server = server_factory(faults=Faults(refusal=1.0))
    result = _evaluate(server, lambda e, p, t=None: e.team == p.team, n=6)
    assert result.errors_by_kind == {"refused": 6}
    assert "refused" in (result.records[0].error or "")


def test_a_refused_run_says_refused_in_the_verdict(pytester: pytest.Pytester, server_factory: Any, mode: list[str]) -> None:
    server = server_factory(faults=Faults(refusal=1.0))
    project(pytester)
    result = run(pytester, server, "--dspex-cache=off", *mode)
    out = result.stdout.str()
    assert result.ret == 1
    assert "the model refused 10 of 10 examples" in out
    assert "parse" not in out
    rows = report_rows(pytester)
    for row in rows.values():
        assert row["errors_by_kind"] == {"refused": 10}
        assert "refused 10 of 10" in row["verdict"]["reason"]
    # per-example: a refusal is the model's answer, a miss (the aggregate gate fails), not an item failure
    assert "FAILED test_triage.py::test_triage_each[" not in out
    assert result.parseoutcomes().get("missed") == 10


def test_an_endpoint_answering_404_is_named_in_the_verdict_and_not_flooded(
    pytester: pytest.Pytester, server_factory: Any, mode: list[str]
) -> None:
    """Trial finding F3: a 404 read as "could not reach the LM endpoint" (lm_unavailable). The endpoint was
    reached and refused: the verdict names the status and what to check; the kind stays machine-readable."""
    server = server_factory(faults=Faults(http_404=1.0))
    project(pytester, 40)
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*opts, *mode, "--dspex-report=report.json", timeout=300)
    out = result.stdout.str()
    assert result.ret == 1
    said = ("LM errors: 40 of 40 examples could not be answered (lm_http: 40); the endpoint answered HTTP 404 Not Found: "
            "check --dspex-base-url (the URL up to /v1, e.g. http://host:8000/v1) and --dspex-model — over the error "
            "budget of 5% (not a low score)")  # fmt: skip
    assert out.count(said) >= 2, out[-3000:]  # both tests' verdicts
    assert "could not reach" not in out and "lm_unavailable" not in out
    for row in report_rows(pytester).values():
        assert row["errors_by_kind"] == {"lm_http": 40} and row["verdict"]["kind"] == "lm_errors"
        assert said in row["verdict"]["reason"]
    # the breaker stops it early: a handful of requests per process, not one per example and test (80)
    workers = 2 if "-n" in mode else 1
    assert server.requests <= 20 * workers, server.requests


# -- the cache ----------------------------------------------------------------------------------
def test_an_unusable_cache_is_one_clear_error_not_a_regression(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str]) -> None:
    project(pytester)
    (pytester.path / "cachefile").write_text("not a folder")
    result = run(pytester, server, "--dspex-cache-dir=cachefile", *mode)
    out = result.stdout.str()
    assert result.ret != 0
    assert "LM cache directory" in out and "cannot be used" in out and "--dspex-cache=read-only" in out
    assert "program:" not in out and "regressed" not in out and "below threshold" not in out
    assert out.count("FAILED test_triage") <= 2  # stopped at the first dspex test (one per worker at most)
    assert server.requests == 0


def _as_nobody() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.parametrize("cache_mode", ["read-only", "replay"])
def test_read_only_modes_work_on_a_read_only_cache_folder(
    pytester: pytest.Pytester, server: FakeLMServer, cache_mode: str, request: pytest.FixtureRequest
) -> None:
    prefix = _as_nobody()
    need("a read-only folder", None if prefix is not None else "running as root without setpriv", "apt-get install util-linux")
    assert prefix is not None
    project(pytester)
    recorded = run(pytester, server, "--dspex-cache-dir=.c", "-p", "no:xdist")
    assert recorded.ret == 0, recorded.stdout.str()
    requests = server.requests
    where = Path(tempfile.mkdtemp(prefix="dspex-ro-"))  # pytester's folder is private to root: a copy
    request.addfinalizer(lambda: shutil.rmtree(where, ignore_errors=True))
    where.chmod(0o755)
    project_dir = where / "p"
    shutil.copytree(pytester.path, project_dir, ignore=shutil.ignore_patterns("runpytest-*", "report.json"))
    if prefix:
        subprocess.run(["chown", "-R", "65534:65534", str(project_dir)], check=True)
        subprocess.run(["chown", "-R", "0:0", str(project_dir / ".c")], check=True)
    for root, dirs, files in os.walk(project_dir / ".c"):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o555)
    os.chmod(project_dir / ".c", 0o555)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    if prefix:  # the unprivileged user must reach this interpreter (tox keeps .tox private, pyenv lives in /root)
        probe = subprocess.run([*prefix, sys.executable, "-c", "import pytest, pytest_dspex"], cwd=project_dir, env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"an unprivileged user cannot run this interpreter ({sys.executable}): {last}")
    args = ["-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", f"--dspex-base-url={server.base_url}",
            "--dspex-model=fake-model", "--dspex-cache-dir=.c"]  # fmt: skip
    ran = subprocess.run([*prefix, sys.executable, *args, f"--dspex-cache={cache_mode}"], cwd=project_dir, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "11 passed" in ran.stdout
    assert server.requests == requests  # every answer from the read-only cache
    on = subprocess.run([*prefix, sys.executable, *args], cwd=project_dir, env=env, capture_output=True, text=True, timeout=300)
    assert on.returncode != 0
    assert "cannot be used" in on.stdout and "--dspex-cache=read-only" in on.stdout
    assert "program:" not in on.stdout and "below threshold" not in on.stdout


def test_a_base_url_with_a_wrong_path_says_so_in_the_verdict_and_once_for_all_examples(
    pytester: pytest.Pytester, server_factory: Any, mode: list[str]
) -> None:
    """Trial2 F8: ``--dspex-base-url=http://host/v2`` (404s): the hint that the path has no /v1 was only in
    the captured log and cut at 100 characters in the "worst examples", which listed 5 identical errors."""
    server = server_factory()
    wrong = server.base_url.removesuffix("/v1") + "/v2"
    project(pytester, 10)
    opts = [f"--dspex-base-url={wrong}", "--dspex-model=fake-model", "--dspex-cache=off", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*opts, *mode, "--dspex-report=report.json", timeout=300)
    out = result.stdout.str()
    assert result.ret == 1, out
    hint = "the base URL's path '/v2' has no /v1: OpenAI-compatible servers answer at <host>/v1/chat/completions"
    for row in report_rows(pytester).values():
        assert hint in row["verdict"]["reason"], row["verdict"]["reason"]
    verdicts = [line for line in out.splitlines() if "LM errors: 10 of 10 examples could not be answered" in line]
    assert verdicts and all(hint in line for line in verdicts), out[-3000:]
    # the examples all failed with the same error: one line with the count, not 5 identical ones
    assert "worst examples:" not in out, out[-3000:]
    assert out.count("all 10 examples below 1.0 failed with the same LM error (lm_http): HTTP 404") >= 1, out[-3000:]


def test_a_404_for_a_model_name_with_litellms_provider_prefix_says_to_drop_it(
    pytester: pytest.Pytester, server_factory: Any, mode: list[str]
) -> None:
    """Trial 9: a DSPy user's ``--dspex-model=openai/gpt-4o-mini`` (LiteLLM's spelling) is sent as given and
    the endpoint answers 404; the verdict said only "check --dspex-base-url … and --dspex-model"."""
    server = server_factory(faults=Faults(http_404=1.0))
    project(pytester, 10)
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=openai/gpt-4o-mini", "--dspex-cache=off",
            "-p", "no:cacheprovider"]  # fmt: skip
    result = pytester.runpytest_subprocess(*opts, *mode, "--dspex-report=report.json", timeout=300)
    assert result.ret == 1, result.stdout.str()
    hint = "the model name 'openai/gpt-4o-mini' has LiteLLM's provider prefix 'openai/'"
    for row in report_rows(pytester).values():
        assert hint in row["verdict"]["reason"] and "--dspex-model=gpt-4o-mini" in row["verdict"]["reason"], row["verdict"]

