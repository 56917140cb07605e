"""The fixtures: ``dspex_lm``, ``dspex_load_dataset``, ``dspex_evaluate``, ``dspex_example``, ``dspex_predict``.

Both test modes score through ``evaluation.score_example`` and report ``ExampleRecord`` JSON:

* ``dspex_evaluate(dataset)`` evaluates the whole dataset concurrently and judges it in the test;
* ``dspex_predict(dspex_example)`` in a test parametrized over a dataset: the first item of a
  chunk of examples evaluates the chunk's selected examples concurrently (under xdist the chunk
  is one ``xdist_group``, so it runs on one worker); each item then reports its own record, and
  the controller judges the records together.
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .markers import MetricSpec, ProgramSpec, dataset_path, metric_spec, missing_file, program_spec, require
from .progress import Progress, run_with_progress
from .session import Dataset, DspexSession, Resolved, session_key

if TYPE_CHECKING:
    from ..evaluation.comparison import RedrawPlan
    from ..evaluation.records import ExampleRecord
    from ..reports.run import RunSettings
    from .collector import Payload

__all__ = ["DatasetProblem", "Evaluator", "NotAnswered", "Predictor", "index_key", "payload_key", "test_key"]

index_key = pytest.StashKey[int]()
#: what a test's report carries to the controller (``collector.Payload``)
payload_key: pytest.StashKey[Payload] = pytest.StashKey()

#: kinds that fail their item: the code under test is broken, not the model's answer
ITEM_FAILING_KINDS = frozenset({"program", "metric"})


class DatasetProblem(str):
    """The ``dspex_example`` parameter of a per-example test whose dataset cannot be loaded: its message."""


class NotAnswered(Exception):
    """Ends a per-example item whose example was not answered (a parse miss or an LM error).

    ``pytest_runtest_makereport`` turns it into a passed report shown as MISS / LM ERROR: the
    aggregate gate, not the item, decides the verdict.
    """

    def __init__(self, record: ExampleRecord) -> None:
        super().__init__(f"{record.error_kind}: {record.error}")
        self.record = record


#: this package's directory: its frames are left out of a user's program or metric error
_PACKAGE = str(Path(__file__).resolve().parent.parent)


def users_frames(exc: BaseException) -> BaseException:
    """``exc`` with its traceback cut to the frames outside this package: a program or metric that
    raised fails its item with the user's own frames (``test_triage.py:15 in wrong_metric``), not
    ~40 lines through the scoring loop and its worker thread (trial2 F-a); the error line is unchanged."""
    kept: list[types.TracebackType] = []
    tb = exc.__traceback__
    while tb is not None:
        if not str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
            kept.append(tb)
        tb = tb.tb_next
    rebuilt: types.TracebackType | None = None
    for t in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return exc.with_traceback(rebuilt)


def test_key(node: Any) -> str:
    """One per-example test function (all its parametrized items share it)."""
    return f"{node.parent.nodeid}::{getattr(node, 'originalname', node.name)}"


def _session(request: pytest.FixtureRequest) -> DspexSession:
    return request.config.stash[session_key]


def _near_threshold(golden: Any, threshold: float | None) -> str | None:
    """A line when a new baseline of draws that disagree sits within two of a run's standard deviations
    above the absolute threshold: the unchanged program will then fail that floor by chance."""
    import math
    from statistics import NormalDist, fmean, pvariance

    outcomes = golden.baseline_outcomes if golden is not None else None
    if not outcomes or threshold is None:
        return None
    values = [v if isinstance(v, list) else [float(v)] for v in outcomes.values()]
    if not all(values):
        return None
    n = len(values)
    sd = math.sqrt(sum(pvariance(v) for v in values if len(v) > 1)) / n  # one run's score, one draw each
    score = fmean(fmean(v) for v in values)
    margin = score - threshold
    if sd == 0 or margin < 0 or margin >= 2 * sd:
        return None
    chance = NormalDist().cdf(-margin / sd)
    return (
        f"! baseline {score:.3f} is within the endpoint's own noise of the threshold {threshold:g} (a run's score "
        f"varies by +-{2 * sd:.3f} over the baseline's draws): about {chance:.0%} of runs of this unchanged program will fail it"
    )


def _golden_info(session: DspexSession, resolved: Resolved, threshold: float | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"path": session.rel(resolved.golden_path), "program": resolved.name, "outcome": resolved.outcome}
    if resolved.outcome in ("created", "updated", "rebaselined"):
        near = _near_threshold(resolved.golden, threshold)
        if near is not None:
            d["near_threshold"] = near
    if resolved.reason:
        d["reason"] = resolved.reason  # why compile replaced or kept the golden
    if resolved.golden_record is not None:  # compiled on a worker: the controller writes it (sent once)
        record = session.once(("golden_record", resolved.golden_path), lambda: resolved.golden_record)
        if record is not None:
            d["record"] = record
    if resolved.replaced is not None:
        d["replaced"] = resolved.replaced  # the new baseline paired with the golden's it replaced
    if resolved.golden is not None:
        d["provenance"] = resolved.golden.provenance()
    if resolved.spent is not None:  # the optimizer's calls and the baseline's draws (a re-baseline's too)
        d["compile_usage"] = resolved.spent
    if resolved.compile_result is not None:
        cr = resolved.compile_result
        d.update(
            score=cr.validation.score,
            n=cr.validation.n,
            chosen=cr.best.name,
            candidates=[c.to_dict() for c in cr.candidates],
            compile_s=round(cr.elapsed_s, 3),
            demos=cr.demo_review,
        )
    return d


def _note(
    session: DspexSession,
    resolved: Resolved,
    relabelled: int = 0,
    metric: Any = None,
    examples: Sequence[Any] = (),
    added: int = 0,
) -> str:
    """The row's note: the resolver's, a metric edited since the baseline, examples relabelled since (or,
    when the examples carry none of an output field, the missing column), and a sampling temperature
    that differs from the golden's."""
    notes = [resolved.note] if resolved.note else []
    golden = resolved.golden
    if golden is not None and metric is not None and golden.metric_changed(metric):
        notes.append(metric_changed_note(golden.program or resolved.name))
    if relabelled:
        missing = missing_label_note(resolved.program, examples)
        notes.append(missing or relabelled_note(relabelled, resolved.golden.program if resolved.golden else ""))
    if added and golden is not None and resolved.outcome is None:
        notes.append(added_note(added, len(examples), golden.program or resolved.name))
    if golden is not None and resolved.outcome is None and golden.shares_nothing(examples):
        notes.append(other_dataset_note(len(examples), golden.baseline_n or 0, golden.program or resolved.name))
    if golden is not None and resolved.outcome is None:  # a golden loaded, not one this run compiled
        was, now_model = (golden.data.get("model") or {}).get("name"), session.lms.model_name()
        if isinstance(was, str) and was and now_model and was != now_model:
            notes.append(
                f"golden measured with {was}, this run with {now_model}; if the switch is intended, record its "
                f"baseline: pytest --dspex-rebaseline={golden.program or resolved.name}"
            )
        recorded = (golden.data.get("model") or {}).get("temperature")
        now = session.options.temperature
        if isinstance(recorded, int | float) and float(recorded) != float(now):
            notes.append(
                f"sampled at temperature {now:g}, the golden at {float(recorded):g}: "
                "a difference from the golden may be the sampling, not the program"
            )
    return "; ".join(notes)


