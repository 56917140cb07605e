"""The compile flow: datasets → optimizer → golden file, once per program and run.

    outcome = compile_program(
        triage, name="triage", metric=team_matches, trainset=Path("data/train.jsonl"),
        valset=Path("data/dev.jsonl"), input_keys=("message",),
        path=Path("tests/__dspex__/test_triage/triage.json"), settings=CompileSettings(demos=4),
        run_id=run_id,
    )
    outcome.program, outcome.outcome ("created" / "updated" / "kept" / "unchanged" / "compiled elsewhere")

With ``-n auto`` every worker that reaches a program asks to compile it; the first takes the
golden's lock, compiles and leaves a marker naming the run; the others wait on the lock, see the
marker and load the golden it wrote. The pytest plugin calls this; so can a script.

``defer_write=True`` (an xdist worker: the golden has one writer, the controller, which owns the
rootdir — a remote worker's file lock does not protect another machine's files): the keep-better
decision is made as if writing (``GoldenStore.write(dry_run=True)``) but nothing is written; the
outcome carries the golden ``record`` for the caller to send to the controller, and the marker
carries it for the other workers of this host, which load it from there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluation.gates import DEFAULT_ALPHA, DEFAULT_MAX_ERROR_RATE, comparison_text, gate_would_fail
from ..evaluation.metrics import metric_fingerprint
from ..evaluation.scoring import example_timeout
from ..lm.usage import Usage, track_usage
from ..observe import tracing
from .protocol import OptimizerSettings

if TYPE_CHECKING:
    from ..evaluation.comparison import Comparison
    from ..golden.file import GoldenFile
    from ..programs.modules import Module
    from ..programs.primitives import Example
    from . import CompileResult

__all__ = ["NOISY_BASELINE_DRAWS", "SELECTION_SETS", "CompileOutcome", "CompileSettings", "compile_program", "measure_baseline", "rebaseline_program"]

#: where the compile chooses among candidates: the marker's valset, the trainset (leave-one-out), or,
#: opted in, the gate's own examples (then every view says "in-sample")
SELECTION_SETS = ("valset", "trainset", "in-sample")

#: baseline passes when the first two disagree (a noisy endpoint). The paired gate allows for the
#: baseline's luck by its standard error, which shrinks with the draws (``comparison``): measured with
#: an endpoint that redraws 15% or 30% of its answers, 8 draws catch a drop of 0.05 on 200 examples in
#: 52% of gate runs where 3 draws with the earlier test caught 20%, with no compile failing its unchanged
#: program more than 1 run in 30 (``bench/cases_baseline.py``, ``bench/RESULTS-issue18.md``). Two
#: passes that agree end it: a repeatable endpoint costs two.
NOISY_BASELINE_DRAWS = 8


@dataclass(frozen=True)
class CompileSettings(OptimizerSettings):
    """How to optimize: the optimizer and its options (``OptimizerSettings``), the error budget, the baseline."""

    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    force: bool = False
    example_timeout: float | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    #: renders the golden's prompts for predictors without an adapter of their own (None: the configured one)
    adapter: Any = None
    #: fresh passes over the gate set that make the baseline (stops after two that agree on every example)
    baseline_draws: int = NOISY_BASELINE_DRAWS
    #: the gate's own rule for a worse baseline (the marker's tolerance, ``--dspex-alpha``): a re-baseline
    #: the gate would call a regression is refused without ``force``
    tolerance: float = 0.05
    alpha: float = DEFAULT_ALPHA


@dataclass
class CompileOutcome:
    """A compiled (or, when another worker compiled it, loaded) program and what happened to its golden."""

    name: str
    path: Path
    program: Module
    golden: GoldenFile
    outcome: str  # created / updated / kept / unchanged / rebaselined / compiled elsewhere
    reason: str = ""
    result: CompileResult | None = None  # None when another worker of this run compiled it, or a re-baseline
    #: with ``defer_write``: the golden record to write (JSON), None when the golden is kept as it is
    record: dict[str, Any] | None = None
    #: the new baseline paired with the golden it replaces (or would have replaced, when kept)
    replaced: Comparison | None = None
    #: every LM call this process made for it: the optimizer's and the baseline's draws (None: compiled elsewhere)
    usage: Usage | None = None
    #: "compiled elsewhere": the other worker's compile made a new golden in this run (not kept as it was)
    written_elsewhere: bool = False

    @property
    def written(self) -> bool:
        """This run wrote (or sends the controller) a new golden: its gate must not be compared with it."""
        return self.outcome in ("created", "updated", "rebaselined") or self.written_elsewhere


def _done_marker(path: Path, state_dir: Path | None) -> Path:
    """Beside the golden's lock, in the private state folder (``_private``): which run last compiled ``path``."""
    from ..golden.store import state_file

    return state_file(path, ".compiled", state_dir)

