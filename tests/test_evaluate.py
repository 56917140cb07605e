from __future__ import annotations

import asyncio

import pydantic
import pytest

import pytest_dspex as dspex
from pytest_dspex.testing.fake_server import Faults

from .conftest import Triage, team_matches, triage_examples


def test_scores_every_example_and_reports_usage(server, make_lm):
    program = dspex.Predict(Triage, lm=make_lm(server))
    progress = []
    result = dspex.Evaluate(triage_examples(40), team_matches, concurrency=8, progress=lambda *a: progress.append(a))(program)
    assert result.n == 40 and result.score == 1.0 and not result.errors
    assert result.usage.calls == 40 and result.usage.tokens > 0
    assert result.ci95[0] > 0.9 and result.ci95[1] == 1.0
    assert progress[-1][:2] == (40, 40)
    assert set(result.latency_percentiles()) == {"p50", "p90", "p99"}


def test_faults_never_abort_and_every_example_is_accounted_for(server, make_lm):
    server.set_faults(Faults(http_500=0.1, http_429=0.1, retry_after=0.01, garbled=0.05, stall=0.02, stall_s=2, seed=7))
    program = dspex.Predict(Triage, lm=make_lm(server, timeout=0.5, retries=4))
    result = dspex.Evaluate(triage_examples(200), team_matches, concurrency=32)(program)
    assert result.n == 200
    assert len({r.index for r in result.records}) == 200
    assert result.score >= 0.99
    assert sum(server.counts[k] for k in ("http_500", "http_429", "garbled", "stall")) > 20


def test_without_retries_errors_are_recorded_with_their_kind_and_count_as_zero(server, make_lm):
    # at the default breaker (5 failed calls in a row): 15% 500s rarely come five in a row
    server.set_faults(Faults(http_500=0.15, garbled=0.2, seed=1))
    program = dspex.Predict(Triage, lm=make_lm(server, retries=0))
    result = dspex.evaluate(program, triage_examples(100), team_matches, concurrency=16)
    kinds = result.errors_by_kind
    assert set(kinds) == {"lm_http", "lm_response"}
    assert result.score == pytest.approx(1 - sum(kinds.values()) / 100)
    bad = result.errors[0]
    assert (bad.score == 0.0 and bad.prediction is None and "HTTP 500" in (bad.error or "")) or "chat completion" in (bad.error or "")


def test_endpoint_down_is_reported_as_unavailable_not_as_a_low_score():
    lm = dspex.LM("m", base_url="http://127.0.0.1:9/v1", api_key="k", cache=None, retries=1, backoff_base=0.01)
    program = dspex.Predict(Triage, lm=lm)
    result = dspex.Evaluate(triage_examples(300), team_matches, concurrency=32)(program)
    assert result.n == 300 and result.lm_unavailable
    assert result.errors_by_kind == {"lm_unavailable": 300}
    assert "LM unavailable" in result.summary()
    assert result.elapsed_s < 15


def test_program_exceptions_and_bad_metric_values_are_recorded(server, make_lm):
    class Flaky(dspex.Module):
        def __init__(self, lm):
            self.p = dspex.Predict(Triage, lm=lm)

        def forward(self, message):
            if "3" in message:
                raise ValueError("boom")
            return self.p(message=message)

    def metric(example, prediction, trace=None):
        return "yes" if "5" in example.message else True

    result = dspex.evaluate(Flaky(make_lm(server)), triage_examples(10), metric, concurrency=4)
    assert result.errors_by_kind == {"program": 1, "metric": 1}
    by_index = {r.index: r for r in result.records}
    assert by_index[3].error == "ValueError: boom"
    assert "return a bool or a number" in (by_index[5].error or "")
    # a whole-dataset record keeps the kind and the message, not the exception: no traceback, frames
    # or locals of a failed example stay alive (100k failed examples once held ~1 GB)
    assert by_index[3].exception is None and by_index[5].exception is None


def test_cache_hits_on_rerun_are_counted(server, make_lm, tmp_path):
    lm = make_lm(server, cache=dspex.ResponseCache(tmp_path / "c"))
    program = dspex.Predict(Triage, lm=lm)
    dev = triage_examples(20)
    first = dspex.evaluate(program, dev, team_matches)
    second = dspex.evaluate(program, dev, team_matches)
    assert first.usage.cache_hits == 0 and second.usage.cache_hits == 20
    assert server.requests == 20
    lm.cache.close()