def metric_changed_note(program: str) -> str:
    return (
        "the metric changed since the baseline (its source differs from the one that scored the golden): a "
        "different score may be the metric's, not the program's; if the edit is intended, record a new baseline "
        f"with pytest --dspex-rebaseline={program}"
    )


def missing_label_note(program: Any, examples: Sequence[Any]) -> str:
    """Said instead of "relabelled" when no example carries an output field of ``program`` (its column
    renamed or missing in the data file: re-baselining would not help): "" when every field has a column."""
    from ..programs.fields import dataset_fields

    labels = dataset_fields(program).labels
    missing = [f for f in labels if examples and not any(f in ex for ex in examples)]
    if not missing:
        return ""
    skip = {"id", *labels, *(getattr(examples[0], "input_keys", None) or ())}
    others = sorted({k for ex in examples for k in ex if k not in skip})
    has = f" (its other columns: {', '.join(repr(k) for k in others)})" if others else ""
    return (
        f"no example of the dataset has {', '.join(repr(f) for f in missing)}, an output field of the program{has}: "
        "a renamed or missing label column? Its examples are not paired with the baseline; label them (or rename "
        "the field) rather than record a new baseline"
    )


def relabelled_note(k: int, program: str) -> str:
    return (
        f"{k} example{'s' if k != 1 else ''} relabelled since the baseline, not paired; record a new baseline "
        f"with pytest --dspex-rebaseline={program}"
    )


