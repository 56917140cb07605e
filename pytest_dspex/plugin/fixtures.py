"""The fixtures: ``dspex_lm``, ``dspex_load_dataset``, ``dspex_evaluate``, ``dspex_example``, ``dspex_predict``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .markers import dataset_path, metric_spec, program_spec, require
from .session import DspexSession, Resolved, session_key

__all__ = ["Evaluator", "Predictor", "dataset_cache", "index_key"]

index_key = pytest.StashKey[int]()
_datasets: dict[tuple[str, tuple[str, ...], int | None], list[Any]] = {}


def dataset_cache(path: Path, input_keys: Sequence[str], limit: int | None = None) -> list[Any]:
    from ..datasets import load_dataset

    key = (str(path), tuple(input_keys), limit)
    if key not in _datasets:
        _datasets[key] = load_dataset(path, input_keys, limit=limit)
    return _datasets[key]


def _session(request: pytest.FixtureRequest) -> DspexSession:
    return request.config.stash[session_key]


def _golden_property(resolved: Resolved) -> dict[str, Any]:
    d: dict[str, Any] = {"path": str(resolved.golden_path), "program": resolved.name, "outcome": resolved.outcome}
    if resolved.compile_result is not None:
        cr = resolved.compile_result
        d.update(
            score=cr.validation.score,
            n=cr.validation.n,
            chosen=cr.best.name,
            candidates=[c.to_dict() for c in cr.candidates],
            compile_usage=cr.usage.to_dict(),
            compile_s=round(cr.elapsed_s, 3),
        )
    return d


def _comparable_golden_score(resolved: Resolved, examples: Sequence[Any]) -> float | None:
    """The golden's score, if it was measured on this very dataset (else no regression gate)."""
    from ..datasets import fingerprint

    g = resolved.golden
    if g is None:
        return None
    if g.data.get("datasets", {}).get("validation") != fingerprint(examples):
        return None
    return g.validation_score


class _TestContext:
    """What both fixtures read off the requesting test: its node, file, session and program."""

    def __init__(self, request: pytest.FixtureRequest, fixture: str) -> None:
        self.request = request
        self.node = request.node
        self.test_file = Path(self.node.path)
        self.base = self.test_file.parent
        self.session = _session(request)
        self.spec = require(self.node, program_spec(self.node, self.base), "dspex_program", fixture)
        self.mspec = metric_spec(self.node)


class Evaluator:
    """``dspex_evaluate(dataset)``: evaluate the test's program on a dataset and gate the result."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __call__(self, dataset: str | Path | Sequence[Any] | None = None, *, metric: Any = None, limit: int | None = None) -> Any:
        __tracebackhide__ = True
        return self._run(dataset, metric, limit)

    async def acall(self, dataset: str | Path | Sequence[Any] | None = None, *, metric: Any = None, limit: int | None = None) -> Any:
        return await asyncio.to_thread(self._run, dataset, metric, limit)

    def _run(self, dataset: Any, metric: Any, limit: int | None) -> Any:
        __tracebackhide__ = True
        from .._exceptions import DatasetError
        from ..evaluation import Evaluate
        from ..primitives import as_examples
        from .gates import judge

        ctx = _TestContext(self._request, "dspex_evaluate")
        request, node, test_file, base, session = ctx.request, ctx.node, ctx.test_file, ctx.base, ctx.session
        spec, mspec = ctx.spec, ctx.mspec
        metric_fn = metric or (mspec.metric if mspec is not None else None)
        if metric_fn is None:
            pytest.fail(f"{node.nodeid}: dspex_evaluate needs a metric: @pytest.mark.dspex_metric(fn, threshold=...)", pytrace=False)
        gate_path: Path | None = None
        if dataset is None:
            marked = dataset_path(node, base)
            if marked is None:
                pytest.fail(f"{node.nodeid}: dspex_evaluate() needs a dataset path (or @pytest.mark.dspex_dataset)", pytrace=False)
            dataset, limit = marked[0], limit or marked[1]
        try:
            if isinstance(dataset, str | Path):
                gate_path = Path(dataset) if Path(dataset).is_absolute() else base / dataset
                examples = dataset_cache(gate_path, spec.input_keys, limit)
            else:
                examples = as_examples(list(dataset), spec.input_keys)
        except DatasetError as exc:
            pytest.fail(str(exc), pytrace=False)
        resolved = session.resolve(spec, mspec, test_file, gate_path, progress=session.say)
        node.user_properties.append(("dspex_golden", _golden_property(resolved)))
        on_progress, on_done = session.progress_writer(spec.name)
        result = Evaluate(examples, metric_fn, concurrency=session.options.concurrency, progress=on_progress, program_name=spec.name)(
            resolved.program
        )
        if on_done is not None:
            on_done()
        tolerance = mspec.tolerance if mspec is not None and mspec.tolerance is not None else session.options.tolerance
        golden_score = _comparable_golden_score(resolved, examples)
        verdict = judge(
            score=result.score,
            n=result.n,
            threshold=mspec.threshold if mspec is not None else None,
            golden_score=golden_score,
            tolerance=tolerance,
            lm_unavailable=result.lm_unavailable,
            budget_spent=result.errors_by_kind.get("budget", 0),
        )
        row = result.to_dict(records=False)
        row.update(verdict.to_dict())
        row.update(
            program=spec.name,
            mode="dataset",
            golden=str(resolved.golden_path) if resolved.golden is not None else None,
            worst=[r.to_dict() for r in result.worst(5) if r.score < 1.0],
            note=resolved.note,
        )
        node.user_properties.append(("dspex_result", row))
        for key in ("score", "n", "errors"):
            node.user_properties.append((f"dspex_{key}", row[key]))
        node.user_properties.append(("dspex_cost", result.usage.cost))
        request.config.hook.pytest_dspex_gate(program=spec.name, verdict=verdict, result=result)
        if not verdict.passed:
            pytest.fail(verdict.headline(spec.name, result.n, result.ci95) + "\n" + result.summary(), pytrace=False)
        return result


class Predictor:
    """``dspex_predict(example)``: run the test's program on one example, score it and record it."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __call__(self, example: Any = None) -> Any:
        __tracebackhide__ = True
        return self._run(example)

    async def acall(self, example: Any = None) -> Any:
        return await asyncio.to_thread(self._run, example)

    def _run(self, example: Any) -> Any:
        __tracebackhide__ = True
        from ..datasets import fingerprint
        from ..evaluation import describe_error, error_kind
        from ..lm.usage import track_usage
        from ..metrics import metric_name, to_score

        ctx = _TestContext(self._request, "dspex_predict")
        request, node, test_file, base, session, spec = ctx.request, ctx.node, ctx.test_file, ctx.base, ctx.session, ctx.spec
        mspec = require(node, ctx.mspec, "dspex_metric", "dspex_predict")
        marked = require(node, dataset_path(node, base), "dspex_dataset", "dspex_predict")
        path, limit = marked
        if example is None:
            example = request.getfixturevalue("dspex_example")
        index = node.stash.get(index_key, -1)
        examples = dataset_cache(path, spec.input_keys, limit)
        resolved = session.resolve(spec, mspec, test_file, path, progress=session.say)
        node.user_properties.append(("dspex_golden", _golden_property(resolved)))
        tolerance = mspec.tolerance if mspec.tolerance is not None else session.options.tolerance
        entry: dict[str, Any] = {
            "program": spec.name,
            "dataset": str(path.relative_to(request.config.rootpath)) if path.is_relative_to(request.config.rootpath) else str(path),
            "fingerprint": fingerprint(examples),
            "index": index,
            "threshold": mspec.threshold,
            "tolerance": tolerance,
            "golden_score": _comparable_golden_score(resolved, examples),
            "golden": str(resolved.golden_path) if resolved.golden is not None else None,
            "score": 0.0,
            "error_kind": None,
        }
        inputs = {k: example[k] for k in spec.input_keys if k in example}
        with track_usage() as usage:
            try:
                prediction = resolved.program(**inputs)
                entry["score"] = to_score(mspec.metric(example, prediction), metric_name(mspec.metric))
            except Exception as exc:
                entry.update(error_kind=error_kind(exc), error=describe_error(exc))
                entry["usage"] = usage.to_dict()
                node.user_properties.append(("dspex_example", entry))
                raise
        entry["usage"] = usage.to_dict()
        entry["prediction"] = prediction.toDict()
        node.user_properties.append(("dspex_example", entry))
        return prediction