@pytest.mark.asyncio
async def test_evaluate_from_async_code(server, make_lm):
    program = dspex.Predict(Triage, lm=make_lm(server))
    evaluator = dspex.Evaluate(triage_examples(10), team_matches)
    a, b = await asyncio.gather(evaluator.acall(program), evaluator.acall(program))
    assert a.score == b.score == 1.0


def test_devset_without_input_keys_is_rejected():
    with pytest.raises(ValueError, match="input keys"):
        dspex.Evaluate([dspex.Example(message="x", team="y")], team_matches)


def test_summary_lists_worst_examples(server_factory, make_lm):
    server = server_factory(lambda body: " technical")
    result = dspex.evaluate(dspex.Predict(Triage, lm=make_lm(server)), triage_examples(6), team_matches)
    assert result.score == 0.5
    text = result.summary()
    assert "worst examples" in text and "charged twice" in text


def test_summary_lists_the_regressed_examples_first_by_key_with_expected_apart_from_the_id():
    """Under a regression the examples that went pass -> fail are the news (issue 23): listed first,
    named by key, not the ones that were always wrong; the row's id is not an expected output."""
    from pytest_dspex.evaluation.records import ExampleRecord
    from pytest_dspex.evaluation.result import EvaluationResult

    def rec(i: int, score: float) -> ExampleRecord:
        return ExampleRecord(i, f"dev-{i:04d}", {"message": f"case {i}"}, {"id": f"dev-{i:04d}", "team": "billing"},
                             {"team": "billing" if score else "technical"}, score)  # fmt: skip

    records = [rec(i, 0.0 if i < 6 else 1.0) for i in range(20)] + [rec(20, 0.0), rec(21, 0.0)]
    text = EvaluationResult.from_records(records, program="triage").summary(worst=3, regressed=["dev-0020", "dev-0021"])
    lines = text.splitlines()
    at = lines.index("examples that went pass -> fail against the golden:")
    assert lines[at + 1].startswith("  dev-0020 (#20) score=0.00 inputs={'message': 'case 20'} expected={'team': 'billing'}")
    assert lines[at + 2].startswith("  dev-0021 (#21)")
    assert lines[at + 3] == "other low-scoring examples:" and lines[at + 4].startswith("  dev-0000 (#0)")
    assert "'id'" not in text


@pytest.mark.parametrize("value", [None, "yes", 1.5, -0.1, float("nan"), [1]])
def test_bad_metric_return_values_are_metric_errors_naming_the_metric(server, make_lm, value):
    def my_metric(example, prediction, trace=None):
        return value

    result = dspex.evaluate(dspex.Predict(Triage, lm=make_lm(server)), triage_examples(2), my_metric)
    assert result.errors_by_kind == {"metric": 2}
    assert "metric my_metric returned" in (result.records[0].error or "")


# -- one record per example ------------------------------------------------------------------------
class Ticket(pydantic.BaseModel):
    team: str
    urgent: bool


class Route(dspex.Signature):
    """Route a message."""

    message: str = dspex.InputField()
    ticket: Ticket = dspex.OutputField()


def test_records_round_trip_through_json_with_pydantic_predictions(server_factory, make_lm):
    import json

    from pytest_dspex.evaluation.records import ExampleRecord

    server = server_factory(lambda body: '{"team": "billing", "urgent": true}')
    program = dspex.Predict(Route, lm=make_lm(server))
    dev = [dspex.Example(id=f"ex-{i}", message=f"m{i}", team="billing").with_inputs("message") for i in range(3)]

    def metric(example, prediction, trace=None):
        return prediction.ticket.team == example.team

    result = dspex.evaluate(program, dev, metric)
    assert result.score == 1.0, result.summary()
    for rec in result.records:
        data = json.loads(json.dumps(rec.to_json()))
        assert data["prediction"] == {"ticket": {"team": "billing", "urgent": True}}
        assert data["key"] == f"ex-{rec.index}" and data["inputs"] == {"message": f"m{rec.index}"}
        assert data["usage"]["calls"] == 1
        assert ExampleRecord.from_json(data) == rec
    again = dspex.EvaluationResult.from_records([ExampleRecord.from_json(r.to_json()) for r in reversed(result.records)])
    assert (again.score, again.n, again.ci95, again.usage.calls) == (result.score, result.n, result.ci95, 3)
    assert [r.index for r in again.records] == [0, 1, 2]