def added_note(k: int, n: int, program: str) -> str:
    """Examples of the gate's dataset the baseline has no outcome for: scored, never paired (trial12 T12-1)."""
    return (
        f"{k} of {n} examples are new since the golden's baseline (not in it): not paired, only the threshold "
        f"gates them; record a new baseline with pytest --dspex-rebaseline={program}"
    )


def other_dataset_note(n: int, baseline_n: int, program: str) -> str:
    """A dataset none of whose examples the golden's baseline measured (a program gated on two datasets has
    one baseline): "no examples shared" said nothing of why nor what to do (trial13)."""
    return (
        f"none of the {n} examples is in the golden's baseline (measured on another dataset, {baseline_n} examples): "
        "nothing is paired, only the threshold gates this dataset; a program has one baseline, so give this test's "
        f"dspex_program marker a name of its own (name='{program}_...') for a golden and baseline of its own"
    )


def where_from(row: dict[str, Any]) -> str:
    """Lines for a failure message: where the golden's numbers come from, and an instructions edit's diff."""
    text = ""
    prov = row.get("golden_provenance")
    if prov:
        text += f"\ngolden: {prov['text']}"
    if row.get("instructions_diff"):
        from .report import instructions_note
        text += "\n" + instructions_note(str(row["program"])) + "\n" + str(row["instructions_diff"])
    return text


def _report_prompts(resolved: Resolved) -> dict[str, Any]:
    """The prompts a report row shows: the golden's as recorded, or, when the program's instructions
    differ from the golden's (an edit gated against its baseline), the program's as this run sent
    them (the golden's demos, the new instructions), not the golden's old ones (trial8 T8-2)."""
    if resolved.golden is None:
        return {}
    if resolved.instructions_diff:
        from ..golden.record import render_prompts

        return render_prompts(resolved.program)
    return resolved.golden.prompts


def _plain_function(resolved: Resolved) -> bool:
    """A plain function (``dspex.program(fn)``): its LM calls reach the session only if it is told to."""
    from ..programs.function import FunctionProgram

    return isinstance(resolved.program, FunctionProgram)


def _comparable_golden_score(resolved: Resolved, fingerprint: str | None) -> float | None:
    """The golden's score, if it was measured on this very dataset (else no regression gate)."""
    g = resolved.golden
    if g is None or fingerprint is None or g.baseline_dataset != fingerprint:
        return None
    return g.baseline_score


#: a test file -> (it, its folder): asked by every per-example item (twice); ``Path(p)`` re-parses ``p``
_FILES: dict[Any, tuple[Path, Path]] = {}


def _file_and_folder(node: Any) -> tuple[Path, Path]:
    """The test's file and its folder (the markers' paths are relative to it), made once per file."""
    found = _FILES.get(node.path)
    if found is None:
        path = Path(node.path)
        found = _FILES[node.path] = (path, path.parent)
    return found