# -- the fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dspex_lm(request: pytest.FixtureRequest) -> Any:
    """The session's LM client (one per xdist worker), closed at the end of the session.

        def test_hello(dspex_lm):
            assert dspex_lm("Say hi")
    """
    return _session(request).lm


@pytest.fixture
def dspex_load_dataset(request: pytest.FixtureRequest) -> Any:
    """Load a dataset relative to the test file: ``dspex_load_dataset("data/dev.jsonl", input_keys=["q"])``.

    Input keys default to the inputs of the test's ``dspex_program``.
    """
    node = request.node
    base = Path(node.path).parent

    def load(path: str | Path, input_keys: Sequence[str] | None = None, limit: int | None = None) -> list[Any]:
        from .._exceptions import DatasetError

        if input_keys is None:
            spec = program_spec(node, base)
            input_keys = spec.input_keys if spec is not None else None
        if input_keys is None:
            pytest.fail(f"{node.nodeid}: dspex_load_dataset({str(path)!r}) needs input_keys=[...] (no dspex_program marker)", pytrace=False)
        p = Path(path)
        try:
            return dataset_cache(p if p.is_absolute() else base / p, input_keys, limit)
        except DatasetError as exc:
            pytest.fail(str(exc), pytrace=False)

    return load


@pytest.fixture
def dspex_evaluate(request: pytest.FixtureRequest) -> Evaluator:
    """Evaluate the test's program on a whole dataset, concurrently, and gate the score.

        @pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
        @pytest.mark.dspex_metric(team_matches, threshold=0.8)
        def test_triage(dspex_evaluate):
            result = dspex_evaluate("data/dev.jsonl")   # fails the test if the gate fails
    """
    return Evaluator(request)


@pytest.fixture
def dspex_example(request: pytest.FixtureRequest) -> Any:
    """One example of the ``dspex_dataset`` marker's dataset (the test is parametrized over them)."""
    if not hasattr(request, "param"):
        pytest.fail(f"{request.node.nodeid}: dspex_example needs @pytest.mark.dspex_dataset('path.jsonl') on the test", pytrace=False)
    node = request.node
    base = Path(node.path).parent
    spec = require(node, program_spec(node, base), "dspex_program", "dspex_example")
    path, limit = require(node, dataset_path(node, base), "dspex_dataset", "dspex_example")
    node.stash[index_key] = request.param
    return dataset_cache(path, spec.input_keys, limit)[request.param]


@pytest.fixture
def dspex_predict(request: pytest.FixtureRequest) -> Predictor:
    """Run the program on this item's example; the score is recorded for the aggregate gate.

    A metric miss does not fail the item (it shows as MISS); an exception in the program does.
    """
    return Predictor(request)