def test_error_rate_counts_only_infrastructure_errors():
    from pytest_dspex.evaluation.gates import judge
    from pytest_dspex.evaluation.records import ExampleRecord

    def rec(i: int, kind: str | None) -> ExampleRecord:
        return ExampleRecord(i, f"k{i}", {}, {}, None, 0.0 if kind else 1.0, kind, kind and "boom")

    kinds = [None] * 90 + ["parse"] * 4 + ["metric"] * 2 + ["lm_http"] * 3 + ["timeout"] * 1
    result = dspex.EvaluationResult.from_records([rec(i, k) for i, k in enumerate(kinds)])
    assert (result.infra_errors, result.error_rate) == (4, 0.04)
    assert judge(result, threshold=0.8).passed  # 4% is within the default budget of 5%
    over = judge(result, threshold=0.8, max_error_rate=0.03)
    assert over.kind == "lm_errors" and "LM errors: 4 of 100 examples could not be answered (lm_http: 3, timeout: 1)" in over.reason
    low = judge(result, threshold=0.95)
    assert low.kind == "below_threshold"


def test_a_sync_metric_may_call_a_program_lm_as_judge(server, make_lm):
    judge = dspex.Predict(Triage, lm=make_lm(server))

    def judged(example, prediction, trace=None):
        return judge(message=example.message).team == prediction.team

    async def judged_async(example, prediction, trace=None):
        return (await judge.acall(message=example.message)).team == prediction.team

    program = dspex.Predict(Triage, lm=make_lm(server))
    for metric in (judged, judged_async):
        result = dspex.evaluate(program, triage_examples(20), metric, concurrency=8)
        assert result.score == 1.0, result.summary()
        assert result.usage.calls == 40  # the judge's calls are counted with the program's


def test_a_program_with_no_lm_uses_the_session_default_until_it_is_removed(server, make_lm):
    from pytest_dspex.programs import settings

    lm = make_lm(server)
    remove = settings.session_defaults(lm=settings.lazy(lambda: lm), json_fallback=False)
    try:
        assert dspex.Predict(Triage)(message="I was charged twice").team == "billing"
        assert settings.get("json_fallback") is False
        dspex.configure(json_fallback=True)  # the user's own configure wins over a session default
        assert settings.get("json_fallback") is True
    finally:
        settings._global.pop("json_fallback", None)
        remove()
    assert settings.get("json_fallback") is True and settings.current_lm() is None


def test_example_timeout_cancels_hung_programs_and_metrics_and_the_run_goes_on(server, make_lm):
    inner = dspex.Predict(Triage, lm=make_lm(server))

    class Hangs(dspex.Module):
        async def aforward(self, message):
            if "(3)" in message:
                await asyncio.sleep(60)
            return await inner.acall(message=message)

    async def metric(example, prediction, trace=None):
        if "(5)" in example.message:
            await asyncio.sleep(60)
        return example.team == prediction.team

    result = dspex.Evaluate(triage_examples(10), metric, example_timeout=0.3)(Hangs())
    assert result.n == 10 and result.errors_by_kind == {"timeout": 2}
    assert sorted(r.index for r in result.errors) == [3, 5]
    assert "example timeout" in (result.errors[0].error or "")


def test_workers_lent_to_a_running_evaluation_take_the_examples_not_yet_begun():
    """``lend_workers``: a caller whose other work is done gives an evaluation more workers; they take
    the examples not yet begun, every example is scored once, records stay in input order."""
    from pytest_dspex.evaluation.scoring import evaluate_records

    state = {"now": 0, "peak": 0, "calls": 0}

    class Slow(dspex.Module):
        async def aforward(self, message: str) -> dspex.Prediction:
            state["now"] += 1
            state["calls"] += 1
            state["peak"] = max(state["peak"], state["now"])
            await asyncio.sleep(0.02)
            state["now"] -= 1
            return dspex.Prediction(team=message.split()[-1])

    examples = [dspex.Example(message=f"case {i} team{i % 3}", team=f"team{i % 3}").with_inputs("message") for i in range(12)]
    lent = []

    def lend(add):
        lent.append(add)
        add(2)  # two more workers beside the one asked for

    records = asyncio.run(evaluate_records(Slow(), list(enumerate(examples)), lambda e, p, t=None: e.team == p.team,
                                           concurrency=1, lend_workers=lend))  # fmt: skip
    assert len(lent) == 1 and state["calls"] == 12 and state["peak"] == 3
    assert [r.index for r in records] == list(range(12)) and all(r.score == 1.0 for r in records)