class _TestContext:
    """What both fixtures read off the requesting test: its node, file, session, program and metric."""

    def __init__(self, request: pytest.FixtureRequest, fixture: str) -> None:
        self.request = request
        self.node = request.node
        self.test_file, self.base = _file_and_folder(self.node)
        self.session = _session(request)
        self.spec: ProgramSpec = require(self.node, program_spec(self.node, self.base), "dspex_program", fixture)
        self.mspec: MetricSpec | None = metric_spec(self.node)
        self.session.lms.check_cache(request.session)

    def dataset(self, path: Path, limit: int | None) -> Dataset:
        from ..errors import DatasetError

        try:
            return self.session.dataset(path, self.spec.input_keys, limit, self.spec.program)
        except DatasetError as exc:
            problem = str(exc).replace(str(path), self.session.rel(path))
        pytest.fail(problem, pytrace=False)  # outside the handler: no chained traceback

    def resolve(self, gate: Path | None) -> Resolved:
        # compile phases name the program; without a TTY they are written as throttled lines
        progress = Progress.for_config(self.request.config, "", log=self.session.options.compiles(self.spec.name))
        return run_with_progress(
            progress,
            lambda: self.session.resolve(self.spec, self.mspec, self.test_file, gate, progress.say if progress else None),
        )

    def resolve_item(self, gate: Path, key: str) -> Resolved:
        """``resolve`` for a per-example item: a program that cannot be made ready (missing or stale
        golden) fails the test's first selected item once; its other items are skipped, pointing there."""
        first = self.session.first_items.get(key, self.node.nodeid)
        try:
            return self.resolve(gate)
        except pytest.fail.Exception as exc:
            problem = str(exc.msg)
        others = len(self.session.selected.get(key, ())) - 1
        if self.node.nodeid == first:
            if others > 0:
                problem += f"\n(one failure for the test: its other {others} selected example(s) are skipped)"
            pytest.fail(problem, pytrace=False)
        # located at the test, not here, so -rs groups the skipped items in one line
        raise pytest.skip.Exception(f"program {self.spec.name!r} not ready: reported once, at {first}", _use_item_location=True)

    @property
    def tolerance(self) -> float:
        m = self.mspec
        return m.tolerance if m is not None and m.tolerance is not None else self.session.options.tolerance


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
        from ..evaluation.evaluate import Evaluate
        from ..programs.primitives import as_examples
        from ..reports.run import ProgramRun, RunSettings
        from .collector import Payload

        ctx = _TestContext(self._request, "dspex_evaluate")
        node, session, spec, mspec = ctx.node, ctx.session, ctx.spec, ctx.mspec
        options = session.options
        metric_fn = metric or (mspec.metric if mspec is not None else None)
        if metric_fn is None:
            pytest.fail(f"{node.nodeid}: dspex_evaluate needs a metric: @pytest.mark.dspex_metric(fn, threshold=...)", pytrace=False)
        gate_path: Path | None = None
        fingerprint: str | None = None
        if dataset is None:
            marked = dataset_path(node, ctx.base)
            if marked is None:
                pytest.fail(f"{node.nodeid}: dspex_evaluate() needs a dataset path (or @pytest.mark.dspex_dataset)", pytrace=False)
            dataset, limit = marked[0], limit or marked[1]
        if isinstance(dataset, str | Path):
            gate_path = Path(dataset) if Path(dataset).is_absolute() else ctx.base / dataset
            loaded = ctx.dataset(gate_path, limit)
            examples, fingerprint = loaded.examples, loaded.fingerprint
        else:
            from ..errors import DatasetError
            from ..evaluation.datasets import check_unique_keys
            from ..evaluation.datasets import fingerprint as fingerprint_of

            examples = as_examples(list(dataset), spec.input_keys)
            problem = None
            try:  # records are matched with the golden's by key: two examples may not share one
                check_unique_keys(examples, f"{node.nodeid}: the dataset given to dspex_evaluate")
            except DatasetError as exc:
                problem = str(exc)
            if problem is not None:  # outside the handler: no chained traceback
                pytest.fail(problem, pytrace=False)
            fingerprint = fingerprint_of(examples)
        resolved = ctx.resolve(gate_path)
        dataset_size = len(examples)
        # a golden this run has just written is not compared with (README): its gate is the threshold's
        golden_outcomes, relabelled = (
            resolved.golden.paired_baseline(examples) if resolved.golden and not resolved.written else (None, 0)
        )
        positions: list[int] | None = None
        if options.shard is not None:  # the golden comparison keeps the whole dataset's fingerprint
            from ..evaluation.datasets import example_key

            positions = options.shard.select([example_key(ex) for ex in examples])
            examples = [examples[i] for i in positions]
        progress = Progress.for_config(self._request.config, spec.name)
        evaluate = Evaluate(
            examples,
            metric_fn,
            concurrency=options.concurrency,
            progress=progress.update if progress else None,
            program_name=spec.name,
            example_timeout=options.example_timeout,
            repeats=(mspec.repeats if mspec is not None else None) or options.repeats,
            repeat_reduction=(mspec.repeat_reduction if mspec is not None else None) or options.repeat_reduction,
            golden_outcomes=golden_outcomes,
            redraws=options.redraws,  # a noisy baseline: discordant first answers asked again
        )
        result = run_with_progress(progress, lambda: evaluate(resolved.program))
        if positions is not None:
            for rec in result.records:
                rec.index = positions[rec.index]
        settings = RunSettings(
            result.program,
            mode="dataset",
            test=node.nodeid,
            dataset=session.rel(gate_path) if gate_path is not None else None,
            metric=result.metric,
            threshold=mspec.threshold if mspec is not None else None,
            tolerance=ctx.tolerance,
            alpha=options.alpha,
            max_error_rate=options.max_error_rate,
            golden=session.rel(resolved.golden_path) if resolved.golden is not None else None,
            golden_score=None if resolved.written else _comparable_golden_score(resolved, fingerprint),
            dataset_size=dataset_size,  # combine checks that the shards add up to it
            note=_note(
                session, resolved, relabelled, metric_fn, examples,
                added=resolved.golden.new_examples(examples) if resolved.golden else 0,
            ),
            prompts=_report_prompts(resolved),
            provenance=resolved.golden.provenance(fingerprint) if resolved.golden is not None else None,
            instructions_diff=resolved.instructions_diff,
            plain_function=_plain_function(resolved),
            redraws=options.redraws if evaluate.redraw is not None else 0,
        )
        run = ProgramRun(settings, golden_outcomes=golden_outcomes, shard=options.shard, expected=len(examples))
        verdict = run.judge(result=result)
        row = run.row()
        before = node.stash.get(payload_key, None)
        earlier = [*before.earlier, before.row] if before is not None and before.kind == "program" and before.row is not None else []
        if earlier:  # a test evaluating several datasets: a row each, named by its dataset
            _name_evaluations([*earlier, row])
        node.stash[payload_key] = Payload("program", _golden_info(session, resolved, settings.threshold), row=row, earlier=earlier)
        session.lms.warn_if_alone()
        if options.estimate:  # no verdict from an estimate: the summary says what a run would cost
            pytest.skip("--dspex-estimate: no LM call made")
        from ..reports import program_properties

        node.user_properties.extend(program_properties(row))  # JUnit: score, CI, delta, verdict
        if options.shard is None:
            self._request.config.hook.pytest_dspex_gate(program=spec.name, verdict=verdict, result=result)
        if not verdict.passed:
            regressed = verdict.comparison.regressions if verdict.comparison is not None else []
            said = verdict.headline(spec.name, result.n, result.ci95) + "\n" + result.summary(regressed=regressed)
            said += f"\nnote: {row['note']}" if row.get("note") else ""
            pytest.fail(said + where_from(row), pytrace=False)
        return result