def compiled_elsewhere(path: Path, run_id: str, state_dir: Path | None) -> GoldenFile | None:
    """The golden another process of this run compiled (its marker names ``run_id``), else None.

    Read under the golden's lock. A deferring worker's record is not on disk until the controller
    writes it: the marker carries it."""
    from .._support.private import read_private
    from ..golden.file import GoldenFile, read_golden

    done_by, _, deferred = (read_private(_done_marker(path, state_dir)) or "").partition("\n") if run_id else ("", "", "")
    if done_by != run_id or not (deferred or path.exists()):
        return None
    return GoldenFile(path, json.loads(deferred)) if deferred else read_golden(path)


def written_elsewhere(path: Path, run_id: str, state_dir: Path | None) -> bool:
    """Another process of this run compiled ``path`` into a new golden (its marker carries the record)."""
    from .._support.private import read_private

    done_by, _, deferred = (read_private(_done_marker(path, state_dir)) or "").partition("\n") if run_id else ("", "", "")
    return done_by == run_id and bool(deferred)


def previous_golden(path: Path, force: bool) -> GoldenFile | None:
    """The golden a compile would replace; a corrupted or newer-schema one is an error unless ``force``
    (said before any LM call)."""
    from ..errors import GoldenFileError
    from ..golden.file import read_golden
    from ..golden.store import not_replaced

    if not path.exists():
        return None
    try:
        return read_golden(path)
    except GoldenFileError as exc:
        if not force:
            raise not_replaced(exc) from None
    return None


def mark_compiled(path: Path, run_id: str, state_dir: Path | None, record: dict[str, Any] | None) -> None:
    """Leave the marker saying this run compiled ``path`` (with the ``record`` a deferring worker did not write)."""
    from .._support.private import write_private

    if run_id:
        write_private(_done_marker(path, state_dir), run_id + ("\n" + json.dumps(record) if record is not None else ""))


