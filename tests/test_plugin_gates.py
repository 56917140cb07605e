"""Gates you can trust (issue 11), through pytest: the paired gate, repeats, stale goldens, compile guards.

A loopback endpoint answers each question deterministically; the tests flip answers between the
compile run and the gate run. Scenarios run with ``-n 2`` and with ``-p no:xdist`` where the
controller/worker split matters.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from pytest_dspex.evaluation.stats import clustered_confidence_interval
from pytest_dspex.testing.fake_server import FakeLMServer

from .test_plugin import MODES, TRIAGE_PROGRAM
from .test_plugin import rows as plugin_rows

# the whole-dataset test alone
DATASET_TEST = (
    TRIAGE_PROGRAM
    + '''
@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''
)

TEST_FILE = (
    DATASET_TEST
    + '''
@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''
)

GOLDEN = "__dspex__/test_triage/triage.json"


def rows(n: int, offset: int = 0, *, ids: bool = True) -> str:
    """Examples with ids (the paired gate compares per example key)."""
    return plugin_rows(n, offset, ids=ids)


class Model:
    """A zero-shot triage endpoint, right on every case except those in ``wrong``; a case in
    ``flaky`` is right on its odd-numbered calls only (1st, 3rd, ...), so repeats disagree."""

    def __init__(self) -> None:
        self.wrong: set[int] = set()
        self.flaky: set[int] = set()
        self.calls: dict[int, int] = {}

    def __call__(self, body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        if "JSON" in system:
            return "no json here"
        last = body["messages"][-1]["content"].rsplit("Message:", 1)[-1]
        case = int(re.search(r"case (\d+)", last).group(1))  # type: ignore[union-attr]
        right = "billing" if "charged" in last else "technical"
        wrong = "technical" if right == "billing" else "billing"
        self.calls[case] = self.calls.get(case, 0) + 1
        if case in self.flaky:
            return f" {right if self.calls[case] % 2 else wrong}"
        return f" {wrong if case in self.wrong else right}"


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def model() -> Model:
    return Model()


@pytest.fixture
def server(server_factory: Any, model: Model) -> FakeLMServer:
    s: FakeLMServer = server_factory(model)
    s.keep_bodies = False
    return s


def project(pytester: pytest.Pytester, n: int = 10, *, source: str = TEST_FILE, dev: str | None = None) -> None:
    pytester.makefile(".jsonl", **{"data/train": rows(4, 1000), "data/dev": dev if dev is not None else rows(n)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=source)


def run(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str], *args: str) -> pytest.RunResult:
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=0"]
    opts += ["-p", "no:cacheprovider"]
    return pytester.runpytest_subprocess(*opts, *mode, *args, timeout=300)


# a quick compile: the zero-shot and labeled-only candidates, one bootstrapped
COMPILE = ["--dspex-compile", "--dspex-candidates=0", "--dspex-demos=1", "--dspex-labeled-demos=1"]


def compile_golden(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str], *args: str) -> dict[str, Any]:
    result = run(pytester, server, mode, *COMPILE, "-k", "not each", *args)
    assert result.ret == 0, result.stdout.str()
    return json.loads((pytester.path / GOLDEN).read_text())  # type: ignore[no-any-return]


def report_rows(pytester: pytest.Pytester, name: str = "report.json") -> dict[str, dict[str, Any]]:
    report = json.loads((pytester.path / name).read_text())
    return {r["mode"]: r for r in report["programs"]}


class TestPairedGate:
    def test_examples_all_lost_to_lm_errors_are_none_measured_not_none_shared(self, pytester, server_factory, mode):
        # trial finding 3: every key is in the golden; they were not measured, not "not shared"
        from pytest_dspex.testing.fake_server import Faults

        project(pytester, 6)
        compile_golden(pytester, server_factory(), mode)
        failing = server_factory(faults=Faults(http_404=1.0))
        reports = ["--dspex-report=r.json", "--dspex-markdown=r.md", "--dspex-html=r.html"]
        result = run(pytester, failing, mode, *reports)
        assert result.ret == 1
        out = result.stdout.str()
        assert "LM errors: 6 of 6 examples could not be answered" in out
        for text in [out, *((pytester.path / f).read_text() for f in ("r.md", "r.html"))]:
            assert "none measured (6 lost to LM errors)" in text
            assert "none shared" not in text and "no examples shared" not in text
        assert "golden n/a (none measured (6 lost to LM errors))" in out
        comparisons = [r["comparison"] for r in json.loads((pytester.path / "r.json").read_text())["programs"]]
        assert [(c["shared"], c["lost"]) for c in comparisons] == [(0, 6), (0, 6)]

    def test_nine_flips_fail_the_paired_gate_that_the_tolerance_lets_through(self, pytester, server, model, mode):
        project(pytester, 200)
        golden = compile_golden(pytester, server, mode)
        assert golden["schema_version"] == 3 and golden["scores"]["validation"]["score"] == 1.0
        # chosen on the trainset (never on the gate's examples), then the baseline measured on the gate set
        assert golden["selection"]["set"] == "trainset" and golden["selection"]["n"] == 4
        baseline = golden["baseline"]
        assert baseline["n"] == 200 and "ex-7" in baseline["examples"] and baseline["score"] == 1.0
        assert baseline["draws"] == 2  # a repeatable endpoint: two draws that agree end it
        assert os.stat(pytester.path / GOLDEN).st_mode & 0o777 == 0o644
        flipped = [7, 20, 33, 46, 59, 72, 85, 98, 111]
        model.wrong = set(flipped)  # 9 of 200 right answers turn wrong: 1.000 -> 0.955
        result = run(pytester, server, mode, "--dspex-report=report.json", "--junitxml=junit.xml")
        assert result.ret == 1, result.stdout.str()
        keys = ", ".join(f"ex-{i}" for i in flipped)
        out = result.stdout.str()
        assert f"regression against the golden: 9 of 200 shared examples went pass -> fail ({keys})" in out
        assert re.search(
            r"delta -0\.045 \(95% CI -0\.0\d+\.\.-0\.0\d+\), p=0\.002 < alpha 0\.05 \[mcnemar-exact\]", out
        )
        result.stdout.fnmatch_lines([f"*triage ?dataset? vs golden: regressed: delta -0.045*pass -> fail: {keys}*"])
        result.stdout.fnmatch_lines([f"*triage ?per-example? vs golden: regressed: delta -0.045*pass -> fail: {keys}*"])
        by_mode = report_rows(pytester)
        for row in by_mode.values():
            # the tolerance gate would have passed: 0.955 is within 0.05 of the golden's 1.000
            assert row["score"] == pytest.approx(0.955) and row["score"] >= row["golden_score"] - row["tolerance"]
            assert row["verdict"]["kind"] == "regression" and row["verdict"]["passed"] is False
            c = row["comparison"]
            assert (c["verdict"], c["shared"], c["regressions"], c["fixes"]) == (
                "regressed",
                200,
                [f"ex-{i}" for i in flipped],
                [],
            )
            assert c["delta"] == pytest.approx(-0.045) and c["p_value"] == pytest.approx(0.5**9)
            assert c["delta_ci95"][0] < -0.045 < c["delta_ci95"][1] < 0 and c["underpowered"] is False
            assert row["alpha"] == 0.05
        props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "junit.xml").iter("property")}
        assert props["dspex_comparison"] == "regressed" and props["dspex_regressions"] == "9"
        assert float(props["dspex_p_value"]) == pytest.approx(0.5**9, rel=1e-3)
        # a stricter alpha than p: no detectable change, the gate passes
        lenient = run(pytester, server, mode, "--dspex-alpha=0.001", "--dspex-report=lenient.json")
        assert lenient.ret == 0, lenient.stdout.str()
        for row in report_rows(pytester, "lenient.json").values():
            assert row["comparison"]["verdict"] == "no change" and row["verdict"]["passed"] is True

    def test_ten_flips_list_the_first_ten_keys_and_how_many_more(self, pytester, server, model):
        project(pytester, 120)
        compile_golden(pytester, server, ["-p", "no:xdist"])
        model.wrong = set(range(0, 24, 2))  # 12 flips
        result = run(pytester, server, ["-p", "no:xdist"], "-k", "not each")
        assert result.ret == 1
        shown = ", ".join(f"ex-{i}" for i in range(0, 20, 2))
        assert f"12 of 120 shared examples went pass -> fail ({shown} and 2 more)" in result.stdout.str()

    def test_small_sets_are_underpowered_and_keep_the_tolerance(self, pytester, server, model, mode):
        project(pytester, 10)
        model.wrong = {3}
        compile_golden(pytester, server, mode)
        model.wrong = set()  # one fix: no detectable change, and n=10 could not show a drop of 0.05
        ok = run(pytester, server, mode, "--dspex-report=report.json")
        assert ok.ret == 0, ok.stdout.str()
        ok.stdout.fnmatch_lines([
            "*triage ?dataset? vs golden: no change: delta +0.100*fail -> pass: ex-3*",
            # said once for both modes' comparisons (trial2 F9), not at the end of each
            "underpowered: both gate sets compared with a golden have fewer than 100 shared examples*",
        ])  # fmt: skip
        for row in report_rows(pytester).values():
            c = row["comparison"]
            assert (c["verdict"], c["underpowered"], c["needed_n"], c["fixes"]) == ("no change", True, 100, ["ex-3"])
        model.wrong = {0, 2}  # two flips, p = 0.25: the paired test cannot tell, the tolerance can
        bad = run(pytester, server, mode)
        assert bad.ret == 1
        bad.stdout.fnmatch_lines([
            "*regression: 0.800 < golden 0.900 - tolerance 0.050 on the 10 shared examples (2 went pass -> fail: ex-0, ex-2);"
            " the paired test is underpowered (needs n >= 100), so the tolerance applies*"
        ])  # fmt: skip

    def test_a_v1_golden_falls_back_to_the_tolerance_gate(self, pytester, server, model, mode):
        project(pytester, 10)
        golden = compile_golden(pytester, server, mode)
        v1 = {k: v for k, v in golden.items() if k not in ("signature_fingerprint", "prompts", "selection", "baseline")}
        v1["schema_version"] = 1  # a v1 golden was chosen and scored on the gate's dataset, no per-example outcomes
        v1["datasets"]["validation"] = golden["baseline"]["dataset"]
        v1["scores"]["validation"] = {"score": golden["baseline"]["score"], "n": golden["baseline"]["n"]}
        (pytester.path / GOLDEN).write_text(json.dumps(v1))
        passed = run(pytester, server, mode, "--dspex-report=report.json")
        assert passed.ret == 0, passed.stdout.str()
        assert all(r["comparison"] is None for r in report_rows(pytester).values())
        model.wrong = {0, 2}
        failed = run(pytester, server, mode)
        assert failed.ret == 1
        failed.stdout.fnmatch_lines(["*regression: 0.800 < golden 1.000 - tolerance 0.050*"])
        assert "vs golden" not in failed.stdout.str()


class TestRepeats:
    @pytest.mark.parametrize("which", ["not each", "each"])
    def test_repeats_are_cached_apart_and_replay_reproduces_every_one(self, pytester, server, model, mode, which):
        project(pytester, 10)
        model.flaky = {3}
        args = ["-k", which, "--dspex-missing-golden=zero-shot", "--dspex-repeats=3"]
        record = run(pytester, server, mode, *args, "--dspex-cache=on", "--dspex-report=record.json")
        assert record.ret == 0, record.stdout.str()
        assert server.requests == 30  # each repeat its own cache entry: 10 examples x 3
        (row,) = report_rows(pytester, "record.json").values()
        assert row["flaky"] == ["ex-3"] and row["repeats"] == 3
        recs = {r["key"]: r for r in row["records"]}
        assert recs["ex-3"]["repeats"] == [1.0, 0.0, 1.0] and recs["ex-3"]["score"] == pytest.approx(2 / 3)
        assert all(r["repeats"] == [1.0, 1.0, 1.0] for k, r in recs.items() if k != "ex-3")
        assert row["score"] == pytest.approx((9 + 2 / 3) / 10)
        assert row["ci95"] == pytest.approx(list(clustered_confidence_interval([r["repeats"] for r in row["records"]])))
        record.stdout.fnmatch_lines(["*triage ?*? 1 flaky example(s), their 3 repeats disagree: ex-3*"])

        replay = run(pytester, server, mode, *args, "--dspex-cache=replay", "--dspex-report=replay.json")
        assert replay.ret == 0, replay.stdout.str()
        assert server.requests == 30  # nothing new asked: every repeat came from the cache
        (again,) = report_rows(pytester, "replay.json").values()
        fields = ("index", "key", "score", "repeats", "prediction", "error_kind")
        assert [{f: r[f] for f in fields} for r in again["records"]] == [
            {f: r[f] for f in fields} for r in row["records"]
        ]
        assert again["flaky"] == ["ex-3"] and again["usage"]["cache_hits"] == 30

    def test_repeats_and_alpha_have_ini_twins(self, pytester, server):
        project(pytester, 4)
        pytester.makeini(
            "[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_repeats = 2\ndspex_alpha = 0.2\n"
        )
        result = run(
            pytester,
            server,
            ["-p", "no:xdist"],
            "-k",
            "not each",
            "--dspex-missing-golden=zero-shot",
            "--dspex-report=r.json",
        )
        assert result.ret == 0, result.stdout.str()
        (row,) = report_rows(pytester, "r.json").values()
        assert (row["repeats"], row["alpha"], server.requests) == (2, 0.2, 8)
        assert all(r["repeats"] == [1.0, 1.0] for r in row["records"])

    def test_repeats_option_is_checked(self, pytester):
        project(pytester, 2)
        bad = pytester.runpytest_subprocess("--dspex-repeats=0", "-p", "no:xdist")
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        bad.stderr.fnmatch_lines(["*--dspex-repeats must be >= 1, got 0*"])
        bad = pytester.runpytest_subprocess("--dspex-alpha=1.5", "-p", "no:xdist")
        bad.stderr.fnmatch_lines(["*--dspex-alpha must be between 0 and 1*"])


class TestStaleGoldensAndCompileGuards:
    def test_a_renamed_output_field_is_a_stale_golden_not_loaded_demos(self, pytester, server, mode):
        project(pytester, 10)
        compile_golden(pytester, server, mode)
        renamed = TEST_FILE.replace("team: str = dspex.OutputField()", "result: str = dspex.OutputField()")
        pytester.makepyfile(test_triage=renamed.replace("prediction.team", "prediction.result"))
        result = run(pytester, server, mode)
        assert result.ret == 1
        result.stdout.fnmatch_lines([
            "*triage.json: golden is stale, the signature changed since it was compiled:*team*result*"
            "run pytest --dspex-compile=triage to recompile*"
        ])  # fmt: skip
        outcomes = result.parseoutcomes()
        # one failure per test (issue 23): the per-example test's first item fails, its other 9 are skipped
        assert (outcomes["failed"], outcomes["skipped"]) == (2, 9) and "passed" not in outcomes
        assert result.stdout.str().count("golden is stale") == 2

    def test_an_unknown_compile_name_is_a_usage_error_listing_the_known_ones(self, pytester, server, mode):
        project(pytester, 4)
        result = run(pytester, server, mode, "--dspex-compile=triage,nope")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert (
            "no selected test uses program 'nope'; known program names: triage"
            in result.stdout.str() + result.stderr.str()
        )
        assert server.requests == 0 and not (pytester.path / GOLDEN).exists()

    def test_an_unknown_rebaseline_name_is_the_same_usage_error(self, pytester, server, mode):
        # trial finding 8: a typo (--dspex-rebaseline=triag) was a normal run, exit 0, nothing recorded
        project(pytester, 4)
        compile_golden(pytester, server, mode)
        before, requests = (pytester.path / GOLDEN).read_text(), server.requests
        result = run(pytester, server, mode, "--dspex-rebaseline=triag")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert (
            "--dspex-rebaseline=triag: no selected test uses program 'triag'; known program names: triage"
            in result.stdout.str() + result.stderr.str()
        )
        assert server.requests == requests and (pytester.path / GOLDEN).read_text() == before

    def test_ctrl_c_while_collecting_is_an_interrupt_not_an_unknown_name(self, pytester, server, mode):
        # trial8 T8-1: Ctrl-C while a test module imported (the app's `import openai`) left the names
        # collected so far, and the run said "--dspex-rebaseline=triage: no selected test uses program
        # 'triage'" (exit 4, a usage error blaming the option) instead of the interrupt
        project(pytester, 4)
        compile_golden(pytester, server, mode)
        before, requests = (pytester.path / GOLDEN).read_text(), server.requests
        pytester.makepyfile(test_aaa_slow_import="raise KeyboardInterrupt  # Ctrl-C during a slow import\n")
        for option in ("--dspex-rebaseline=triage", "--dspex-compile=triage"):
            result = run(pytester, server, mode, option, "test_aaa_slow_import.py", "test_triage.py")
            out = result.stdout.str() + result.stderr.str()
            assert result.ret == pytest.ExitCode.INTERRUPTED, out
            assert "no selected test uses program" not in out
            assert server.requests == requests and (pytester.path / GOLDEN).read_text() == before

    def test_duplicate_example_keys_are_an_error_naming_them_and_the_file(self, pytester, server, mode):
        dev = rows(4) + json.dumps({"id": "ex-1", "message": "again, case 9", "team": "billing"}) + "\n"
        project(pytester, dev=dev)
        duplicate = r"data/dev\.jsonl: duplicate example key\(s\) 'ex-1' \(line 2, line 5\)"
        result = run(pytester, server, mode, "--dspex-missing-golden=zero-shot")
        assert result.ret == 1  # the per-example test is one error item, said once (issue 23), not a collection error
        out = result.stdout.str()
        assert "test_triage_each[dataset-error]" in out and re.search(duplicate, out)
        # the whole-dataset test fails, naming the file and the keys
        pytester.makepyfile(test_triage=DATASET_TEST)
        result = run(pytester, server, mode, "--dspex-missing-golden=zero-shot")
        assert result.ret == 1
        out = result.stdout.str()
        assert "FAILED test_triage.py::test_triage" in out and re.search(duplicate, out)
        assert server.requests == 0

    def test_compile_never_replaces_a_newer_schema_golden_without_force(self, pytester, server):
        project(pytester, 4)
        path = pytester.path / GOLDEN
        path.parent.mkdir(parents=True)
        path.write_text('{"schema_version": 99, "predictors": {}}')
        result = run(pytester, server, ["-p", "no:xdist"], *COMPILE, "-k", "not each")
        assert result.ret == 1
        result.stdout.fnmatch_lines(["*written by a newer pytest-dspex (schema 99*not replaced*--dspex-force*"])
        assert path.read_text() == '{"schema_version": 99, "predictors": {}}' and server.requests == 0
        forced = run(pytester, server, ["-p", "no:xdist"], *COMPILE, "--dspex-force", "-k", "not each")
        assert forced.ret == 0, forced.stdout.str()
        forced.stdout.fnmatch_lines(
            ["*golden updated: __dspex__/test_triage/triage.json*replaced an unreadable golden file (forced)*"]
        )
        assert json.loads(path.read_text())["schema_version"] == 3

    def test_keep_better_says_why_it_kept_or_replaced(self, pytester, server, model):
        project(pytester, 10)
        compile_golden(pytester, server, ["-p", "no:xdist"])
        model.wrong = {1, 3}
        kept = run(pytester, server, ["-p", "no:xdist"], *COMPILE, "-k", "not each")
        kept.stdout.fnmatch_lines([
            "*golden kept: __dspex__/test_triage/triage.json*: kept: the golden's baseline 1.000 is higher "
            "than this run's 0.800 on the same signature and gate set; use --dspex-force to replace it*",
            "*this run vs the golden's baseline: regression by the tolerance: 0.800 vs 1.000 on 10 shared examples*"
            "the paired test alone would say no change: delta -0.200*2 regressed, 0 fixed, 10 shared examples*",
        ])  # fmt: skip
        pytester.makefile(".jsonl", **{"data/dev": rows(12)})  # another gate set: not comparable
        replaced = run(pytester, server, ["-p", "no:xdist"], *COMPILE, "-k", "not each")
        replaced.stdout.fnmatch_lines(["*golden updated: *triage.json*replaced because the gate dataset changed*"])
