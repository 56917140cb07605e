"""The core gate (no pytest in the code under test): paired regression, underpowered sets, v1
fallback, infrastructure errors, and repeats with their own rollout ids."""

from __future__ import annotations

from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.evaluation.evaluate import Evaluate
from pytest_dspex.evaluation.gates import Verdict, judge
from pytest_dspex.evaluation.records import ExampleRecord
from pytest_dspex.evaluation.result import EvaluationResult
from pytest_dspex.evaluation.stats import clustered_confidence_interval
from pytest_dspex.lm.cache import ResponseCache
from pytest_dspex.reports.rows import program_row

from .conftest import Triage, team_matches


def rec(i: int, score: float, error_kind: str | None = None, repeats: list[float] | None = None) -> ExampleRecord:
    return ExampleRecord(
        index=i,
        key=f"ex-{i}",
        inputs={"message": f"m{i}"},
        expected={"team": "billing"},
        prediction=None,
        score=score,
        error_kind=error_kind,
        repeats=repeats,
    )


def judge_records(records: list[ExampleRecord], **gate: Any) -> tuple[EvaluationResult, Verdict]:
    result = EvaluationResult.from_records(records)
    return result, judge(result, **gate)


def golden_all_pass(n: int) -> dict[str, float]:
    return {f"ex-{i}": 1.0 for i in range(n)}


def test_nine_flips_of_two_hundred_regress_although_within_the_tolerance() -> None:
    records = [rec(i, 0.0 if i < 9 else 1.0) for i in range(200)]
    result, verdict = judge_records(records, threshold=0.5, golden_score=1.0, golden_outcomes=golden_all_pass(200))
    assert result.score == pytest.approx(0.955)
    assert judge(result, threshold=0.5, golden_score=1.0).passed  # the tolerance gate lets it through
    assert not verdict.passed and verdict.kind == "regression"
    assert verdict.reason.startswith(
        "regression against the golden: 9 of 200 shared examples went pass -> fail (ex-0, ex-1, ex-2, ex-3, ex-4, "
        "ex-5, ex-6, ex-7, ex-8); delta -0.045 (95% CI "
    )
    assert "p=0.002 < alpha 0.05 [mcnemar-exact]" in verdict.reason
    assert verdict.comparison is not None and verdict.comparison.regressions == [f"ex-{i}" for i in range(9)]
    row = program_row(
        result, verdict, mode="dataset", dataset=None, test="t", threshold=0.5, tolerance=0.05, max_error_rate=0.05,
        golden="g.json",
    )  # fmt: skip
    assert row["comparison"] == verdict.comparison.to_json() and row["alpha"] == 0.05
    assert row["verdict"]["kind"] == "regression"


def test_eleven_regressed_keys_show_ten_and_how_many_more() -> None:
    records = [rec(i, 0.0 if i < 11 else 1.0) for i in range(300)]
    _, verdict = judge_records(records, golden_outcomes=golden_all_pass(300))
    assert "(ex-0, ex-1, ex-2, ex-3, ex-4, ex-5, ex-6, ex-7, ex-8, ex-9 and 1 more)" in verdict.reason


def test_noise_of_a_same_accuracy_model_is_no_change_though_over_the_tolerance() -> None:
    # golden right on 0..239, this run right on 20..259: 20 flips each way, the score is the same
    golden = {f"ex-{i}": 1.0 if i < 240 else 0.0 for i in range(300)}
    records = [rec(i, 1.0 if 20 <= i < 260 else 0.0) for i in range(300)]
    _, verdict = judge_records(records, golden_score=0.86, golden_outcomes=golden)  # 0.80 < 0.86 - 0.05
    assert verdict.passed and verdict.comparison is not None and verdict.comparison.verdict == "no change"


def test_underpowered_comparison_also_applies_the_tolerance_on_the_shared_examples() -> None:
    records = [rec(i, 0.0 if i < 2 else 1.0) for i in range(10)]
    _, verdict = judge_records(records, golden_score=None, golden_outcomes=golden_all_pass(10))
    assert not verdict.passed and verdict.kind == "regression"
    assert "on the 10 shared examples (2 went pass -> fail: ex-0, ex-1)" in verdict.reason
    assert "underpowered (needs n >= 100)" in verdict.reason
    small = [rec(i, 0.0 if i < 1 else 1.0) for i in range(40)]  # -0.025: within the tolerance, passes
    _, ok = judge_records(small, golden_outcomes=golden_all_pass(40))
    assert ok.passed and ok.comparison is not None and ok.comparison.underpowered


def test_threshold_stays_a_floor_and_lm_errors_come_first() -> None:
    records = [rec(i, 1.0 if i % 2 else 0.0) for i in range(200)]
    _, verdict = judge_records(records, threshold=0.8, golden_outcomes={f"ex-{i}": float(i % 2) for i in range(200)})
    assert verdict.kind == "below_threshold"
    down = [rec(i, 0.0, "lm_unavailable") if i < 30 else rec(i, 1.0) for i in range(200)]
    _, verdict = judge_records(down, golden_outcomes=golden_all_pass(200))
    assert verdict.kind == "lm_errors"


def test_infrastructure_errors_within_the_budget_are_not_regressions() -> None:
    records = [rec(i, 0.0, "lm_timeout") if i < 8 else rec(i, 1.0) for i in range(200)]  # 4% < 5%
    _, verdict = judge_records(records, golden_outcomes=golden_all_pass(200))
    assert verdict.passed
    assert verdict.comparison is not None and (verdict.comparison.shared, verdict.comparison.regressions) == (192, [])
    parse = [rec(i, 0.0, "parse") if i < 8 else rec(i, 1.0) for i in range(200)]  # the model's own: counted
    _, verdict = judge_records(parse, golden_outcomes=golden_all_pass(200))
    assert verdict.kind == "regression"