def compile_program(
    program: Module,
    *,
    name: str,
    metric: Callable[..., Any],
    trainset: Path | Sequence[Any],
    valset: Path | Sequence[Any] | None,
    input_keys: Sequence[str],
    path: Path,
    settings: CompileSettings,
    run_id: str = "",
    progress: Callable[[str], None] | None = None,
    defer_write: bool = False,
    state_dir: Path | None = None,
    gateset: Path | Sequence[Any] | None = None,
    in_sample: bool = False,
    threshold: float | None = None,
) -> CompileOutcome:
    """Optimize ``program`` and write its golden file, once per ``run_id`` across processes.

    The candidates are chosen on ``valset``, else on the ``trainset`` (none answered from its own
    demo: ``selection.own_demo_rule``); ``in_sample=True`` chooses on ``gateset`` itself (the golden says so). Then the
    chosen program is measured afresh on ``gateset`` (default: the selection set) — answers that
    took no part in the choice, ``settings.baseline_draws`` passes with their own rollout ids — and
    those outcomes are the golden's baseline, which later runs are paired with. A golden whose
    baseline is below ``threshold`` (the marker's) never replaces an existing golden without
    ``settings.force`` (``GoldenFileError``: the old one is kept, and said to be stale when it is).

    Raises ``DatasetError`` for unreadable datasets, ``CompileStoppedError`` when the LM calls fail
    beyond the error budget (the compile stops there), and ``GoldenFileError`` when the golden may not
    be written (a run over its error budget, a corrupted golden without ``force``, a folder that
    cannot be written). ``state_dir``: the private folder of the golden's lock and compile marker
    (``_private``; the plugin passes the project's, default the user's).
    """
    from ..errors import GoldenFileError
    from ..evaluation.datasets import fingerprint, label_hashes, load_dataset
    from ..golden.file import GoldenFile, read_golden
    from ..golden.record import golden_record
    from ..golden.store import GoldenStore
    from ..programs.fields import dataset_fields
    from ..programs.primitives import as_examples
    from .registry import make_optimizer

    def load(data: Path | Sequence[Any]) -> list[Any]:
        if isinstance(data, Path):
            return load_dataset(data, input_keys, fields=dataset_fields(program))
        return as_examples(list(data), input_keys)

    store = GoldenStore(path.parent.parent, state_dir=state_dir)
    say = progress or (lambda _text: None)
    with store.lock(path):
        elsewhere = compiled_elsewhere(path, run_id, state_dir)
        if elsewhere is not None:
            return CompileOutcome(name, path, elsewhere.apply(program), elsewhere, "compiled elsewhere",
                                  written_elsewhere=written_elsewhere(path, run_id, state_dir))  # fmt: skip
        previous = previous_golden(path, settings.force)  # before optimizing
        train = load(trainset)
        gate = load(gateset) if gateset is not None else None
        if in_sample and gate is not None:
            val, chosen_on = gate, "in-sample"
        elif valset is not None:
            val, chosen_on = load(valset), "valset"
        else:
            val, chosen_on = train, "trainset"
        where = {
            "valset": f"on {len(val)} validation examples", "trainset": "on them, no answer taken from its own demo",
            "in-sample": f"on {len(val)} gate examples (in-sample)",
        }  # fmt: skip
        say(f"compiling {name}: {len(train)} training examples; choosing {where[chosen_on]}")
        optimizer = make_optimizer(
            metric, settings, progress=lambda text: say(f"compiling {name}: {text}"), leave_one_out=chosen_on == "trainset"
        )
        traced = {"dspex.program": name, "dspex.golden": path.name} if tracing.enabled() else None
        with (
            track_usage() as spent,  # the optimizer's calls and the baseline's draws: all the compile spent
            example_timeout(settings.example_timeout),
            tracing.span("dspex.compile", traced) if traced else tracing.NO_SPAN,
        ):
            result = optimizer.compile(program.reset_copy(), trainset=train, valset=val)  # joins this span
            baseline_set = gate if gate is not None else val
            say(f"compiling {name}: measuring the baseline of {result.best.name} on {len(baseline_set)} gate examples")
            # one pass (a deterministic endpoint) under the gate's own cache key: the gate's pass in this
            # run is then a cache hit. Never for an in-sample choice, whose pass answered these examples
            draws, baseline_error_rate = measure_baseline(
                result.program, baseline_set, metric, draws=settings.baseline_draws, concurrency=settings.concurrency,
                shared_first=settings.baseline_draws == 1 and chosen_on != "in-sample",
                max_error_rate=settings.max_error_rate,
            )
        validation = result.validation
        from ..golden.record import baseline_entry

        baseline = baseline_entry(
            draws, dataset=fingerprint(baseline_set), labels=label_hashes(baseline_set),
            metric_fingerprint=metric_fingerprint(metric),
        )  # fmt: skip
        renamed = previous.renamed_fields(result.program) if previous is not None else {}
        replaced = _compare_baselines(previous, baseline, examples=baseline_set, renamed=renamed)
        record = golden_record(
            result.program,
            name=name,
            metric=result.metric,
            validation=(validation.score, validation.n),
            train=(result.train.score, result.train.n) if result.train is not None else None,
            model=settings.model_info,
            optimizer={
                **optimizer.describe(),
                "chosen": result.best.name,
                "candidates": [c.to_dict() for c in result.candidates],
                "demos": result.demo_review,
            },
            datasets={"train": fingerprint(train), "validation": fingerprint(val)},
            records=validation.records,
            adapter=settings.adapter,
            selection={
                "set": chosen_on, "dataset": fingerprint(val), "n": validation.n,
                "score": round(validation.score, 6), "chosen": result.best.name,
                **({"own_demos": result.own_demos} if chosen_on == "trainset" and result.own_demos else {}),
            },
            baseline=baseline,
        )  # fmt: skip
        below = previous is not None and threshold is not None and baseline["score"] < threshold
        if below and not settings.force:  # would it replace the existing golden? (keep-better may keep it)
            would = store.write(
                path, record, error_rate=max(validation.error_rate, baseline_error_rate),
                max_error_rate=settings.max_error_rate, dry_run=True, improved=_improved(replaced),
            )  # fmt: skip
            if previous is not None and threshold is not None and would.outcome == "updated":
                raise GoldenFileError(_below_threshold(path, name, previous, program, baseline, threshold, replaced))
        written = store.write(
            path,
            record,
            force=settings.force,
            error_rate=max(validation.error_rate, baseline_error_rate),
            max_error_rate=settings.max_error_rate,
            dry_run=defer_write,
            improved=_improved(replaced),
        )
        outcome = written.outcome
        to_write = json.loads(json.dumps(record)) if defer_write and outcome in ("created", "updated") else None
        mark_compiled(path, run_id, state_dir, to_write)
    golden = GoldenFile(path, to_write) if to_write is not None else read_golden(path)
    chosen = golden.apply(program) if outcome in ("kept", "unchanged") else result.program
    return CompileOutcome(
        name, path, chosen, golden, outcome, written.reason, result, record=to_write, replaced=replaced, usage=spent
    )


