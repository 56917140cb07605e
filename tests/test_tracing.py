"""OpenTelemetry spans, read back from the SDK's in-memory exporter: how they nest, what an LM call's
span carries (GenAI semantic conventions), and that no secret reaches any attribute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.lm.cache import ResponseCache
from pytest_dspex.observe import tracing
from pytest_dspex.optimize.compile import CompileSettings, compile_program
from pytest_dspex.testing.fake_server import Faults

from .conftest import Triage, team_matches, triage_examples

pytest.importorskip("opentelemetry.sdk.trace", reason="the OpenTelemetry SDK (test extra) reads the spans back")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROOT = Path(__file__).resolve().parent.parent
CANARY_KEY = "sk-CANARY-tracing-4242"
CANARY_PASSWORD = "pw-CANARY-tracing"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.configure(provider)
    try:
        yield exp
    finally:
        tracing.configure(None)
        provider.shutdown()


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def everything_said(spans: list[ReadableSpan]) -> str:
    """Every name, attribute and event of every span, as one text to search for secrets."""
    out = []
    for s in spans:
        out.append(s.name)
        out.append(json.dumps(dict(s.attributes or {}), default=str))
        for ev in s.events:
            out.append(ev.name + json.dumps(dict(ev.attributes or {}), default=str))
        out.append(str(s.status.description))
    return "\n".join(out)


def test_evaluate_example_program_lm_call_nest(exporter, server, make_lm):
    lm = make_lm(server, api_key=CANARY_KEY, temperature=0.0, max_tokens=64)
    result = dspex.Evaluate(triage_examples(4), team_matches, program_name="triage")(dspex.Predict(Triage, lm=lm))
    assert result.score == 1.0
    spans = list(exporter.get_finished_spans())
    (evaluate,) = named(spans, "dspex.evaluate")
    assert evaluate.parent is None
    assert evaluate.attributes["dspex.program"] == "triage" and evaluate.attributes["dspex.examples"] == 4
    assert evaluate.attributes["dspex.score"] == 1.0 and evaluate.attributes["dspex.errors"] == 0
    examples = children(spans, evaluate)
    assert sorted(s.attributes["dspex.example.index"] for s in examples) == [0, 1, 2, 3]
    assert all(s.name == "dspex.example" and s.attributes["dspex.score"] == 1.0 for s in examples)
    assert all(str(s.attributes["dspex.example.key"]).startswith("h:") for s in examples)
    for example in examples:
        (predict,) = children(spans, example)
        assert predict.name == "dspex.predict" and predict.attributes["dspex.signature"] == "Triage"
        assert predict.attributes["dspex.signature.fields"] == "message -> team"
        (call,) = children(spans, predict)
        assert call.name == "chat fake-model"
        assert call.kind.name == "CLIENT"
        a = call.attributes
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai" and a["gen_ai.system"] == "openai"
        assert a["gen_ai.request.model"] == "fake-model" and a["gen_ai.request.temperature"] == 0.0
        # what was asked for: the LM's 64, or less when the signature's outputs cannot need more (a label)
        assert 0 < a["gen_ai.request.max_tokens"] <= 64
        assert a["gen_ai.request.max_tokens"] == server.bodies[-1]["max_tokens"]
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] == 1
        assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
        assert a["gen_ai.response.model"] == "fake-model" and a["gen_ai.response.id"] == "chatcmpl-fake"
        assert a["dspex.cache_hit"] is False and a["dspex.retries"] == 0
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == int(server.base_url.split(":")[2].split("/")[0])
        # all four examples share one trace: the evaluation's
        assert call.context.trace_id == evaluate.context.trace_id
    assert CANARY_KEY not in everything_said(spans)


def test_a_users_module_is_a_program_span_around_its_predictors(exporter, server, make_lm):
    lm = make_lm(server)

    class Router(dspex.Module):
        def __init__(self) -> None:
            self.route = dspex.Predict(Triage, lm=lm)

        async def aforward(self, message: str) -> Any:
            return await self.route.acall(message=message)

    dspex.Evaluate(triage_examples(2), team_matches)(Router())
    spans = list(exporter.get_finished_spans())
    for example in named(spans, "dspex.example"):
        (program,) = children(spans, example)
        assert program.name == "dspex.program" and program.attributes["dspex.program.class"].endswith("Router")
        (predict,) = children(spans, program)
        assert predict.name == "dspex.predict"
        assert [c.name for c in children(spans, predict)] == ["chat fake-model"]


def test_a_cache_hit_and_retries_are_on_the_lm_span(exporter, server_factory, make_lm, tmp_path):
    flaky = server_factory(faults=Faults(http_500=1.0))
    lm = make_lm(flaky, retries=2, cache=ResponseCache(tmp_path / "cache", "on"))
    with pytest.raises(dspex.LMError):
        lm("Message: hello")
    (failed,) = named(exporter.get_finished_spans(), "chat fake-model")
    assert failed.status.status_code.name == "ERROR" and failed.attributes["dspex.retries"] == 2
    assert failed.attributes["error.type"] == "lm_http"
    exporter.clear()
    flaky.set_faults(Faults())
    assert lm("Message: hello") and lm("Message: hello")
    first, second = named(exporter.get_finished_spans(), "chat fake-model")
    assert first.attributes["dspex.cache_hit"] is False and second.attributes["dspex.cache_hit"] is True
    assert second.attributes["gen_ai.usage.output_tokens"] == first.attributes["gen_ai.usage.output_tokens"]


def test_no_secret_in_any_span_even_in_errors(exporter, server_factory, make_lm):
    server = server_factory()
    url = server.base_url.replace("://", f"://user:{CANARY_PASSWORD}@", 1)
    lm = dspex.LM("fake-model", base_url=url, api_key=CANARY_KEY, cache=None, retries=0)
    try:
        assert dspex.Evaluate(triage_examples(2), team_matches)(dspex.Predict(Triage, lm=lm)).score == 1.0
        server.stop()
        down = dspex.Evaluate(triage_examples(2), team_matches)(dspex.Predict(Triage, lm=lm))
        assert down.errors_by_kind == {"lm_unavailable": 2}
    finally:
        lm.close()
    spans = list(exporter.get_finished_spans())
    calls = named(spans, "chat fake-model")
    assert len(calls) == 4 and sum(1 for c in calls if c.status.status_code.name == "ERROR") == 2
    assert any(ev.name == "exception" for c in calls for ev in c.events)  # the error is recorded, scrubbed
    errored = [s for s in named(spans, "dspex.example") if s.attributes.get("dspex.error_kind")]
    assert len(errored) == 2 and all(s.attributes["error.type"] == "lm_unavailable" for s in errored)
    said = everything_said(spans)
    assert CANARY_KEY not in said and CANARY_PASSWORD not in said and "user:" not in said


def test_compile_candidate_evaluation_nest(exporter, server_factory, tmp_path):
    server = server_factory()
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="sk-x", cache=None)
    try:
        data = triage_examples(8)
        settings = CompileSettings(demos=2, labeled_demos=2, candidates=2, concurrency=4)
        program = dspex.Predict(Triage, lm=lm)
        path = tmp_path / "__dspex__" / "test_x" / "triage.json"
        out = compile_program(
            program, name="triage", metric=team_matches, trainset=data, valset=data, input_keys=("message",),
            path=path, settings=settings,
        )  # fmt: skip
    finally:
        lm.close()
    assert out.outcome == "created"
    spans = list(exporter.get_finished_spans())
    (compile_span,) = named(spans, "dspex.compile")  # compile_program's and the optimizer's: one span
    a = compile_span.attributes
    assert a["dspex.program"] == "triage" and a["dspex.golden"] == "triage.json"
    assert a["dspex.optimizer"] == "BootstrapFewShotWithRandomSearch" and a["dspex.chosen"] == out.result.best.name
    assert compile_span.parent is None
    (bootstrap,) = named(spans, "dspex.bootstrap")
    assert bootstrap.parent.span_id == compile_span.context.span_id
    candidates = children(spans, compile_span)
    cands = [c for c in candidates if c.name == "dspex.candidate"]
    assert {c.attributes["dspex.candidate"] for c in cands} >= {"zero-shot", "labeled"}
    for cand in cands:
        evaluations = children(spans, cand)
        assert evaluations and all(e.name == "dspex.evaluate" for e in evaluations)
        assert sum(e.attributes["dspex.examples"] for e in evaluations) == cand.attributes["dspex.n"]
        example = children(spans, evaluations[0])[0]
        assert example.name == "dspex.example"
        assert [s.name for s in children(spans, example)] == ["dspex.predict"]
    assert str(tmp_path) not in everything_said(spans)


def test_off_without_a_provider(server, make_lm):
    """No provider configured (the API's default): nothing is traced."""
    assert tracing.enabled() is False
    assert dspex.Evaluate(triage_examples(2), team_matches)(dspex.Predict(Triage, lm=make_lm(server))).n == 2


FRESH_PROCESS = """
import sys
import pytest_dspex as dspex
from pytest_dspex.testing.fake_server import FakeLMServer, triage_responder
with FakeLMServer(triage_responder) as server:
    predict = dspex.Predict("message -> team", lm=dspex.LM("fake", base_url=server.base_url, api_key="k", cache=None))
    print(predict(message="I was charged twice").team, "opentelemetry" in sys.modules)
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    print(predict(message="the app crashes").team, sorted(s.name for s in exporter.get_finished_spans()))
"""


def test_no_import_until_someone_sets_a_provider(tmp_path):
    """A new process's LM calls do not import OpenTelemetry (its import sat on the first call's path)
    while nothing has imported it; a global provider set later, after calls were made, gets spans."""
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("OTEL_PYTHON_TRACER_PROVIDER", None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["billing False", "technical ['chat fake', 'dspex.predict']"]


PLUGIN_CONFTEST = """
import json, os
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(provider)

def pytest_sessionfinish(session):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    spans = [{"name": s.name, "id": s.context.span_id, "parent": s.parent.span_id if s.parent else None,
              "attributes": dict(s.attributes)} for s in EXPORTER.get_finished_spans()]
    with open(f"spans-{worker}.json", "w") as fh:
        json.dump(spans, fh, default=str)
"""


@pytest.mark.parametrize("mode", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_a_pytest_run_is_traced_with_a_global_provider(pytester, server_factory, monkeypatch, mode):
    from .test_plugin import TEST_FILE, make_responder, rows

    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    server = server_factory(make_responder(zero_shot_ok=True))
    pytester.makefile(".jsonl", **{"data/train": rows(10, 100), "data/dev": rows(10)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=TEST_FILE.replace("THRESHOLD", "0.8"))
    pytester.makeconftest(PLUGIN_CONFTEST)
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-missing-golden=zero-shot", "-p", "no:cacheprovider", *mode, timeout=120,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    spans: list[dict[str, Any]] = []
    for f in Path(pytester.path).glob("spans-*.json"):
        spans += json.loads(f.read_text())
    by_id = {s["id"]: s for s in spans}
    calls = [s for s in spans if s["name"] == "chat fake-model"]
    assert len(calls) == 20  # 10 examples, both modes
    for call in calls:  # chat <- predict <- example <- evaluate, in every process
        chain = []
        node = call
        while node["parent"] is not None:
            node = by_id[node["parent"]]
            chain.append(node["name"])
        assert chain == ["dspex.predict", "dspex.example", "dspex.evaluate"]
    programs = {s["attributes"]["dspex.program"] for s in spans if s["name"] == "dspex.evaluate"}
    assert programs == {"triage"}
    assert CANARY_KEY not in json.dumps(spans)