def _name_evaluations(rows: list[dict[str, Any]]) -> None:
    """The mode of each of a test's ``dspex_evaluate`` rows says its dataset (``dataset: dev.jsonl``;
    the path when two share a file name, ``dataset #2`` for one given in the test): a row each in the
    table and the reports, each paired with the golden on its own shared examples."""
    names = [Path(r["dataset"]).name if r.get("dataset") else None for r in rows]
    for i, (r, name) in enumerate(zip(rows, names, strict=True), 1):
        shown = r["dataset"] if name is not None and names.count(name) > 1 else name
        r["mode"] = f"dataset: {shown}" if shown is not None else f"dataset #{i}"


@functools.cache
def _predict_needs() -> tuple[
    Callable[..., Any], type[RedrawPlan], Callable[..., Any], type[RunSettings], type[Payload], Callable[[Any], list[tuple[str, str]]]
]:
    """What ``Predictor._run`` uses, imported at its first item (not at the plugin's import) and kept:
    six relative imports an item were ~20 µs of every per-example item's CPU."""
    from .._support.runtime import run_sync
    from ..evaluation.comparison import RedrawPlan
    from ..evaluation.scoring import evaluate_records
    from ..reports import example_properties
    from ..reports.run import RunSettings
    from .collector import Payload

    return run_sync, RedrawPlan, evaluate_records, RunSettings, Payload, example_properties