def rebaseline_program(
    program: Module,
    *,
    name: str,
    metric: Callable[..., Any],
    gateset: Path | Sequence[Any],
    input_keys: Sequence[str],
    path: Path,
    settings: CompileSettings,
    run_id: str = "",
    progress: Callable[[str], None] | None = None,
    defer_write: bool = False,
    state_dir: Path | None = None,
    rollout: str = "",
) -> CompileOutcome:
    """Measure a fresh baseline for the golden at ``path`` without re-optimizing (``--dspex-rebaseline``).

    ``rollout`` (the plugin: one per run): the passes' own rollout ids, so no cached answer — the
    compile's baseline draws, an earlier gate run's, an older model's behind the same name — is taken
    for a fresh one; empty, the compile's (``baseline``: a replay reproduces them).

    The golden's demos (and calibration) are kept; the program is run as it is now — its current
    instructions, the current model — ``settings.baseline_draws`` times on ``gateset``, and the golden
    is rewritten with that baseline, the new instructions, prompts and model. How the program was
    chosen stays as recorded. ``outcome`` is ``"rebaselined"``; ``replaced`` pairs the new baseline
    with the one it replaces. For an accepted prompt edit or a model upgrade; fields that changed
    still need a recompile (``GoldenStaleError``). Raises ``GoldenFileError`` when there is no
    readable golden or the new baseline is over the error budget.
    """
    from ..errors import GoldenFileError
    from ..evaluation.datasets import fingerprint, label_hashes, load_dataset
    from ..golden.file import GoldenFile, read_golden
    from ..golden.record import baseline_entry, golden_record
    from ..golden.store import GoldenStore
    from ..programs.fields import dataset_fields
    from ..programs.primitives import as_examples

    store = GoldenStore(path.parent.parent, state_dir=state_dir)
    say = progress or (lambda _text: None)
    with store.lock(path):
        elsewhere = compiled_elsewhere(path, run_id, state_dir)
        if elsewhere is not None:
            return CompileOutcome(name, path, elsewhere.apply(program), elsewhere, "compiled elsewhere",
                                  written_elsewhere=written_elsewhere(path, run_id, state_dir))  # fmt: skip
        old = read_golden(path, missing=f"no golden file to re-baseline; create it with pytest --dspex-compile={name}")
        applied = old.apply(program, instructions=False)  # fields that changed: GoldenStaleError
        gate = load_dataset(gateset, input_keys, fields=dataset_fields(program)) if isinstance(gateset, Path) else as_examples(list(gateset), input_keys)
        say(f"re-baselining {name}: {len(gate)} gate examples, the golden's demos, the program and model as they are now")
        with track_usage() as spent, example_timeout(settings.example_timeout):
            draws, error_rate = measure_baseline(
                applied, gate, metric, draws=settings.baseline_draws, concurrency=settings.concurrency,
                rollout=rollout or "baseline", shared_first=settings.baseline_draws == 1 and not rollout,
                max_error_rate=settings.max_error_rate, stage="re-baseline",
            )  # fmt: skip
        if error_rate > settings.max_error_rate:
            raise GoldenFileError(
                f"{path}: baseline not recorded: {error_rate:.0%} of the {len(gate)} gate examples failed with LM errors "
                f"(the budget is {settings.max_error_rate:.0%}, --dspex-max-error-rate); the golden is unchanged. Fix "
                f"the LM endpoint and re-run pytest --dspex-rebaseline={name}"
            )
        baseline = baseline_entry(
            draws, dataset=fingerprint(gate), how="rebaseline", labels=label_hashes(gate),
            metric_fingerprint=metric_fingerprint(metric),
        )  # fmt: skip
        # scored by another metric, the old baseline is no measure of the new one: not compared
        replaced = None if old.metric_changed(metric) else _compare_baselines(
            old, baseline, alpha=settings.alpha, tolerance=settings.tolerance
        )  # fmt: skip
        if replaced is not None and gate_would_fail(replaced) and not settings.force:
            raise GoldenFileError(
                f"{path}: new baseline not recorded: it is worse than the one it would replace — "
                f"{comparison_text(replaced)}; the golden is unchanged. If this drop is intended (an accepted edit or "
                f"model change): pytest --dspex-rebaseline={name} --dspex-force"
            )
        m = old.model
        if m.selection is not None:
            selection = {k: v for k, v in m.selection.model_dump().items() if k != "own_demos" or v}
        else:  # an older or imported golden: what its provenance says, without unknowns
            known = old.provenance(baseline["dataset"])["selection"]  # the gate's: in-sample or not, known
            selection = {k: v for k, v in known.items() if v is not None} | {"dataset": old.validation_dataset or ""}
        v, t = m.scores.validation, m.scores.train
        record = golden_record(
            applied,
            name=name,
            metric=m.metric,
            validation=(v.score, v.n) if v is not None else None,
            train=(t.score, t.n) if t is not None else None,
            model=settings.model_info or m.model,
            optimizer=m.optimizer,
            datasets=m.datasets,
            records=old.validation_examples,
            adapter=settings.adapter,
            selection=selection,
            baseline=baseline,
        )
        written = store.write(
            path, record, force=True, error_rate=error_rate, max_error_rate=settings.max_error_rate, dry_run=True
        )  # the checks of a write (error budget, a valid record); the write itself is below
        assert written.outcome in ("updated", "unchanged")
        changed = old.instruction_changes(program)
        # a plain function has no instructions or demos to keep: it is measured as it is now (trial8 T8-5)
        plain = not any(True for _ in applied.named_predictors())
        what = "the function as it is now" if plain else "new instructions" if changed else "same instructions"
        if m.model and settings.model_info and {k: m.model.get(k) for k in settings.model_info} != dict(settings.model_info):
            what += ", another model"
        kept = "" if plain else "; demos kept"
        reason = f"re-baselined ({what}{kept}): {baseline['n']} gate examples x {baseline['draws']} draw(s), score {baseline['score']:.3f}"
        if m.baseline is None and m.optimizer.get("name") == "dspy-import":  # the import's own baseline run
            reason = f"baseline measured for {_imported(old, applied)}: {baseline['n']} gate examples x {baseline['draws']} draw(s), score {baseline['score']:.3f}"
        if _same_but_when(old.data, record):  # nothing changed: rewriting it would be a diff to review for nothing
            mark_compiled(path, run_id, state_dir, None)
            reason = (f"re-baseline changed nothing (same {'' if plain else 'instructions, '}model and baseline outcomes: "
                      f"{baseline['n']} gate examples, score {baseline['score']:.3f})")  # fmt: skip
            return CompileOutcome(name, path, applied, old, "unchanged", reason, None, record=None, replaced=replaced, usage=spent)
        if not defer_write:
            store._write(path, record)
        to_write = json.loads(json.dumps(record)) if defer_write else None
        mark_compiled(path, run_id, state_dir, to_write)
    golden = GoldenFile(path, record)
    return CompileOutcome(
        name, path, applied, golden, "rebaselined", reason, None, record=to_write, replaced=replaced, usage=spent
    )


