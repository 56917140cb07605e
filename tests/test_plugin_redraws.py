"""Redraws against a noisy baseline (issue 18), through pytest.

When the golden's baseline draws disagree (an endpoint that is not repeatable), a gate run asks again,
with fresh draws, each example whose first answer disagrees with its baseline (``--dspex-redraws``): an
answer the program lost for good stays wrong, a noise flip is redrawn. Both test modes, with and
without xdist; a repeatable endpoint makes no extra call.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from pytest_dspex.testing.fake_server import FakeLMServer

from .test_plugin import MODES
from .test_plugin_baseline import COMPILE, project, report_rows, run

N = 100


class Noisy:
    """Every case has a stable answer (wrong for case numbers divisible by 10, else right); on each call
    10% of answers are drawn again (right or wrong at even odds). Cases in ``lost`` are always wrong
    (a program that lost those answers for good)."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = random.Random(seed)
        self.lost: set[int] = set()

    def __call__(self, body: dict[str, Any]) -> str:
        last = body["messages"][-1]["content"].rsplit("Message:", 1)[-1]
        case = int(re.search(r"case (\d+)", last).group(1))  # type: ignore[union-attr]
        right = "billing" if "charged" in last else "technical"
        wrong = "technical" if right == "billing" else "billing"
        if case in self.lost:
            return f" {wrong}"
        ok = self.rng.random() < 0.5 if self.rng.random() < 0.10 else case % 10 != 0
        return f" {right if ok else wrong}"


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def noisy() -> Noisy:
    return Noisy()


@pytest.fixture
def noisy_server(server_factory: Any, noisy: Noisy) -> FakeLMServer:
    s: FakeLMServer = server_factory(noisy)
    s.keep_bodies = False
    return s


def compiled(pytester: pytest.Pytester, server: FakeLMServer) -> dict[str, Any]:
    project(pytester, N)
    result = run(pytester, server, MODES["no-xdist"], *COMPILE, "-k", "not each")
    assert result.ret == 0, result.stdout.str()
    golden = json.loads((pytester.path / "__dspex__/test_triage/triage.json").read_text())
    return golden  # type: ignore[no-any-return]


def test_an_unchanged_program_on_a_noisy_endpoint_passes_and_every_view_counts_the_extra_calls(
    pytester: pytest.Pytester, noisy_server: FakeLMServer, mode: list[str]
) -> None:
    golden = compiled(pytester, noisy_server)
    assert golden["baseline"]["draws"] == 8  # the draws disagreed: a noisy baseline (8 by default)
    before = noisy_server.requests
    result = run(pytester, noisy_server, mode, "--dspex-report=report.json", "--dspex-markdown=report.md", "--dspex-html=report.html")
    assert result.ret == 0, result.stdout.str()
    asked = noisy_server.requests - before
    rows = report_rows(pytester)
    comparisons = [rows[m]["comparison"] for m in ("dataset", "per-example")]
    assert all(c["test"] == "paired-redrawn" and c["verdict"] != "regressed" for c in comparisons), comparisons
    extra = sum(c["redraw_calls"] for c in comparisons)
    # one answer per example per test, and exactly the redraws the reports count
    assert asked == 2 * N + extra, (asked, comparisons)
    assert all(c["reasked"] >= 1 for c in comparisons), comparisons  # about one example in ten disagrees
    for c in comparisons:
        assert c["redraw_calls"] == c["reasked"]  # one redraw at most each (the default)
    out = result.stdout.str()
    assert re.search(r"vs golden: .*\[paired-redrawn\].*; \d+ examples? re-asked \(\d+ extra calls?\)", out), out
    md = (pytester.path / "report.md").read_text()
    assert re.search(r"\d+ examples? re-asked \(\d+ extra calls?\) against the golden's noisy baseline", md), md
    assert "re-asked" in (pytester.path / "report.html").read_text()
    record = next(r for r in rows["dataset"]["records"] if r.get("redraws") is not None)
    assert record["redraws"] in ([0.0], [1.0])  # the redraw's score, beside the first answer's


def test_a_program_that_lost_answers_for_good_is_caught_on_a_noisy_endpoint(
    pytester: pytest.Pytester, noisy_server: FakeLMServer, noisy: Noisy, mode: list[str]
) -> None:
    compiled(pytester, noisy_server)
    noisy.lost = {1, 3, 5, 7, 9, 11}  # 6 of 100 stably-right answers, now always wrong
    result = run(pytester, noisy_server, mode, "--dspex-report=report.json")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*regression against the golden: * of 100 shared examples were wrong on every answer*"])
    rows = report_rows(pytester)
    for m in ("dataset", "per-example"):
        c = rows[m]["comparison"]
        assert c["verdict"] == "regressed" and c["test"] == "paired-redrawn"
        assert {f"ex-{i}" for i in noisy.lost} <= set(c["regressions"]), c["regressions"]