class Predictor:
    """``dspex_predict(example)``: this item's example, run, scored and recorded for the aggregate gate."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __call__(self, example: Any = None) -> Any:
        __tracebackhide__ = True
        return self._run(example)

    async def acall(self, example: Any = None) -> Any:
        return await asyncio.to_thread(self._run, example)

    def _run(self, example: Any) -> Any:
        __tracebackhide__ = True
        run_sync, RedrawPlan, evaluate_records, RunSettings, Payload, example_properties = _predict_needs()
        ctx = _TestContext(self._request, "dspex_predict")
        node, session, spec = ctx.node, ctx.session, ctx.spec
        mspec: MetricSpec = require(node, ctx.mspec, "dspex_metric", "dspex_predict")
        path, limit = require(node, dataset_path(node, ctx.base), "dspex_dataset", "dspex_predict")
        if example is None:
            example = self._request.getfixturevalue("dspex_example")
        index = node.stash.get(index_key, -1)
        data = ctx.dataset(path, limit)
        key = test_key(node)
        resolved = ctx.resolve_item(path, key)
        options = session.options
        paired = session.memo(
            ("paired", key),
            lambda: resolved.golden.paired_baseline(data.examples) if resolved.golden and not resolved.written else (None, 0),
        )
        repeats = mspec.repeats or options.repeats
        redraw = session.memo(("redraw", key), lambda: RedrawPlan.of(paired[0], options.redraws) if repeats == 1 else None)

        def evaluate(items: list[tuple[int, Any]]) -> list[ExampleRecord]:
            progress = Progress.for_config(self._request.config, spec.name) if len(items) > 1 else None
            tally = session.tally(key)  # the test's examples evaluated so far, for one running line
            total = len(session.selected.get(key, ())) or len(items)

            def on_progress(done: int, _total: int, score: float, errors: int) -> None:
                assert progress is not None
                n = tally.done + done
                progress.update(n, total, (tally.score + score * done) / n, tally.errors + errors)

            coro = evaluate_records(
                resolved.program,
                items,
                mspec.metric,
                concurrency=options.concurrency,
                timeout=options.example_timeout,
                progress=on_progress if progress else None,
                program_name=spec.name,
                repeats=repeats,
                repeat_reduction=mspec.repeat_reduction or options.repeat_reduction,
                keep_exceptions=ITEM_FAILING_KINDS,  # re-raised below: the item fails with the original traceback
                redraw=redraw,  # a noisy baseline: discordant first answers asked again
            )
            records: list[ExampleRecord] = run_with_progress(progress, lambda: run_sync(coro))
            tally.add(records)
            return records

        record: ExampleRecord | None = None
        if 0 <= index < len(data.examples) and example is data.examples[index]:
            record = session.example_record(key, index, lambda wanted: evaluate([(i, data.examples[i]) for i in wanted]))
        if record is None:  # an example of the test's own making, or a rerun
            record = evaluate([(index, example)])[0]
        settings = RunSettings(
            spec.name,
            mode="per-example",
            test=key,
            dataset=session.rel(path),
            metric=mspec.name,
            threshold=mspec.threshold,
            tolerance=ctx.tolerance,
            alpha=options.alpha,
            max_error_rate=options.max_error_rate,
            golden=session.rel(resolved.golden_path) if resolved.golden is not None else None,
            # the dataset's fingerprint (a hash of every example) only when there is a golden to compare with
            golden_score=_comparable_golden_score(resolved, data.fingerprint) if resolved.golden is not None and not resolved.written else None,
            dataset_size=len(data.examples),
            note=_note(
                session, resolved, paired[1], mspec.metric, data.examples,
                added=session.memo(
                    ("added", key), lambda: resolved.golden.new_examples(data.examples) if resolved.golden else 0
                ),
            ),
            # the large parts once per process: the controller keeps the first it gets
            prompts=session.once(("prompts", key), lambda: _report_prompts(resolved)) or {},
            provenance=session.once(
                ("provenance", key), lambda: resolved.golden.provenance(data.fingerprint) if resolved.golden else None
            ),
            instructions_diff=resolved.instructions_diff,
            plain_function=_plain_function(resolved),
            redraws=options.redraws if redraw is not None else 0,
        )
        node.stash[payload_key] = Payload(
            "example",
            _golden_info(session, resolved, settings.threshold),
            settings=settings,
            record=record,
            # what a complete run has and what this collection selected: the controller judges only a whole run
            expected=session.expected.get(key, len(data.examples)),
            selected=len(session.selected.get(key, ())) or None,
            # the golden's per-example outcomes for the controller's paired gate, sent once per process
            golden_outcomes=session.once(("outcomes", key), lambda: paired[0]),
        )
        session.lms.warn_if_alone()
        if options.estimate:  # no verdict from an estimate: the summary says what a run would cost
            pytest.skip("--dspex-estimate: no LM call made")
        node.user_properties.extend(example_properties(record))  # JUnit: score, outcome (pass/miss/error), error
        if record.error_kind in ITEM_FAILING_KINDS:
            if record.exception is not None:
                raise users_frames(record.exception)
            pytest.fail(f"{record.error_kind}: {record.error}", pytrace=False)
        if record.error_kind is not None:
            raise NotAnswered(record)
        return record.output


# -- the fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dspex_lm(request: pytest.FixtureRequest) -> Any:
    """The session's LM client (one per xdist worker), closed at the end of the session.

    Programs without an LM of their own use it too (a judge defined next to a metric, say).

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
    session = _session(request)

    def load(path: str | Path, input_keys: Sequence[str] | None = None, limit: int | None = None) -> list[Any]:
        from ..errors import DatasetError

        spec = program_spec(node, base)
        if input_keys is None:
            input_keys = spec.input_keys if spec is not None else None
        if input_keys is None:
            pytest.fail(f"{node.nodeid}: dspex_load_dataset({str(path)!r}) needs input_keys=[...] (no dspex_program marker)", pytrace=False)
        p = Path(path)
        try:
            return session.dataset(p if p.is_absolute() else base / p, input_keys, limit, spec.program if spec is not None else None).examples
        except DatasetError as exc:
            problem = str(exc)
        pytest.fail(problem, pytrace=False)  # outside the handler: no chained traceback

    return load