def test_without_per_example_outcomes_the_tolerance_decides() -> None:
    records = [rec(i, 0.0 if i < 9 else 1.0) for i in range(200)]
    _, verdict = judge_records(records, golden_score=1.0)
    assert verdict.passed and verdict.comparison is None
    _, verdict = judge_records(records, golden_score=1.0, golden_outcomes={"other-key": 1.0})  # nothing shared
    assert verdict.passed and verdict.comparison is not None and verdict.comparison.shared == 0


def test_graded_scores_from_repeats_use_the_paired_permutation_test() -> None:
    records = [rec(i, 1 / 3 if i < 30 else 1.0, repeats=[1.0, 0.0, 0.0] if i < 30 else [1.0] * 3) for i in range(200)]
    result, verdict = judge_records(records, golden_outcomes=golden_all_pass(200))
    assert verdict.kind == "regression" and verdict.comparison is not None
    assert verdict.comparison.test == "paired-permutation" and "scored lower" in verdict.reason
    assert result.ci95 == clustered_confidence_interval([r.repeats or [] for r in records])
    row = program_row(
        result, verdict, mode="dataset", dataset=None, test="t", threshold=None, tolerance=0.05, max_error_rate=0.05,
        golden=None,
    )  # fmt: skip
    assert row["flaky"] == [f"ex-{i}" for i in range(30)] and row["repeats"] == 3


def test_repeats_have_their_own_cache_entries_and_replay_reproduces_them(
    server_factory: Any, make_lm: Any, tmp_path: Any
) -> None:
    answers = iter(["billing", "technical", "billing"] * 100)
    server = server_factory(lambda body: " " + next(answers))
    examples = [dspex.Example(message="I was charged twice", team="billing").with_inputs("message")]
    lm = make_lm(server, cache=ResponseCache(tmp_path / "c", "on"))
    program = dspex.Predict(Triage, lm=lm)
    result: EvaluationResult = Evaluate(examples, team_matches, repeats=3)(program)
    (record,) = result.records
    assert record.repeats == [1.0, 0.0, 1.0] and record.score == pytest.approx(2 / 3)
    assert server.requests == 3 and result.flaky == [record.key]
    lm.close()  # flushes the cache
    replay = make_lm(server, cache=ResponseCache(tmp_path / "c", "replay"))
    again = Evaluate(examples, team_matches, repeats=3)(dspex.Predict(Triage, lm=replay))
    assert again.records[0].repeats == [1.0, 0.0, 1.0] and server.requests == 3
    assert again.usage.cache_hits == 3


def _noisy_golden(n: int, noisy: int) -> dict[str, Any]:
    """A golden baseline of 8 draws per example: ``noisy`` examples right on 6 of 8 draws, the rest on all."""
    return {f"ex-{i}": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0] if i < noisy else [1.0] * 8 for i in range(n)}


def test_a_noisy_baseline_is_not_failed_by_the_tolerance_for_a_drop_its_noise_explains() -> None:
    """17 examples, 6 of them right on 6 of 8 baseline draws: the unchanged program answering 3 of
    those 6 wrong scores 0.088 below the baseline's mean — more than the tolerance, and what its
    noise does run to run. The noisy paired test says no change, and the gate passes."""
    records = [rec(i, 0.0 if i < 3 else 1.0) for i in range(17)]
    _, verdict = judge_records(records, threshold=0.5, golden_score=0.912, golden_outcomes=_noisy_golden(17, 6))
    c = verdict.comparison
    assert c is not None and c.test == "paired-noisy-baseline" and c.underpowered
    assert c.delta < -0.05 and c.verdict == "no change"
    assert verdict.passed, verdict.reason
    # the same drop against a baseline whose draws all agreed (a repeatable endpoint) is a real one
    exact = {f"ex-{i}": 1.0 for i in range(17)}
    _, strict = judge_records([rec(i, 0.0 if i < 2 else 1.0) for i in range(17)], threshold=0.5, golden_outcomes=exact)
    assert not strict.passed and strict.kind == "regression"


def test_a_noisy_baseline_still_fails_a_drop_beyond_its_noise() -> None:
    records = [rec(i, 0.0 if i < 9 else 1.0) for i in range(17)]  # 6 noisy ones and 3 stable ones lost
    _, verdict = judge_records(records, threshold=0.3, golden_outcomes=_noisy_golden(17, 6))
    assert not verdict.passed and verdict.kind == "regression"
    assert verdict.comparison is not None and verdict.comparison.regressed


def test_a_p_value_just_below_alpha_is_not_shown_rounded_up_to_it() -> None:
    """``p=0.050 < alpha 0.05`` read as a contradiction (trial10 T10-6): the digits that show it is below."""
    from pytest_dspex.evaluation.comparison import Comparison
    from pytest_dspex.evaluation.gates import regression_reason

    c = Comparison(delta=-0.05, delta_ci95=(-0.09, -0.01), p_value=0.04961, verdict="regressed", regressions=["a"], shared=200)
    assert "p=0.04961 < alpha 0.05" in regression_reason(c)
    c = Comparison(delta=-0.05, delta_ci95=(-0.09, -0.01), p_value=0.0123, verdict="regressed", regressions=["a"], shared=200)
    assert "p=0.012 < alpha 0.05" in regression_reason(c)
