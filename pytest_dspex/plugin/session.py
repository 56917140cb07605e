"""``DspexSession``: the plugin's state for one pytest process, kept in ``config.stash``.

It owns what lives as long as the session: the LMs (``SessionLMs``), the datasets loaded so far,
the programs resolved so far (loaded from goldens, or compiled with ``compile.compile_program``),
and the per-example batches. Hooks and fixtures only call into it; it dies with the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import ConfigError
from .lms import SessionLMs
from .options import DspexOptions

if TYPE_CHECKING:
    from ..evaluation.records import ExampleRecord
    from ..golden.file import GoldenFile
    from ..lm import LM
    from ..lm.coordinator import Coordinator
    from ..optimize import CompileResult
    from ..programs.modules import Module
    from ..programs.primitives import Example
    from .markers import MetricSpec, ProgramSpec

__all__ = ["Dataset", "DspexSession", "Resolved", "session_key"]

session_key = pytest.StashKey["DspexSession"]()


@dataclass
class Resolved:
    """A program ready to run: its golden (if any) and, when just compiled, how that went."""

    name: str
    program: Module
    golden_path: Path
    golden: GoldenFile | None
    outcome: str | None = None  # created / updated / kept / unchanged, when compiled by this process
    compile_result: CompileResult | None = None
    note: str = ""
    reason: str = ""  # why compile replaced or kept the golden (``WriteResult.reason``)
    #: compiled on an xdist worker: the golden record the controller writes (JSON; the worker writes nothing)
    golden_record: dict[str, Any] | None = None
    #: the program's instructions differ from the golden's (fields the same): the diff, gated against the baseline
    instructions_diff: str = ""
    #: a compile's new baseline paired with the golden it replaced (``Comparison.to_json()``)
    replaced: dict[str, Any] | None = None
    #: every LM call this process's compile or re-baseline made (``Usage.to_dict()``; baseline draws included)
    spent: dict[str, Any] | None = None
    #: this run wrote its golden (here or on another worker): the gate is not compared with it (README)
    written: bool = False

    @property
    def golden_score(self) -> float | None:
        return self.golden.validation_score if self.golden is not None else None


@dataclass
class Dataset:
    """A loaded dataset and its fingerprint (computed once, not once per example)."""

    path: Path
    examples: list[Example]
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..evaluation.datasets import fingerprint

            self._fingerprint = fingerprint(self.examples)
        return self._fingerprint


@dataclass
class Tally:
    """Running totals of one per-example test's evaluated examples (for its progress line)."""

    done: int = 0
    score: float = 0.0
    errors: int = 0

    def add(self, records: Sequence[ExampleRecord]) -> None:
        self.done += len(records)
        self.score += sum(r.score for r in records)
        self.errors += sum(1 for r in records if r.error_kind is not None)