@pytest.fixture
def dspex_evaluate(request: pytest.FixtureRequest) -> Evaluator:
    """Evaluate the test's program on a whole dataset, concurrently, and gate the score.

        @pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
        @pytest.mark.dspex_metric(team_matches, threshold=0.8)
        def test_triage(dspex_evaluate):
            result = dspex_evaluate("data/dev.jsonl")   # fails the test if the gate fails
    """
    node, base = request.node, Path(request.node.path).parent
    if missing_file(node, base) is None:  # a bad marker fails the test at setup (a missing file: when it runs)
        if node.get_closest_marker("dspex_program") is not None:
            program_spec(node, base)
        if node.get_closest_marker("dspex_metric") is not None:
            metric_spec(node)
    return Evaluator(request)


@pytest.fixture
def dspex_example(request: pytest.FixtureRequest) -> Any:
    """One example of the ``dspex_dataset`` marker's dataset (the test is parametrized over them)."""
    if not hasattr(request, "param"):
        program_spec(request.node, Path(request.node.path).parent)  # a bad dspex_program marker speaks first
        pytest.fail(f"{request.node.nodeid}: dspex_example needs @pytest.mark.dspex_dataset('path.jsonl') on the test", pytrace=False)
    node = request.node
    if isinstance(request.param, DatasetProblem):
        pytest.fail(str(request.param), pytrace=False)  # the item is named in the header
    base = _file_and_folder(node)[1]
    spec = require(node, program_spec(node, base), "dspex_program", "dspex_example")
    path, limit = require(node, dataset_path(node, base), "dspex_dataset", "dspex_example")
    node.stash[index_key] = request.param
    return _session(request).dataset(path, spec.input_keys, limit, spec.program).examples[request.param]


@pytest.fixture
def dspex_predict(request: pytest.FixtureRequest) -> Predictor:
    """Run the program on this item's example; the score is recorded for the aggregate gate.

    A metric miss or an unparseable answer does not fail the item (it shows as MISS), nor does an
    LM error (LM ERROR; the error budget decides); an exception in the program or metric does.
    """
    return Predictor(request)
