"""``DspexSession``: the plugin's state for one pytest process, kept in ``config.stash``.

It owns the LM clients (built on first use, closed at the end), the budget, the golden stores
and the programs resolved so far (loaded from goldens, or compiled once under a file lock with
``--dspex-compile``). Hooks and fixtures only call into it.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .options import DspexOptions

if TYPE_CHECKING:
    from ..golden import GoldenFile
    from ..lm import LM
    from ..optimize import CompileResult
    from ..programs import Module
    from .markers import MetricSpec, ProgramSpec

__all__ = ["DspexSession", "Resolved", "session_key"]

session_key = pytest.StashKey["DspexSession"]()


@dataclass
class Resolved:
    """A program ready to run: its golden (if any) and, when just compiled, how that went."""

    name: str
    program: Module
    golden_path: Path
    golden: GoldenFile | None
    outcome: str | None = None  # created / updated / kept, when compiled by this process
    compile_result: CompileResult | None = None
    note: str = ""

    @property
    def golden_score(self) -> float | None:
        return self.golden.validation_score if self.golden is not None else None


class DspexSession:
    def __init__(self, config: pytest.Config, options: DspexOptions) -> None:
        self.config = config
        self.options = options
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.run_id: str = (workerinput or {}).get("dspex_run_id") or uuid.uuid4().hex
        self.owner_pid = int((workerinput or {}).get("dspex_owner_pid") or os.getpid())
        self._lm: LM | None = None
        self._teacher: LM | None = None
        self._budget: Any = None
        self._resolved: dict[Path, Resolved] = {}
        self._unsubscribe: Any = None
        self._local_started = False

    # -- LMs ------------------------------------------------------------------------------------
    @property
    def budget(self) -> Any:
        if self._budget is None and (self.options.max_cost is not None or self.options.max_calls is not None):
            from ..lm import Budget

            self._budget = Budget(self.options.max_cost, self.options.max_calls)
        return self._budget

    def _base_url_and_model(self) -> tuple[str, str]:
        o = self.options
        if o.local:
            from ..local_lm import LOCAL_MODEL_NAME, LocalModelError, ensure_server

            try:
                url = ensure_server(self.run_id, self.owner_pid)
            except LocalModelError as exc:
                pytest.fail(f"pytest-dspex: no LM endpoint is configured and the embedded model cannot start: {exc}", pytrace=False)
            self._local_started = True
            from .. import settings

            # a small base model never answers in JSON: the JSON fallback would only double the calls
            settings.configure(json_fallback=False)
            return url, LOCAL_MODEL_NAME
        assert o.model is not None or o.base_url is not None
        if o.model is None:
            pytest.fail("pytest-dspex: --dspex-base-url is set but no --dspex-model (dspex_model) names the model", pytrace=False)
        return o.base_url or "https://api.openai.com/v1", o.model

    def _make_lm(self, model: str | None = None) -> LM:
        from ..lm import LM, ResponseCache

        o = self.options
        url, default_model = self._base_url_and_model()
        self._subscribe()
        return LM(
            model or default_model,
            base_url=url,
            api_key_env=o.api_key_env,
            temperature=o.temperature,
            max_tokens=o.max_tokens,
            timeout=o.timeout,
            retries=o.retries,
            concurrency=o.concurrency,
            cache=ResponseCache(o.cache_dir, o.cache) if o.cache != "off" else None,  # type: ignore[arg-type]
            budget=self.budget,
            cache_identity=f"embedded:{default_model}" if o.local else None,
        )

    @property
    def lm(self) -> LM:
        if self._lm is None:
            self._lm = self._make_lm()
        return self._lm

    @property
    def teacher_lm(self) -> LM | None:
        if self.options.teacher_model is None:
            return None
        if self._teacher is None:
            self._teacher = self.lm.copy(model=self.options.teacher_model)
        return self._teacher

    def model_info(self) -> dict[str, Any]:
        lm = self.lm
        return {
            "name": lm.model,
            "endpoint": "embedded llama.cpp (local)" if self.options.local else lm.base_url,
            "temperature": lm.temperature,
            "max_tokens": lm.max_tokens,
            "teacher": self.options.teacher_model,
        }

    # -- events -> pytest hooks -----------------------------------------------------------------
    def _subscribe(self) -> None:
        if self._unsubscribe is not None:
            return
        from .. import events

        hook = self.config.hook

        def dispatch(ev: events.Event) -> None:
            if isinstance(ev, events.LMCallEvent):
                hook.pytest_dspex_lm_call(event=ev)
            elif isinstance(ev, events.ExampleEvent):
                hook.pytest_dspex_example_result(event=ev)

        self._unsubscribe = events.subscribe(dispatch)

    # -- programs -------------------------------------------------------------------------------
    def golden_path(self, test_file: Path, program: str) -> Path:
        from ..golden import GoldenStore

        return GoldenStore(test_file.parent / "__dspex__").path_for(test_file.stem, program)

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
        if self.options.compiles(spec.name):
            resolved = self._compile(spec, metric, path, gate_dataset, progress)
        else:
            resolved = self._load(spec, path)
        self._resolved[path] = resolved
        return resolved

    def _bind(self, program: Module) -> Module:
        program = program.deepcopy()
        for p in program.predictors():
            if p.lm is None:
                p.lm = self.lm
        return program

    def _load(self, spec: ProgramSpec, path: Path) -> Resolved:
        from .._exceptions import GoldenFileError
        from ..golden import GoldenStore

        if not path.exists():
            if self.options.missing_golden == "zero-shot":
                return Resolved(spec.name, self._bind(spec.program), path, None, note="no golden: zero-shot")
            pytest.fail(
                f"no golden file for program {spec.name!r}: {self._rel(path)}\n"
                f"run `pytest --dspex-compile` (or --dspex-compile={spec.name}) to create it, "
                "or set dspex_missing_golden = zero-shot to run without demos",
                pytrace=False,
            )
        try:
            golden = GoldenStore.read(path)
            program = golden.apply(spec.program)
        except GoldenFileError as exc:
            pytest.fail(str(exc), pytrace=False)
        return Resolved(spec.name, self._bind(program), path, golden)

    def _compile(
        self, spec: ProgramSpec, metric: MetricSpec | None, path: Path, gate_dataset: Path | None, progress: Any
    ) -> Resolved:
        from .._exceptions import DatasetError
        from ..datasets import fingerprint, load_dataset
        from ..golden import GoldenStore, _lock_path, golden_record
        from ..optimize import BootstrapFewShotWithRandomSearch

        if metric is None:
            pytest.fail(f"--dspex-compile: program {spec.name!r} needs @pytest.mark.dspex_metric(...) to be compiled", pytrace=False)
        if spec.trainset is None:
            pytest.fail(
                f"--dspex-compile: program {spec.name!r} has no trainset; "
                "add trainset='data/train.jsonl' to @pytest.mark.dspex_program",
                pytrace=False,
            )
        store = GoldenStore(path.parent.parent)
        done_marker = _lock_path(path).with_suffix(".compiled")
        with store.lock(path):
            if path.exists() and done_marker.exists() and done_marker.read_text() == self.run_id:
                resolved = self._load(spec, path)  # compiled by another worker of this run
                resolved.note = "compiled by another worker"
                return resolved
            try:
                train = load_dataset(spec.trainset, spec.input_keys)
                val_path = spec.valset or gate_dataset or spec.trainset
                val = load_dataset(val_path, spec.input_keys)
            except DatasetError as exc:
                pytest.fail(str(exc), pytrace=False)
            o = self.options
            student = self._bind(spec.program.reset_copy())
            optimizer = BootstrapFewShotWithRandomSearch(
                metric.metric,
                max_bootstrapped_demos=o.demos,
                max_labeled_demos=o.labeled_demos,
                max_rounds=o.rounds,
                num_candidates=o.candidates,
                seed=o.seed,
                teacher_lm=self.teacher_lm,
                concurrency=o.concurrency,
                progress=progress,
            )
            result = optimizer.compile(student, trainset=train, valset=val)
            record = golden_record(
                result.program,
                name=spec.name,
                metric=metric.name,
                validation=(result.validation.score, result.validation.n),
                train=(result.train.score, result.train.n) if result.train is not None else None,
                model=self.model_info(),
                optimizer={
                    "name": "BootstrapFewShotWithRandomSearch",
                    "max_bootstrapped_demos": o.demos,
                    "max_labeled_demos": o.labeled_demos,
                    "max_rounds": o.rounds,
                    "num_candidates": o.candidates,
                    "seed": o.seed,
                    "chosen": result.best.name,
                    "candidates": [c.to_dict() for c in result.candidates],
                },
                datasets={"train": fingerprint(train), "validation": fingerprint(val)},
            )
            outcome = store.write(path, record, force=o.force)
            done_marker.write_text(self.run_id)
        self.config.hook.pytest_dspex_compile_result(program=spec.name, result=result, outcome=outcome, path=path)
        if outcome == "kept":
            resolved = self._load(spec, path)
            resolved.outcome, resolved.compile_result = outcome, result
            return resolved
        golden = GoldenStore.read(path)
        return Resolved(spec.name, result.program, path, golden, outcome, result)

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.config.rootpath))
        except ValueError:
            return str(path)

    # -- progress -------------------------------------------------------------------------------
    def progress_writer(self, label: str) -> tuple[Any, Any]:
        """(on_progress, on_done) callbacks drawing one live line, or (None, None) when not a TTY."""
        if self.is_worker:
            return None, None
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return None, None
        tw = reporter._tw
        file = getattr(tw, "_file", None)
        if file is None or not getattr(file, "isatty", lambda: False)():
            return None, None

        def on_progress(done: int, total: int, score: float, errors: int) -> None:
            tw.write(f"\r\x1b[K[dspex] {label}: {done}/{total} score {score:.3f} errors {errors}")
            tw.flush()

        def on_done() -> None:
            tw.write("\r\x1b[K")
            reporter.currentfspath = None  # make pytest re-print the file name on its next result

        return on_progress, on_done

    def say(self, text: str) -> None:
        if self.is_worker:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.config.get_verbosity() >= 0:
            file = getattr(reporter._tw, "_file", None)
            if file is not None and getattr(file, "isatty", lambda: False)():
                reporter._tw.write(f"\r\x1b[K[dspex] {text}")
                reporter._tw.flush()

    # -- end ------------------------------------------------------------------------------------
    def close(self) -> None:
        for lm in (self._teacher, self._lm):
            if lm is not None:
                lm.close()
                if lm.cache is not None:
                    lm.cache.close()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if not self.is_worker and self.options.local:
            from ..local_lm import stop_server

            stop_server(self.run_id)


def stderr(text: str) -> None:
    sys.stderr.write(text + "\n")