class DspexSession:
    def __init__(self, config: pytest.Config, options: DspexOptions) -> None:
        self.config = config
        self.options = options
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.run_id: str = (workerinput or {}).get("dspex_run_id") or uuid.uuid4().hex
        owner_pid = int((workerinput or {}).get("dspex_owner_pid") or os.getpid())
        self.lms = SessionLMs(options, self.run_id, owner_pid, is_worker=self.is_worker, limits=(workerinput or {}).get("dspex_limits"))
        self._coordinator: Coordinator | None = None
        self._final_limits: dict[str, Any] = {}
        self._datasets: dict[tuple[Any, ...], Dataset] = {}
        self._fields: dict[int, tuple[Any, Any, Any]] = {}  # id(program): (program, its DatasetFields, their key)
        self._resolved: dict[Path, Resolved] = {}
        self._failed_compiles: dict[Path, str] = {}  # golden path -> why its compile failed
        self._state_dir: Path | None = None
        self._unsubscribe: Callable[[], None] | None = None
        #: per-example items selected in this process: test function key -> example indices
        self.selected: dict[str, set[int]] = {}
        #: per-example items a whole run of this job has (after the shard, before -k): test key -> count
        self.expected: dict[str, int] = {}
        self._records: dict[tuple[str, int], ExampleRecord] = {}
        self._evaluated_chunks: set[tuple[str, int]] = set()
        self._once: set[Any] = set()
        self._memo: dict[Any, Any] = {}
        self._rels: dict[str, str] = {}
        self._golden_paths: dict[tuple[str, str], Path] = {}
        self._tallies: dict[str, Tally] = {}
        #: golden path -> why its program could not be made ready (said once, by the first item: ``unavailable``)
        self._unavailable: dict[Path, str] = {}
        #: per-example test key -> node id of its first selected item (the one that reports a shared failure)
        self.first_items: dict[str, str] = {}
        #: every selected dspex test (its function's key) -> its program's name (``collection.note_selection``)
        self.selected_programs: dict[str, str] = {}

    # -- the private state folder ---------------------------------------------------------------
    def state_dir(self) -> Path:
        """Where golden locks, compile markers and xdist hand-off files live (``_private``): the
        project's ``.pytest_cache/d/dspex`` (mode 0700), else the user's private folder. Made on first use."""
        if self._state_dir is None:
            from .._support.private import default_state_dir, private_dir

            cache = getattr(self.config, "cache", None)
            folder: Path | None = None
            if cache is not None:
                try:
                    folder = private_dir(Path(cache.mkdir("dspex")))
                except (OSError, ConfigError):  # a read-only checkout, a folder of another user
                    folder = None
            self._state_dir = folder if folder is not None else default_state_dir()
        return self._state_dir

    def state_dir_if_made(self) -> Path | None:
        return self._state_dir

    # -- LMs and events -------------------------------------------------------------------------
    @property
    def lm(self) -> LM:
        self._activate()
        return self.lms.lm

    def _activate(self) -> None:
        self.lms.activate()
        if self._unsubscribe is None:
            from .bridge import forward_events

            self._unsubscribe = forward_events(self.config.hook)

    # -- datasets -------------------------------------------------------------------------------
    def dataset(self, path: Path, input_keys: Sequence[str], limit: int | None = None, program: Any = None) -> Dataset:
        """The examples of ``path`` (loaded once); with ``program``, read and checked as its signature
        says (``programs.fields``: CSV cells as the fields' types, every row labelled)."""
        from ..evaluation.datasets import load_dataset
        from ..programs.fields import dataset_fields

        fields, fields_key = None, None
        if program is not None:  # asked by every per-example item: worked out once per program
            held = self._fields.get(id(program))
            if held is None or held[0] is not program:
                made = dataset_fields(program)
                held = self._fields[id(program)] = (program, made, made.key)
            fields, fields_key = held[1], held[2]
        key = (str(path), tuple(input_keys), limit, fields_key)
        if key not in self._datasets:
            self._datasets[key] = Dataset(path, load_dataset(path, input_keys, limit=limit, fields=fields))
        return self._datasets[key]

    def rel(self, path: Path | str) -> str:
        """A path relative to the rootdir, normalised (every path in reports is): no ``..`` inside.

        Remembered: every per-example item asks for the same few paths."""
        key = str(path)
        found = self._rels.get(key)
        if found is None:
            p = Path(os.path.normpath(path))
            try:
                found = p.relative_to(self.config.rootpath).as_posix()
            except ValueError:
                found = os.path.relpath(p, self.config.rootpath) if p.is_absolute() else p.as_posix()
            self._rels[key] = found
        return found

    # -- programs -------------------------------------------------------------------------------
    def golden_path(self, test_file: Path, program: str) -> Path:
        """Where ``program``'s golden for ``test_file`` lives (remembered: asked by every per-example item)."""
        key = (str(test_file), program)
        found = self._golden_paths.get(key)
        if found is None:
            from ..golden.store import GoldenStore

            found = self._golden_paths[key] = GoldenStore(test_file.parent / "__dspex__").path_for(test_file.stem, program)
        return found

    def resolve(
        self,
        spec: ProgramSpec,
        metric: MetricSpec | None,
        test_file: Path,
        gate_dataset: Path | None,
        progress: Any = None,
    ) -> Resolved:
        path = self.golden_path(test_file, spec.name)
        hit = self._resolved.get(path)
        if hit is not None:
            return hit
        if path in self._unavailable:
            pytest.fail(self._unavailable[path], pytrace=False)
        self._activate()
        before = _stamp(path)
        try:
            if self.options.estimate:  # no compile, no rebaseline: the program as it stands, and the compile's plan
                resolved = self._load(spec, path)
                if self.options.compiles(spec.name):
                    resolved.note = "; ".join(filter(None, [resolved.note, self._compile_plan(spec, metric, gate_dataset)]))
            elif self.options.compiles(spec.name):
                resolved = self._compile(spec, metric, path, gate_dataset, progress)
            elif self.options.rebaselines(spec.name):
                resolved = self._rebaseline(spec, metric, path, gate_dataset, progress)
            else:
                resolved = self._load(spec, path)
                resolved.note = "; ".join(filter(None, [resolved.note, self._trainset_changed(spec, resolved)]))
        except pytest.fail.Exception as exc:  # one cause, one message: the next test using it is told the same
            self._unavailable[path] = str(exc.msg)
            raise
        except KeyboardInterrupt:  # Ctrl-C during a compile or re-baseline: say whether the golden was touched
            o = self.options
            what = "compile" if o.compiles(spec.name) else "re-baseline" if o.rebaselines(spec.name) else None
            if what is None or o.estimate or _stamp(path) != before:
                raise
            said = "unchanged" if before is not None else "not created"
            raise KeyboardInterrupt(f"{what} of {spec.name!r} interrupted: golden not written ({self.rel(path)} {said})") from None
        self._resolved[path] = resolved
        return resolved

    def unavailable(self, path: Path) -> str | None:
        """Why the program of golden ``path`` could not be made ready in this process (None if it was)."""
        return self._unavailable.get(path)

    def _said(self, exc: Exception, path: Path, *datasets: Path | Any) -> str:
        """An error's message with the golden's path (and the ``datasets``' paths: a trainset row's
        error, trial2 F9) relative to the rootdir, as every path pytest-dspex shows."""
        text = str(exc)
        for p in (path, *datasets):
            if isinstance(p, Path | str) and str(p):
                text = text.replace(str(p), self.rel(p))
        return text

    def _load(self, spec: ProgramSpec, path: Path) -> Resolved:
        if not path.exists():
            if self.options.missing_golden == "zero-shot":
                return Resolved(spec.name, spec.program, path, None, note="no golden: zero-shot")
            pytest.fail(self._missing(spec, path), pytrace=False)
        from ..errors import GoldenFileError
        from ..golden.file import read_golden  # (its schema: pydantic) only when there is a golden to read
        problem: str | None = None
        try:
            golden = read_golden(path)
            program = golden.apply(spec.program, instructions=False)  # an instructions-only edit is gated
        except GoldenFileError as exc:
            problem = self._said(exc, path)
        if problem is not None:  # outside the handler: one message, no chained traceback
            pytest.fail(problem, pytrace=False)
        return Resolved(spec.name, program, path, golden, instructions_diff=golden.instruction_diff(spec.program))

    def _trainset_changed(self, spec: ProgramSpec, resolved: Resolved) -> str:
        """A note when the marker's trainset is not the one the golden was compiled from (rows added or
        edited since): its demos come from the old one, and only a recompile uses the new (trial12 T12-2).
        "" when it is the same, the golden records none, or the file does not load (its tests say why)."""
        golden = resolved.golden
        recorded = ((golden.data.get("datasets") or {}) if golden is not None else {}).get("train")
        if not isinstance(recorded, str) or not isinstance(spec.trainset, Path) or not spec.trainset.is_file():
            return ""
        from ..evaluation.datasets import fingerprint, load_dataset
        from ..programs.fields import dataset_fields

        try:
            now = fingerprint(load_dataset(spec.trainset, spec.input_keys, fields=dataset_fields(spec.program)))
        except Exception:  # a trainset that does not load is a compile's error, not a gate run's
            return ""
        if now == recorded:
            return ""
        return (
            f"the trainset {self.rel(spec.trainset)} changed since the golden was compiled: its demos come from the "
            f"old one; pytest --dspex-compile={spec.name} recompiles with it (and replaces the golden when the new "
            "choice's baseline is better; --dspex-force records it anyway)"
        )

    def _missing(self, spec: ProgramSpec, path: Path) -> str:
        """The missing-golden failure, naming the orphaned goldens that look like this program's."""
        from ..golden.orphans import look_alikes

        text = f"no golden file for program {spec.name!r}: {self.rel(path)}\n"
        found = look_alikes(path, spec.program, Path(self.config.rootpath))
        # a golden whose test module is still there is in use by that module, not orphaned (goldens are
        # per test module): moving it would break the other test
        in_use = [p for p in found if p.parent != path.parent and (p.parent.parent.parent / f"{p.parent.name}.py").is_file()]
        alikes = [p for p in found if p not in in_use]
        mkdir = f"mkdir -p {self.rel(path.parent)} && " if not path.parent.is_dir() else ""  # git mv / cp do not create it
        if alikes:
            shown = ", ".join(self.rel(p) for p in alikes[:3]) + (f" and {len(alikes) - 3} more" if len(alikes) > 3 else "")
            text += (
                f"an orphaned golden with this program's fields: {shown}; if the program was renamed or its test "
                f"file moved, move it: {mkdir}git mv {self.rel(alikes[0])} {self.rel(path)}\n"
            )
        elif in_use:
            other = in_use[0]
            module = self.rel(other.parent.parent.parent / f"{other.parent.name}.py")
            text += (
                f"the same program has a golden for {module} ({self.rel(other)}), still in use there: goldens are per "
                f"test module; compile this module's with `pytest --dspex-compile={spec.name} {self.rel(path.parent.parent.parent / (path.parent.name + '.py'))}`, "
                f"or start from a copy: {mkdir}cp {self.rel(other)} {self.rel(path)}\n"
            )
            alikes = in_use
        return text + (
            f"{'else ' if alikes else ''}run `pytest --dspex-compile` (or --dspex-compile={spec.name}) to create it, "
            "or set dspex_missing_golden = zero-shot to run without demos"
        )

    def _compile(
        self, spec: ProgramSpec, metric: MetricSpec | None, path: Path, gate_dataset: Path | None, progress: Any
    ) -> Resolved:
        from ..errors import CompileStoppedError, DatasetError, GoldenFileError
        from ..optimize.compile import CompileSettings, compile_program

        if metric is None:
            pytest.fail(f"--dspex-compile: program {spec.name!r} needs @pytest.mark.dspex_metric(...) to be compiled", pytrace=False)
        if not spec.program.predictors():  # a plain function: its baseline only
            return self._baseline_only(spec, metric, path, gate_dataset, progress)
        if spec.trainset is None:
            pytest.fail(
                f"--dspex-compile: program {spec.name!r} has no trainset; "
                "add trainset='data/train.jsonl' to @pytest.mark.dspex_program",
                pytrace=False,
            )
        o = self.options
        settings: CompileSettings = self._settings(metric)
        if spec.optimizer is not None:  # the marker's optimizer= wins over --dspex-optimizer
            settings = replace(settings, optimizer=spec.optimizer)
        failed = self._failed_compiles.get(path)
        if failed is not None:  # every test of the program would compile it again, on the same errors
            pytest.fail(f"the compile of {spec.name!r} failed earlier in this run (not tried again): {failed[:200]}", pytrace=False)
        error: str | None = None
        try:
            done = compile_program(
                spec.program,
                name=spec.name,
                metric=metric.metric,
                trainset=spec.trainset,
                valset=spec.valset,  # None: the trainset, each example without its own demo
                gateset=gate_dataset,
                in_sample=(spec.select or o.select) == "in-sample",
                threshold=metric.threshold,
                input_keys=spec.input_keys,
                path=path,
                settings=settings,
                run_id=self.run_id,
                progress=progress,
                defer_write=self.is_worker,  # one golden writer: the controller, which owns the rootdir
                state_dir=self.state_dir(),
            )
        except (DatasetError, GoldenFileError, CompileStoppedError) as exc:
            error = self._said(exc, path, spec.trainset, spec.valset, gate_dataset)
        if error is not None:  # outside the handler: one message, no chained traceback
            self._failed_compiles[path] = error
            pytest.fail(error, pytrace=False)
        if done.result is None:  # another worker of this run compiled it
            return Resolved(spec.name, done.program, path, done.golden, note="compiled by another worker", written=done.written)
        self.config.hook.pytest_dspex_compile_result(program=spec.name, result=done.result, outcome=done.outcome, path=path)
        return Resolved(
            spec.name, done.program, path, done.golden, done.outcome, done.result, reason=done.reason,
            golden_record=done.record, replaced=done.replaced.to_json() if done.replaced is not None else None,
            spent=done.usage.to_dict() if done.usage is not None else None, written=done.written,
        )  # fmt: skip

    def _baseline_only(
        self, spec: ProgramSpec, metric: MetricSpec, path: Path, gate_dataset: Path | None, progress: Any
    ) -> Resolved:
        from ..errors import CompileStoppedError, DatasetError, GoldenFileError
        from ..optimize.baseline_only import record_baseline_only

        gateset = gate_dataset or spec.valset or spec.trainset
        if gateset is None:
            pytest.fail(
                f"--dspex-compile: program {spec.name!r} has nothing to optimize and its baseline is measured on a "
                "dataset file; this test gives its examples in code: use @pytest.mark.dspex_dataset or a dataset path",
                pytrace=False,
            )
        problem = ""
        try:
            done = record_baseline_only(
                spec.program, name=spec.name, metric=metric.metric, gateset=gateset, input_keys=spec.input_keys,
                path=path, settings=self._settings(metric), run_id=self.run_id, progress=progress,
                defer_write=self.is_worker, state_dir=self.state_dir(),
            )  # fmt: skip
        except (DatasetError, GoldenFileError, CompileStoppedError) as exc:
            problem = self._said(exc, path)
        if problem:
            self._failed_compiles[path] = problem
            pytest.fail(problem, pytrace=False)
        if done.outcome == "compiled elsewhere":
            return Resolved(spec.name, done.program, path, done.golden, note="compiled by another worker", written=done.written)
        return Resolved(
            spec.name, done.program, path, done.golden, done.outcome, reason=done.reason, golden_record=done.record,
            replaced=done.replaced.to_json() if done.replaced is not None else None,
            spent=done.usage.to_dict() if done.usage is not None else None, written=done.written,
        )  # fmt: skip

    def _rebaseline(
        self, spec: ProgramSpec, metric: MetricSpec | None, path: Path, gate_dataset: Path | None, progress: Any
    ) -> Resolved:
        from ..errors import CompileStoppedError, DatasetError, GoldenFileError
        from ..optimize.compile import rebaseline_program

        if metric is None:
            pytest.fail(f"--dspex-rebaseline: program {spec.name!r} needs @pytest.mark.dspex_metric(...)", pytrace=False)
        if gate_dataset is None:
            pytest.fail(
                f"--dspex-rebaseline: program {spec.name!r} is evaluated on a dataset given in the test, not a file: "
                "the baseline is measured on the gate's dataset file",
                pytrace=False,
            )
        settings = self._settings(metric)
        problem = ""
        try:
            done = rebaseline_program(
                spec.program, name=spec.name, metric=metric.metric, gateset=gate_dataset, input_keys=spec.input_keys,
                path=path, settings=settings, run_id=self.run_id, progress=progress, defer_write=self.is_worker,
                state_dir=self.state_dir(),
                # fresh answers, this run's own (a replay or read-only cache: the compile's, reproducible)
                rollout="" if self.options.cache in ("replay", "read-only") else f"rebaseline-{self.run_id}",
            )  # fmt: skip
        except (DatasetError, GoldenFileError, CompileStoppedError) as exc:
            problem = self._said(exc, path)  # the golden's path relative to the rootdir
        if problem:
            pytest.fail(problem, pytrace=False)
        if done.outcome == "compiled elsewhere":
            return Resolved(spec.name, done.program, path, done.golden, note="re-baselined by another worker", written=done.written)
        return Resolved(
            spec.name, done.program, path, done.golden, done.outcome, reason=done.reason, golden_record=done.record,
            replaced=done.replaced.to_json() if done.replaced is not None else None,
            spent=done.usage.to_dict() if done.usage is not None else None, written=done.written,
        )  # fmt: skip

    def _compile_plan(self, spec: ProgramSpec, metric: MetricSpec | None, gate_dataset: Path | None) -> str:
        """What ``--dspex-compile`` would run for ``spec`` (``--dspex-estimate``): an upper bound of its LM calls."""
        plan = self.compile_size(spec, metric, gate_dataset)
        if plan is None:
            return "compile plan: cannot compile (needs a dspex_metric marker and a trainset)"
        parts = []
        if plan["teacher"]:
            parts.append(f"up to {plan['teacher']} teacher runs ({plan['train']} training examples x {plan['rounds']} rounds)")
        if plan["candidates"]:
            parts.append(f"{plan['candidates']} candidates x {plan['select']} selection examples")
        if plan["calibrated"]:
            parts.append(f"calibration of up to {plan['calibrated']} of them ({plan['probes']} probes and {plan['calibrated']} x {plan['select']} runs)")
        parts.append(f"a baseline of up to {plan['draws']} x {plan['gate']} gate examples")
        return (
            "compile plan: " + ", ".join(parts) + f": at most {plan['runs']} program runs"
            + (f" and {plan['probes']} calibration probes" if plan["probes"] else "")
            + f", at most {plan['calls']} LM calls before the cache"
            + (" (plus one JSON retry per answer that cannot be read)" if plan["json_retry"] else "")
            + "; racing drops candidates and a repeatable endpoint stops the baseline after 2 passes, so it usually makes fewer"
        )

    def compile_size(self, spec: ProgramSpec, metric: MetricSpec | None, gate_dataset: Path | None) -> dict[str, int] | None:
        """The numbers of ``_compile_plan``, each the most the compile can make (``optimize.compile``,
        ``optimize.search``); None if it cannot compile.

        ``runs`` counts program runs (teacher runs, every candidate on every selection example, the
        calibrated candidates' passes, every baseline draw), ``probes`` the calibration's one-call probes,
        ``calls`` both in LM calls (a run calls each predictor once)."""
        from ..evaluation.datasets import load_dataset
        from ..optimize.compile import NOISY_BASELINE_DRAWS
        from ..optimize.search import CALIBRATE_FINALISTS
        from ..programs import settings as dspex_settings
        from ..programs.calibration import calibration_field

        o = self.options
        predictors = spec.program.named_predictors()
        if metric is None or (predictors and spec.trainset is None):
            return None

        def size(path: Path | None) -> int:
            try:
                return len(load_dataset(path, input_keys=spec.input_keys)) if path is not None else 0
            except Exception:  # the compile itself would say what is wrong with the file
                return 0

        gate = size(gate_dataset)
        draws = o.baseline_draws or (1 if o.local and o.temperature == 0 else NOISY_BASELINE_DRAWS)
        plan = {"train": 0, "rounds": o.rounds, "teacher": 0, "candidates": 0, "select": 0, "calibrated": 0, "probes": 0,
                "gate": gate, "draws": draws}  # fmt: skip
        if predictors:  # else nothing to optimize: the baseline only (``optimize.baseline_only``)
            optimizer = spec.optimizer or o.optimizer
            in_sample = (spec.select or o.select) == "in-sample" and gate_dataset is not None
            train = size(spec.trainset)
            select = gate if in_sample else size(spec.valset) or train
            plan |= {"train": train, "select": select, "candidates": 1}
            if gate_dataset is None:  # the baseline is measured on the selection set
                plan["gate"] = gate = select
            if optimizer != "labeled":
                plan["teacher"] = train * o.rounds  # one teacher run per example and round, shared by the candidates
            if optimizer == "random-search":
                plan["candidates"] = 3 + o.candidates  # zero-shot, labeled, bootstrap, shuffled-0..k-1 (``search``)
                if o.calibrate == "on":
                    try:
                        found = calibration_field(predictors[0][1])
                    except Exception:
                        found = None
                    if found is not None:  # the finalists (the best only when choosing on the trainset)
                        plan["calibrated"] = min(plan["candidates"], CALIBRATE_FINALISTS if spec.valset is not None or in_sample else 1)
                        plan["probes"] = plan["calibrated"] * select
        runs = plan["teacher"] + (plan["candidates"] + plan["calibrated"]) * plan["select"] + draws * gate
        json_retry = bool(predictors) and bool(dspex_settings.get("json_fallback"))  # off for the embedded model
        return plan | {"runs": runs, "calls": runs * max(1, len(predictors)) + plan["probes"], "json_retry": int(json_retry)}

    def _settings(self, metric: MetricSpec) -> Any:
        from ..optimize.compile import NOISY_BASELINE_DRAWS, CompileSettings

        o = self.options
        return CompileSettings(
            optimizer=o.optimizer,
            demos=o.demos,
            labeled_demos=o.labeled_demos,
            rounds=o.rounds,
            candidates=o.candidates,
            seed=o.seed,
            metric_threshold=metric.metric_threshold if metric.metric_threshold is not None else o.metric_threshold,
            calibrate=o.calibrate == "on",
            concurrency=o.concurrency,
            teacher_lm=self.lms.teacher,
            force=o.force,
            max_error_rate=o.max_error_rate,
            example_timeout=o.example_timeout,
            model_info=self.lms.model_info(),
            baseline_draws=o.baseline_draws or (1 if o.local and o.temperature == 0 else NOISY_BASELINE_DRAWS),
            tolerance=metric.tolerance if metric.tolerance is not None else o.tolerance,
            alpha=o.alpha,
        )

    # -- per-example items ----------------------------------------------------------------------
    def chunk_of(self, index: int) -> int:
        return index // self.options.chunk_size

    def example_record(self, test_key: str, index: int, evaluate_chunk: Callable[[list[int]], list[ExampleRecord]]) -> ExampleRecord | None:
        """This item's record; the first item of a chunk evaluates the chunk's selected examples."""
        chunk = self.chunk_of(index)
        if (test_key, chunk) not in self._evaluated_chunks:
            self._evaluated_chunks.add((test_key, chunk))
            size = self.options.chunk_size
            wanted = sorted(i for i in self.selected.get(test_key, {index}) | {index} if i // size == chunk)
            for rec in evaluate_chunk(wanted):
                self._records[(test_key, rec.index)] = rec
        return self._records.pop((test_key, index), None)

    def tally(self, test_key: str) -> Tally:
        return self._tallies.setdefault(test_key, Tally())

    def once(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for in this process, None after (data sent once)."""
        if key in self._once:
            return None
        self._once.add(key)
        return make()

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for in this process, the same value after."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # -- end ------------------------------------------------------------------------------------
    def run_limits(self) -> str:
        """The controller's coordinator of the run's LM limits (started on first use): ``address token``."""
        if self._coordinator is None:
            from ..lm.coordinator import Coordinator

            self._coordinator = Coordinator(max_cost=self.options.max_cost, max_calls=self.options.max_calls)
            self._coordinator.start()
        return f"{self._coordinator.address} {self._coordinator.token}"

    def limits_stats(self) -> dict[str, Any]:
        """What the run's shared limits saw (empty without workers)."""
        if self._coordinator is not None:
            return self._coordinator.stats()
        if not self._final_limits and not self.is_worker:
            return self.lms.own_limits()
        return self._final_limits

    def close(self) -> None:
        self.lms.close(keep_log=lambda: self.state_dir() / "embedded-server.log")  # the embedded server's, if it died
        if self._coordinator is not None:
            self._final_limits = self._coordinator.stats()
            self._coordinator.stop()
            self._coordinator = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


def _stamp(path: Path) -> tuple[int, int] | None:
    """The golden's size and modification time (None: no file), to tell whether an interrupted compile wrote it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
