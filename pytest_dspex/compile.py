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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tracing
from .evaluation import example_timeout
from .gates import DEFAULT_MAX_ERROR_RATE

if TYPE_CHECKING:
    from .golden import GoldenFile
    from .optimize import CompileResult
    from .programs import Module

__all__ = ["CompileOutcome", "CompileSettings", "compile_program"]


@dataclass(frozen=True)
class CompileSettings:
    """How to optimize: the ``--dspex-*`` optimizer options, the teacher and the error budget."""

    demos: int = 4
    labeled_demos: int = 16
    rounds: int = 1
    candidates: int = 4
    seed: int = 0
    #: the metric value a teacher run needs for its trace to become demos (None: full credit, 1.0)
    metric_threshold: float | None = None
    #: calibrate a classifier's label bias out (``pytest_dspex.calibration``) when it scores no worse
    calibrate: bool = True
    concurrency: int = 16
    teacher_lm: Any = None
    force: bool = False
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    example_timeout: float | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    #: renders the golden's prompts for predictors without an adapter of their own (None: the configured one)
    adapter: Any = None

    def optimizer_record(self) -> dict[str, Any]:
        return {
            "name": "BootstrapFewShotWithRandomSearch",
            "max_bootstrapped_demos": self.demos,
            "max_labeled_demos": self.labeled_demos,
            "max_rounds": self.rounds,
            "num_candidates": self.candidates,
            "seed": self.seed,
            "calibrate": self.calibrate,
            "metric_threshold": 1.0 if self.metric_threshold is None else self.metric_threshold,
        }


@dataclass
class CompileOutcome:
    """A compiled (or, when another worker compiled it, loaded) program and what happened to its golden."""

    name: str
    path: Path
    program: Module
    golden: GoldenFile
    outcome: str  # created / updated / kept / unchanged / compiled elsewhere
    reason: str = ""
    result: CompileResult | None = None  # None when another worker of this run compiled it
    #: with ``defer_write``: the golden record to write (JSON), None when the golden is kept as it is
    record: dict[str, Any] | None = None


def _done_marker(path: Path, state_dir: Path | None) -> Path:
    """Beside the golden's lock, in the private state folder (``_private``): which run last compiled ``path``."""
    from .golden import state_file

    return state_file(path, ".compiled", state_dir)


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
) -> CompileOutcome:
    """Optimize ``program`` and write its golden file, once per ``run_id`` across processes.

    Raises ``DatasetError`` for unreadable datasets, ``CompileStoppedError`` when the LM calls fail
    beyond the error budget (the compile stops there), and ``GoldenFileError`` when the golden may not
    be written (a run over its error budget, a corrupted golden without ``force``, a folder that
    cannot be written). ``state_dir``: the private folder of the golden's lock and compile marker
    (``_private``; the plugin passes the project's, default the user's).
    """
    from ._exceptions import GoldenFileError
    from .datasets import fingerprint, load_dataset
    from .golden import GoldenFile, GoldenStore, golden_record
    from .optimize import BootstrapFewShotWithRandomSearch
    from .primitives import as_examples

    def load(data: Path | Sequence[Any]) -> list[Any]:
        if isinstance(data, Path):
            return load_dataset(data, input_keys)
        return as_examples(list(data), input_keys)

    from ._private import read_private, write_private

    store = GoldenStore(path.parent.parent, state_dir=state_dir)
    say = progress or (lambda _text: None)
    with store.lock(path):
        marker = _done_marker(path, state_dir)
        done_by, _, deferred = (read_private(marker) or "").partition("\n") if run_id else ("", "", "")
        if done_by == run_id and (deferred or path.exists()):
            # the record a deferring worker compiled (not on disk until the controller writes it)
            golden = GoldenFile(path, json.loads(deferred)) if deferred else GoldenStore.read(path)
            return CompileOutcome(name, path, golden.apply(program), golden, "compiled elsewhere")
        if path.exists() and not settings.force:
            # a corrupted or newer-schema golden is never replaced without force: say so before optimizing
            try:
                GoldenStore.read(path)
            except GoldenFileError as exc:
                raise GoldenFileError(
                    f"{exc} — not replaced; restore it from version control, or re-run with "
                    "pytest --dspex-compile --dspex-force to overwrite it"
                ) from None
        train = load(trainset)
        val = load(valset) if valset is not None else train
        say(f"compiling {name}: {len(train)} training, {len(val)} validation examples")
        optimizer = BootstrapFewShotWithRandomSearch(
            metric,
            metric_threshold=settings.metric_threshold,
            max_bootstrapped_demos=settings.demos,
            max_labeled_demos=settings.labeled_demos,
            max_rounds=settings.rounds,
            num_candidates=settings.candidates,
            seed=settings.seed,
            teacher_lm=settings.teacher_lm,
            concurrency=settings.concurrency,
            calibrate=settings.calibrate,
            progress=lambda text: say(f"compiling {name}: {text}"),
            max_error_rate=settings.max_error_rate,
        )
        traced = {"dspex.program": name, "dspex.golden": path.name} if tracing.enabled() else None
        with example_timeout(settings.example_timeout), tracing.span("dspex.compile", traced) if traced else tracing.NO_SPAN:
            result = optimizer.compile(program.reset_copy(), trainset=train, valset=val)  # joins this span
        validation = result.validation
        record = golden_record(
            result.program,
            name=name,
            metric=result.metric,
            validation=(validation.score, validation.n),
            train=(result.train.score, result.train.n) if result.train is not None else None,
            model=settings.model_info,
            optimizer={
                **settings.optimizer_record(),
                "chosen": result.best.name,
                "candidates": [c.to_dict() for c in result.candidates],
                "demos": result.demo_review,
            },
            datasets={"train": fingerprint(train), "validation": fingerprint(val)},
            records=validation.records,
            adapter=settings.adapter,
        )
        written = store.write(
            path,
            record,
            force=settings.force,
            error_rate=validation.error_rate,
            max_error_rate=settings.max_error_rate,
            dry_run=defer_write,
        )
        outcome = written.outcome
        to_write = json.loads(json.dumps(record)) if defer_write and outcome in ("created", "updated") else None
        if run_id:
            write_private(marker, run_id + ("\n" + json.dumps(to_write) if to_write is not None else ""))
    golden = GoldenFile(path, to_write) if to_write is not None else GoldenStore.read(path)
    chosen = golden.apply(program) if outcome in ("kept", "unchanged") else result.program
    return CompileOutcome(name, path, chosen, golden, outcome, written.reason, result, record=to_write)