def _imported(golden: Any, program: Module) -> str:
    """What an imported golden runs: 'the program imported from optimized.json (its instructions and 4 demos)'."""
    overridden = [p for p, state in golden.model.predictors.items() if state.overrides is not None and state.overrides.instructions]
    demos = sum(len(pred.demos) for _path, pred in program.named_predictors())
    instructions = "its instructions" if overridden else "the code's instructions"
    if overridden and len(overridden) < len(golden.model.predictors):
        instructions = f"its instructions for {', '.join(overridden)}"
    source = golden.model.optimizer.get("source") or "a DSPy save"
    return f"the program imported from {source} ({instructions} and {demos} demo{'s' if demos != 1 else ''})"


def _same_but_when(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """The same golden but for when and how its baseline was measured (timestamps, compile or re-baseline)."""
    from ..golden.store import _stable

    def stable(data: Mapping[str, Any]) -> dict[str, Any]:
        out = _stable(json.loads(json.dumps(data)))
        if isinstance(out.get("baseline"), dict):
            out["baseline"] = {k: v for k, v in out["baseline"].items() if k != "how"}
        return out

    return stable(old) == stable(new)


def measure_baseline(
    program: Module, examples: Sequence[Any], metric: Callable[..., Any], *, draws: int = 3, concurrency: int = 16,
    rollout: str = "baseline", shared_first: bool = False, max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    stage: str = "compile",
) -> tuple[list[dict[str, float]], float]:
    """``draws`` fresh passes of ``program`` over ``examples``: each pass's ``{key: score}`` and the
    worst pass's share of infrastructure errors.

    Each pass has its own rollout id (``<rollout>-<d>``) in the cache key, so no answer of the
    selection (or of an earlier pass) is reused, and a replay reproduces every pass. After two passes
    that agree on every example the endpoint is taken as repeatable and no more are made.
    ``shared_first``: the first pass under the caller's own cache key instead (for one pass on a
    deterministic endpoint, whose answers are the same either way): the gate's pass over the same
    examples later in the run is then answered from the cache, not asked again. Raises
    ``CompileStoppedError`` when the metric raised on more than ``max_error_rate`` of a pass's examples,
    or the LM errors did (by kind, with the first errors: ``stage`` says whose; no later pass is made).
    """
    from .._support.runtime import run_sync
    from ..evaluation.gates import paired_outcomes
    from ..evaluation.records import INFRA_ERROR_KINDS
    from ..evaluation.scoring import evaluate_records
    from ..programs import settings as dspex_settings
    from .selection import check_budget, check_lm_errors, check_metric

    passes: list[dict[str, float]] = []
    worst = 0.0
    for d in range(max(1, draws)):
        overrides = dict(dspex_settings.get("call_overrides") or {})
        if d or not shared_first:
            overrides["rollout_id"] = f"{rollout}-{d}"
        with dspex_settings.context(call_overrides=overrides):
            records = run_sync(evaluate_records(program, enumerate(examples), metric, concurrency=concurrency))
        check_budget(records, "gate answers")  # --dspex-max-calls/-cost spent: no baseline of part of the set
        check_metric(records, max_error_rate, "gate examples")  # a baseline of metric exceptions is none
        unchanged = "the golden is unchanged" if stage == "re-baseline" else "golden not written (an existing one is kept)"
        check_lm_errors(records, max_error_rate, what="gate answers", stage=stage, after=f"; {unchanged}")  # nor of LM errors
        infra = sum(1 for r in records if r.error_kind in INFRA_ERROR_KINDS)
        worst = max(worst, infra / len(records) if records else 0.0)
        passes.append(paired_outcomes(records))
        if d == 1 and passes[0] == passes[1]:
            break
    return passes, worst


def _below_threshold(
    path: Path,
    name: str,
    previous: GoldenFile,
    program: Module,
    baseline: Mapping[str, Any],
    threshold: float,
    replaced: Comparison | None,
) -> str:
    """Why a compile kept the existing golden rather than write one below the marker's threshold."""
    from ..errors import GoldenStaleError

    try:
        previous.check(program, instructions=False)
        stale = ""
    except GoldenStaleError as exc:
        stale = f" — it is stale ({'; '.join(exc.changes) or 'the signature changed'}), so the tests still fail until this is fixed"
    old = previous.baseline_score
    text = (
        f"{path}: golden not replaced: the newly compiled program's baseline scores {baseline['score']:.3f} on "
        f"{baseline['n']} gate examples, below the threshold {threshold:.3f}"
        + (f" (the golden it would replace: {old:.3f})" if old is not None else "")
    )
    if replaced is not None:
        text += f"; new baseline vs the golden's baseline: {replaced.summary()}"
    return text + (
        f". Kept the existing golden{stale}. Check why the program scores so low (e.g. an output field the model "
        f"never writes makes every answer a parse error), fix it and recompile with pytest --dspex-compile={name}; "
        f"to write the low-scoring golden anyway: pytest --dspex-compile={name} --dspex-force"
    )


def _compare_baselines(
    previous: GoldenFile | None,
    baseline: dict[str, Any],
    *,
    alpha: float = DEFAULT_ALPHA,
    tolerance: float = 0.05,
    examples: Sequence[Example] = (),
    renamed: Mapping[str, str] | None = None,
) -> Comparison | None:
    """The new baseline paired with the previous golden's (None without a previous golden or shared keys).

    ``renamed`` (``{name now: name then}``, output fields renamed since the golden): an example of
    ``examples`` whose labels are the golden's under the old names is not relabelled (its label hash
    changed with the field's name only)."""
    from ..evaluation.comparison import compare

    if previous is None:
        return None
    old = previous.baseline_outcomes
    if not old:
        return None
    b = previous.model.baseline
    labels = dict(baseline.get("labels") or {})
    if renamed and b is not None and b.labels:
        from ..evaluation.datasets import example_key, label_hash
        from ..programs.primitives import Example as _Example  # at run time (the annotation's is for mypy)

        for ex in examples:
            key = example_key(ex)
            if key in b.labels and labels.get(key) != b.labels[key]:
                then = _Example({renamed.get(k, k): v for k, v in ex.items()}).with_inputs(
                    *(renamed.get(k, k) for k in ex.input_keys or ())
                )
                if label_hash(then) == b.labels[key]:
                    labels[key] = b.labels[key]  # the same labels under the names the golden knew
    if b is not None and b.labels and labels:  # relabelled examples are not paired
        old = {k: v for k, v in old.items() if not (k in b.labels and k in labels and b.labels[k] != labels[k])}
    cmp = compare(old, baseline["examples"], alpha=alpha, tolerance=tolerance)
    return cmp if cmp.shared else None


def _improved(replaced: Comparison | None) -> bool | None:
    """Whether the new baseline is significantly better than the golden's (None: not compared), for keep-better."""
    return None if replaced is None else replaced.verdict == "improved"
