"""Reading a golden file and checking it against a program: ``read_golden`` (the one reader, with
the errors users see), ``GoldenFile`` (its numbers, its provenance, staleness, applying its demos).

``signature_fingerprint`` pins the signature each predictor was compiled for: a program whose
fields differ is stale, a ``GoldenStaleError`` saying what changed (schema 1 files are checked
against the signature they recorded, else their demos' fields). An edit of the instructions alone
is stale for ``apply()`` by default; ``apply(program, instructions=False)`` lets it through (the
plugin gates it against the baseline; ``instruction_diff`` shows it). ``GoldenFile.compare`` pairs a
run's per-example outcomes with the golden's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GoldenFileError, GoldenStaleError
from ..evaluation.comparison import Comparison, compare, outcomes_from_records
from ..programs import demos
from ..programs.signatures import diff_fingerprints, fingerprint, fingerprint_of
from .schema import GoldenModel, Overrides, PredictorState, validate

if TYPE_CHECKING:
    from ..programs.modules import Module, Predict

__all__ = ["GoldenFile", "instruction_diff", "provenance_text", "read_golden"]


def read_golden(
    path: str | os.PathLike[str], *, missing: str = "no such golden file; compile one with pytest --dspex-compile"
) -> GoldenFile:
    """The one reader of golden files. A missing, unreadable, corrupted or newer-schema file is a
    ``GoldenFileError`` whose message names the file; ``missing`` is what it says of a missing one
    (after the path), so that each caller says what to do about it."""
    p = Path(path)
    if p.is_dir():
        raise GoldenFileError(f"{p}: is a directory, not a golden file (they are <test dir>/__dspex__/<module>/<program>.json)")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoldenFileError(f"{p}: {missing}") from None
    except OSError as exc:
        raise GoldenFileError(f"{p}: cannot read golden file ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GoldenFileError(
            f"{p}: corrupted golden file (not valid JSON: {exc}); restore it from version control "
            "or re-run pytest --dspex-compile --dspex-force"
        ) from None
    return GoldenFile(p, data, validate(p, data))


def provenance_text(p: Mapping[str, Any]) -> str:
    """``chosen on the trainset (n=30, leave-one-out) · baseline: fresh, 200 examples × 3 draws, 0.815``."""
    sel, base = p.get("selection") or {}, p.get("baseline") or {}
    where = {
        "valset": "the valset",
        "trainset": {
            "skipped": "the trainset, each candidate on the examples that are none of its demos",
            "in the prompt": "the trainset, each demo's own example asked with that demo in the prompt (not held out)",
        }.get(str(sel.get("own_demos")), "the trainset, each example without its own demo"),
        "in-sample": "the gate's own examples (IN-SAMPLE: not held out)",
        "validation": "a validation set",
        # an older golden read without its gate's dataset (``python -m pytest_dspex prompt``): compiles
        # before issue 18 chose on the marker's valset, else on the gate's own examples
        "validation or in-sample": "a validation set: the marker's valset, else the gate's own examples (IN-SAMPLE), "
        "as compiles before issue 18 chose; this older golden does not say which",
        "imported": "DSPy's side (an imported save)",
    }.get(str(sel.get("set")), str(sel.get("set")))
    facts = [f"n={sel['n']}"] if sel.get("n") else []
    if sel.get("score") is not None and sel.get("n"):
        facts.append(f"score {float(sel['score']):.3f}")
    text = f"chosen on {where}" + (f" ({', '.join(facts)})" if facts else "")
    if sel.get("set") == "none":  # baseline_only: a plain function, nothing was chosen
        text = "nothing to optimize (no predictors: the program runs as written)"
    score = base.get("score")
    shown = f", score {float(score):.3f}" if score is not None else ""
    if base.get("fresh"):
        draws = int(base.get("draws") or 1)
        how = (
            "measured again by --dspex-rebaseline" if base.get("how") == "rebaseline"
            else "measured" if sel.get("set") == "none" else "measured after the choice"
        )  # fmt: skip
        text += f"; baseline {how} on the gate set: {base.get('n', 0)} examples x {draws} draw{'s' if draws != 1 else ''}{shown}"
    else:
        text += f"; baseline: the {base.get('how', 'selection pass')}{shown}, not a fresh measurement"
    return text


def instruction_diff(old: str, new: str, label: str = "") -> str:
    """A unified diff of two instructions (``-`` the golden's, ``+`` the program's)."""
    import difflib

    name = f" ({label})" if label else ""
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), f"golden instructions{name}", f"program instructions{name}", lineterm="", n=1
    )
    return "\n".join(lines)


def _recompile_hint(program: str) -> str:
    target = f"--dspex-compile={program}" if program else "--dspex-compile"
    return f"run pytest {target} to recompile"


class GoldenFile:
    """One golden file: ``data`` (the JSON as read) and ``model`` (the same, validated)."""

    def __init__(self, path: Path, data: dict[str, Any], model: GoldenModel | None = None) -> None:
        self.path = path
        self.data = data
        self.model = model if model is not None else validate(path, data)

    def __repr__(self) -> str:
        return f"GoldenFile({str(self.path)!r}, schema={self.schema_version})"

    @property
    def schema_version(self) -> int:
        return self.model.schema_version

    @property
    def program(self) -> str:
        return self.model.program

    @property
    def validation_score(self) -> float | None:
        v = self.model.scores.validation
        return float(v.score) if v is not None else None

    @property
    def validation_examples(self) -> dict[str, float] | None:
        """Per-example validation outcomes by example key (schema 2), else None (no paired gate)."""
        v = self.model.scores.validation
        return dict(v.examples) if v is not None and v.examples is not None else None

    @property
    def validation_dataset(self) -> str | None:
        return self.model.datasets.get("validation")

    # -- the baseline: what every later run is paired with ----------------------------------------
    @property
    def baseline_outcomes(self) -> dict[str, float | list[float]] | None:
        """Per-example baseline outcomes by key (a list of draws when there were several), or None.

        Schema 3: the fresh baseline measured after the choice. Older goldens: the selection pass's
        outcomes (``validation_examples``), which is what they were gated against.
        """
        b = self.model.baseline
        if b is not None:
            return dict(b.examples)
        return self.validation_examples  # type: ignore[return-value]

    def paired_baseline(self, examples: Iterable[Any]) -> tuple[dict[str, float | list[float]] | None, int]:
        """The baseline outcomes to pair a run on ``examples`` with, and how many were left out because
        the example's labels (expected outputs) changed since the baseline was measured. Goldens
        without recorded label hashes: every outcome, 0 left out."""
        outcomes = self.baseline_outcomes
        b = self.model.baseline
        if outcomes is None or b is None or not b.labels:
            return outcomes, 0
        from ..evaluation.datasets import label_hashes

        now = label_hashes(examples)
        changed = {k for k, h in b.labels.items() if k in now and now[k] != h}
        return {k: v for k, v in outcomes.items() if k not in changed}, len(changed)

    def new_examples(self, examples: Iterable[Any]) -> int:
        """How many of ``examples`` the baseline has no outcome for (added to the dataset since it was
        measured): 0 when none is shared (nothing was compared; said as such) or there is no baseline."""
        outcomes = self.baseline_outcomes
        if not outcomes:
            return 0
        from ..evaluation.datasets import example_key

        keys = [example_key(e) for e in examples]
        new = sum(k not in outcomes for k in keys)
        return new if new < len(keys) else 0

    def shares_nothing(self, examples: Sequence[Any]) -> bool:
        """None of ``examples`` has an outcome in the golden's (fresh) baseline: a second dataset gated for the
        same program, whose examples the one baseline never measured. False without a baseline record."""
        outcomes = self.baseline_outcomes if self.model.baseline is not None else None
        if not outcomes or not examples:
            return False
        from ..evaluation.datasets import example_key

        return not any(example_key(e) in outcomes for e in examples)

    def metric_changed(self, metric: Any) -> bool:
        """Was the baseline scored by another metric than ``metric`` (its source or closure differ)?
        Older goldens without a recorded fingerprint, or a metric whose source cannot be read: no."""
        from ..evaluation.metrics import metric_fingerprint

        b = self.model.baseline
        if b is None or not b.metric_fingerprint:
            return False
        now = metric_fingerprint(metric)
        return now is not None and now != b.metric_fingerprint

    @property
    def baseline_score(self) -> float | None:
        b = self.model.baseline
        return float(b.score) if b is not None else self.validation_score

    @property
    def baseline_n(self) -> int | None:
        b = self.model.baseline
        if b is not None:
            return int(b.n)
        v = self.model.scores.validation
        return int(v.n) if v is not None else None

    @property
    def baseline_dataset(self) -> str | None:
        """The fingerprint of the dataset the baseline was measured on (older goldens: the selection set)."""
        b = self.model.baseline
        return b.dataset if b is not None else self.validation_dataset

    def provenance(self, gate_fingerprint: str | None = None) -> dict[str, Any]:
        """Where the golden's numbers come from, for every view: how the program was chosen (set, n,
        score, chosen candidate) and how its baseline was measured (n, score, draws, fresh or not).

        ``gate_fingerprint`` (the gate dataset's) lets an older golden say whether it was chosen on the
        gate's own examples (in-sample). ``text`` is one line for people.
        """
        sel, base = self.model.selection, self.model.baseline
        out: dict[str, Any] = {}
        if sel is not None:
            out["selection"] = sel.model_dump(include={"set", "n", "score", "chosen"})
            if sel.set == "trainset":  # goldens before the rule was recorded: each example without its own demo,
                # but for a one-program optimizer's, which asked each demo's example with it (trial 6, T6-2)
                one_program = self.model.optimizer.get("name") in ("LabeledFewShot", "BootstrapFewShot")
                out["selection"]["own_demos"] = sel.own_demos or ("in the prompt" if one_program else "left out")
        else:
            v = self.model.scores.validation
            same = gate_fingerprint is not None and self.validation_dataset == gate_fingerprint
            imported = self.model.optimizer.get("name") == "dspy-import"
            unknown = gate_fingerprint is None and self.validation_dataset is not None
            out["selection"] = {
                "set": "imported" if imported else "in-sample" if same else "validation or in-sample" if unknown else "validation",
                "n": v.n if v is not None else 0,
                "score": v.score if v is not None else None,
                "chosen": str(self.model.optimizer.get("chosen", "")),
            }
        if base is not None:
            out["baseline"] = {"n": base.n, "score": base.score, "draws": base.draws, "how": base.how, "fresh": True}
        else:
            v = self.model.scores.validation
            out["baseline"] = {
                "n": v.n if v is not None else 0,
                "score": v.score if v is not None else None,
                "draws": 1,
                "how": f"selection pass (golden schema {self.schema_version})",
                "fresh": False,
            }
        out["in_sample"] = out["selection"]["set"] == "in-sample"
        out["text"] = provenance_text(out)
        if base is None:
            # an older golden: its numbers are the selection's (on the gate set in-sample, or on a valset the gate
            # shares nothing with, so no run is paired with anything): say how to get a baseline (trial13)
            out["text"] += f"; record one on the gate's dataset: pytest --dspex-rebaseline={self.program}"
        return out

    @property
    def prompts(self) -> dict[str, list[dict[str, str]]]:
        return {k: [m.model_dump() for m in v] for k, v in self.model.prompts.items()}

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        """The signature fingerprint per predictor: recorded (schema 2), else rebuilt from the recorded
        signature (schema 1); a predictor with neither is left out."""
        out = {k: v.model_dump() for k, v in self.model.signature_fingerprint.items()}
        for path, state in self.model.predictors.items():
            if path not in out and state.signature is not None:
                fields = [{"name": f.name, "role": f.role, "type": f.type} for f in state.signature.fields]
                out[path] = fingerprint_of(state.signature.instructions, fields)
        return out

    def compare(
        self, outcomes: Mapping[str, float] | Iterable[Any], *, alpha: float = 0.05, tolerance: float = 0.05
    ) -> Comparison | None:
        """The paired comparison of a run's outcomes (``{key: score}`` or records) with this golden's,
        or None when the golden has no per-example outcomes (schema 1)."""
        base = self.validation_examples
        if base is None:
            return None
        current = (
            {str(k): float(v) for k, v in outcomes.items()}
            if isinstance(outcomes, Mapping)
            else outcomes_from_records(outcomes)
        )
        return compare(base, current, alpha=alpha, tolerance=tolerance)

    def instruction_changes(self, program: Module) -> dict[str, tuple[str, str]]:
        """Predictors whose instructions alone differ from the golden's: ``{path: (golden's, now)}``.

        The golden's are the instructions it sent: an override's (an imported or optimizer-rewritten
        prompt) when it has one, else the code's it fingerprinted. Empty when nothing differs or when
        fields differ too (then ``check`` raises).
        """
        recorded = self.fingerprints()
        out: dict[str, tuple[str, str]] = {}
        for path, pred in program.named_predictors():
            old = recorded.get(path)
            if old is None:
                continue
            now = fingerprint(pred.declared_signature)
            if old["hash"] != now["hash"] and diff_fingerprints(old, now) == ["instructions changed"]:
                state = self.model.predictors.get(path)
                sent = state.overrides.instructions if state is not None and state.overrides is not None else None
                out[path] = (str(sent if sent is not None else old.get("instructions", "")), str(now["instructions"]))
        return out

    def renamed_fields(self, program: Module) -> dict[str, str]:
        """``{name now: name in the golden}`` of the fields renamed since it was compiled (every predictor's)."""
        from ..programs.signatures import renamed_fields

        recorded = self.fingerprints()
        out: dict[str, str] = {}
        for path, pred in program.named_predictors():
            old = recorded.get(path)
            if old is not None:
                out.update(renamed_fields(old, fingerprint(pred.declared_signature)))
        return out

    def instruction_diff(self, program: Module) -> str:
        """The diff of every predictor's instructions that changed since the golden ('' when none did); each
        names its predictor when the program has more than one (a pipeline's second step edited alone)."""
        changes = self.instruction_changes(program)
        several = len(self.model.predictors) > 1 or len(changes) > 1
        return "\n".join(instruction_diff(old, new, path if several else "") for path, (old, new) in changes.items())

    def check(self, program: Module, *, instructions: bool = True) -> None:
        """Raise ``GoldenStaleError`` when ``program`` is not the program this golden was compiled for.

        ``instructions=False``: an edit of the instructions alone (same fields, roles and types, so the
        golden's demos still fit) is not stale — the plugin gates it against the baseline instead.
        """
        preds = dict(program.named_predictors())
        saved = self.model.predictors
        hint = _recompile_hint(self.program)
        if set(saved) != set(preds):
            gone, new = sorted(set(saved) - set(preds)), sorted(set(preds) - set(saved))
            moved = [f"predictor {p!r} removed" for p in gone] + [f"predictor {p!r} added" for p in new]
            raise GoldenStaleError(
                f"{self.path}: golden is stale: golden has predictors {sorted(saved)}, the program has "
                f"{sorted(preds)}; {hint}",
                changes=moved,
            )
        recorded = self.fingerprints()
        changes: list[str] = []
        for path, pred in preds.items():
            old = recorded.get(path)
            if old is None:
                changes += _demo_field_problems(path, pred, saved[path])
                continue
            now = fingerprint(pred.declared_signature)
            if old["hash"] != now["hash"]:
                label = "" if len(preds) == 1 else f"predictor {path!r}: "
                diff = diff_fingerprints(old, now)
                if not instructions and diff == ["instructions changed"]:
                    continue
                changes += [label + c for c in diff]
        if changes:
            raise GoldenStaleError(
                f"{self.path}: golden is stale, the signature changed since it was compiled: "
                f"{'; '.join(changes)}; {hint}",
                changes=changes,
            )

    def apply(self, program: Module, *, instructions: bool = True) -> Module:
        """Load this golden's demos into (a copy of) ``program``; a stale golden is a ``GoldenStaleError``.

        ``instructions=False`` lets an instructions-only edit through (the program keeps its own
        instructions, with the golden's demos): see ``check``.
        """
        self.check(program, instructions=instructions)
        program = program.deepcopy()
        recorded = self.fingerprints()
        for path, pred in program.named_predictors():
            state = self.model.predictors[path]
            pred.demos = [demos.from_golden(d.model_dump()) for d in state.demos]
            pred.calibration = dict(state.calibration) if state.calibration else None
            _apply_overrides(pred, state.overrides, recorded.get(path))
        return program


def _apply_overrides(pred: Predict, overrides: Overrides | None, recorded: Mapping[str, Any] | None) -> None:
    """Run ``pred`` with the golden's wording (none: the code's). The instructions override holds
    only while the code's instructions are the ones the golden fingerprinted."""
    if overrides is None:
        pred.set_wording()
        return
    instructions = overrides.instructions
    if instructions is not None and recorded is not None and recorded.get("instructions") != pred.declared_signature.instructions:
        instructions = None  # the code's instructions were edited since: the edit runs (and is gated)
    fields = {
        name: {"desc": w.desc, "prefix": w.prefix}
        for name, w in overrides.fields.items()
        if name in pred.declared_signature.fields
    }
    pred.set_wording(instructions, fields)


def _demo_field_problems(path: str, pred: Predict, state: PredictorState) -> list[str]:
    """For a golden without a recorded signature: demos whose fields the signature does not have."""
    fields = set(pred.signature.fields)
    problems: list[str] = []
    for i, entry in enumerate(state.demos):
        demo = demos.from_golden(entry.model_dump())
        unknown = set(demo) - fields - {"augmented"}
        if unknown:
            problems.append(
                f"predictor {path!r} demo {i} has field(s) {', '.join(sorted(unknown))} not in the signature "
                f"({pred.signature.signature_string()})"
            )
        missing = [n for n in pred.signature.input_fields() if n not in demo]
        if missing:
            problems.append(f"predictor {path!r} demo {i} lacks input field(s) {', '.join(missing)}")
    return problems