def test_a_repeatable_endpoint_makes_no_extra_call(pytester: pytest.Pytester, server_factory: Any, mode: list[str]) -> None:
    from .test_plugin_baseline import Model

    server = server_factory(Model())
    golden = compiled(pytester, server)
    assert golden["baseline"]["draws"] == 2  # two passes that agree: a repeatable endpoint
    before = server.requests
    result = run(pytester, server, mode, "--dspex-report=report.json")
    assert result.ret == 0, result.stdout.str()
    assert server.requests - before == 2 * N  # one answer per example per test, nothing re-asked
    assert "re-asked" not in result.stdout.str()
    assert {r["comparison"]["test"] for r in report_rows(pytester).values()} == {"mcnemar-exact"}


def test_redraws_off_asks_each_example_once(pytester: pytest.Pytester, noisy_server: FakeLMServer) -> None:
    compiled(pytester, noisy_server)
    before = noisy_server.requests
    result = run(pytester, noisy_server, MODES["no-xdist"], "--dspex-redraws=0", "--dspex-report=report.json")
    assert result.ret == 0, result.stdout.str()
    assert noisy_server.requests - before == 2 * N
    assert {r["comparison"]["test"] for r in report_rows(pytester).values()} == {"paired-noisy-baseline"}


def test_a_negative_redraws_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--dspex-redraws=-1", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dspex-redraws must be >= 0 (0: never re-ask), got -1*"])


class Alternating:
    """Right on every case, except: a case in ``noisy`` is right and wrong by turns (its own count of
    calls: right on its 1st, 3rd, ... answer), so the baseline's draws disagree on it; ``unlucky()``
    makes each noisy case's next answer wrong (a run whose first answers all drew badly, the redraw
    right again); a case in ``lost`` is always wrong (an answer the program lost for good)."""

    def __init__(self, noisy: set[int]) -> None:
        self.noisy = noisy
        self.lost: set[int] = set()
        self.calls: dict[int, int] = {}

    def __call__(self, body: dict[str, Any]) -> str:
        last = body["messages"][-1]["content"].rsplit("Message:", 1)[-1]
        case = int(re.search(r"case (\d+)", last).group(1))  # type: ignore[union-attr]
        right = "billing" if "charged" in last else "technical"
        wrong = "technical" if right == "billing" else "billing"
        if case in self.lost:
            return f" {wrong}"
        if case in self.noisy:
            k = self.calls.get(case, 0)
            self.calls[case] = k + 1
            return f" {right if k % 2 == 0 else wrong}"
        return f" {right}"

    def unlucky(self) -> None:
        self.calls = {c: 1 for c in self.noisy}


@pytest.mark.parametrize("test", ["dataset", "per-example"])
def test_a_small_gate_set_does_not_read_the_endpoints_noise_as_a_regression_by_the_tolerance(
    pytester: pytest.Pytester, server_factory: Any, mode: list[str], test: str
) -> None:
    # 20 examples (underpowered: the tolerance applies too), 6 of them noisy: baseline 0.85 over 8 draws.
    # A run of the unchanged program whose 6 first answers all drew wrong scores 0.70 (a drop of 0.15,
    # three times the tolerance) — the endpoint's own noise, not a regression; a run that also lost 4
    # stable answers for good (0.50) is one.
    model = Alternating(noisy={14, 15, 16, 17, 18, 19})
    server = server_factory(model)
    project(pytester, 20)
    compiled = run(pytester, server, MODES["no-xdist"], *COMPILE, "-k", "not each")
    assert compiled.ret == 0, compiled.stdout.str()
    golden = json.loads((pytester.path / "__dspex__/test_triage/triage.json").read_text())
    assert golden["baseline"]["draws"] == 8 and golden["baseline"]["score"] == pytest.approx(0.85)
    select = ["-k", "each" if test == "per-example" else "not each"]
    model.unlucky()
    result = run(pytester, server, mode, *select, "--dspex-report=report.json", "--dspex-markdown=report.md")
    out = result.stdout.str()
    assert result.ret == 0, out
    c = report_rows(pytester)[test]["comparison"]
    assert c["current_score"] == pytest.approx(0.70) and c["underpowered"] and c["noise_sd"] > 0, c
    assert re.search(rf"triage \[{test}\] vs golden: no change: delta -0\.150 .*\[paired-redrawn\]", out), out
    assert "regression by the tolerance" not in out and "regression by the tolerance" not in (pytester.path / "report.md").read_text()
    model.unlucky()
    model.lost = {0, 2, 4, 6}
    lost = run(pytester, server, mode, *select, "--dspex-report=report.json", "--dspex-markdown=report.md")
    assert lost.ret == 1, lost.stdout.str()
    c = report_rows(pytester)[test]["comparison"]
    assert c["current_score"] == pytest.approx(0.50), c
    assert {f"ex-{i}" for i in model.lost} <= set(c["regressions"]), c
