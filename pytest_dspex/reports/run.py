"""One program's run, from its example records to its verdict and report row: the one pipeline.

    run = ProgramRun(RunSettings(program="triage", mode="dataset", test=nodeid, dataset="data/dev.jsonl",
                                 metric="team_matches", threshold=0.8))
    run.add(records)                 # ExampleRecords, from this process, xdist workers or shard reports
    verdict = run.judge()            # gates.judge on them; incomplete / deferred when that is the truth
    row = run.row()                  # the JSON report's ``programs[]`` entry (team contract)
    RunSettings.from_json(row)       # what the row says about its gate, e.g. for a combine of shards

Every place that gates a program goes through here: the whole-dataset test (``dspex_evaluate``), the
controller judging a per-example test's items (``dspex_example``), shard ``combine`` merging the shards'
rows, and so every report format. None of them builds a verdict or a row of its own, so a program's
verdict and row are the same whichever path produced its records.

``RunSettings`` are what a gate is judged against (threshold, tolerance, golden, …) and what the row
says about the run besides its figures; they travel as JSON under the row's own key names, and keys
this version does not know pass through (``extra``), so a newer writer's fields survive a combine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the plugin's start-up reads this module
    from ..evaluation.gates import Verdict
    from ..evaluation.records import ExampleRecord
    from ..evaluation.result import EvaluationResult
    from ..evaluation.sharding import Shard

__all__ = ["DEFERRED", "ProgramRun", "RunSettings"]

#: ``Verdict.kind`` of a shard job's program: its gate is judged by ``combine`` on the merged records
DEFERRED = "deferred"

#: said when a plain function raised beyond the error budget and made no LM call through the session
NO_CALLS_HINT = (
    "it made no LM call through the session, so its LM calls did not reach the session's endpoint: set "
    "dspex_openai_env = true (or --dspex-openai-env) or build its client from dspex_endpoint.base_url"
)

#: row keys computed from the records and the verdict (never settings): recomputed, never copied;
#: ``passed``, ``elapsed_s``, ``lm_unavailable`` and ``worst`` are older reports' flat fields
COMPUTED = frozenset({
    "repeats", "score", "n", "ci95", "errors", "errors_by_kind", "infra_errors", "usage", "cache_only",
    "latency_s", "verdict", "comparison", "flaky", "records", "shards", "repeat_reduction",
    "passed", "elapsed_s", "lm_unavailable", "worst",
})  # fmt: skip


@dataclass
class RunSettings:
    """What a program's gate is judged against, and what its row says besides the figures.

    JSON: the row's key names (``golden_provenance`` for ``provenance``); unknown keys in ``extra``."""

    program: str
    mode: str = "dataset"  # "dataset" (dspex_evaluate) or "per-example" (dspex_example)
    test: str = ""
    dataset: str | None = None
    metric: str = ""
    threshold: float | None = None
    tolerance: float = 0.05
    alpha: float | None = None
    max_error_rate: float = 0.05  # gates.DEFAULT_MAX_ERROR_RATE
    golden: str | None = None  # the golden file, relative to the rootdir
    golden_score: float | None = None  # the golden's score, when measured on this very dataset
    dataset_size: int | None = None  # the whole dataset (combine checks the shards add up to it)
    note: str = ""
    prompts: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None  # how the golden's program was chosen and its baseline measured
    instructions_diff: str = ""  # the program's instructions differ from the golden's
    plain_function: bool = False  # a plain function (``dspex.program(fn)``): its LM calls may bypass the session
    #: re-asks of an example whose first answer disagreed with a noisy baseline (0: none; ``comparison.RedrawPlan``)
    redraws: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = {"provenance": "golden_provenance"}

    def to_json(self) -> dict[str, Any]:
        out = {key: getattr(self, name) for name, key in _json_names()}
        return out | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSettings:
        """From a row or a settings dict; computed row keys are ignored, unknown ones kept in ``extra``."""
        names = {cls._KEYS.get(f.name, f.name): f.name for f in fields(cls) if f.name != "extra"}
        values = {names[k]: v for k, v in data.items() if k in names and v is not None}
        values["program"] = str(data.get("program") or "")
        for name in ("tolerance", "max_error_rate", "threshold", "golden_score", "alpha"):
            if name in values:
                values[name] = float(values[name])
        if "dataset_size" in values:
            values["dataset_size"] = int(values["dataset_size"])
        if "redraws" in values:
            values["redraws"] = int(values["redraws"])
        values["prompts"] = dict(values.get("prompts") or {})
        comparison = data.get("comparison")
        if "alpha" not in values and isinstance(comparison, Mapping) and comparison.get("alpha") is not None:
            values["alpha"] = float(comparison["alpha"])  # an older row: its comparison's alpha
        extra = {k: v for k, v in data.items() if k not in names and k not in COMPUTED}
        return cls(**values, extra=extra)

    def update(self, other: RunSettings) -> None:
        """Take what ``other`` says and this does not: items of one test send the large parts once."""
        self.prompts = self.prompts or other.prompts
        self.provenance = self.provenance or other.provenance
        self.instructions_diff = self.instructions_diff or other.instructions_diff
        self.extra = other.extra | self.extra


_NAMES: tuple[tuple[str, str], ...] = ()


def _json_names() -> tuple[tuple[str, str], ...]:
    """``RunSettings``' (field, JSON key) pairs, ``extra`` left out: worked out once (``to_json`` runs for
    every per-example item's report, and ``dataclasses.fields`` is not free)."""
    global _NAMES
    if not _NAMES:
        _NAMES = tuple((f.name, RunSettings._KEYS.get(f.name, f.name)) for f in fields(RunSettings) if f.name != "extra")
    return _NAMES


@dataclass
class ProgramRun:
    """One program's gate on one dataset in one test: its records, then its result, verdict and row."""

    settings: RunSettings
    records: dict[int, ExampleRecord] = field(default_factory=dict)
    #: the golden's per-example outcomes, for the paired comparison (None: the tolerance gate alone)
    golden_outcomes: dict[str, float | list[float]] | None = None
    #: a shard job's run (``--dspex-shard``): its verdict is deferred to ``combine``
    shard: Shard | None = None
    #: how many examples a whole run of this job has (the dataset, or the shard's share) …
    expected: int | None = None
    #: … and how many the collection selected (``-k``, ``--lf``, node ids)
    selected: int | None = None
    result: EvaluationResult | None = None
    verdict: Verdict | None = None
    #: incomplete because the user selected a part of the examples (not cut short): no failure of its own
    selection: bool = False

    @property
    def label(self) -> str:
        return f"{self.settings.program} on {self.settings.dataset}"

    def add(self, records: Iterable[ExampleRecord]) -> None:
        for rec in records:
            self.records[rec.index] = rec

    def judge(self, *, result: EvaluationResult | None = None, stopped: str = "") -> Verdict:
        """The gate on the records (or on ``result``, an evaluation's own, with its LM accounting).

        Only a complete run is judged: fewer records than ``expected`` (default: the dataset's size)
        give ``incomplete``, saying why: the user's selection (``selected``: no failure of its own), or
        ``stopped`` (why the session ended early), else a cut-short run. A shard job's complete share
        is ``deferred`` to ``combine``.
        """
        from ..evaluation.gates import DEFAULT_ALPHA, PROGRAM_ERRORS, incomplete, judge
        from ..evaluation.result import EvaluationResult

        s = self.settings
        if result is None:
            result = EvaluationResult.from_records(self.records.values(), program=s.program, metric=s.metric)
        else:
            self.add(result.records)
        verdict = judge(
            result,
            threshold=s.threshold,
            golden_score=s.golden_score,
            tolerance=s.tolerance,
            max_error_rate=s.max_error_rate,
            golden_outcomes=self.golden_outcomes,
            alpha=s.alpha if s.alpha is not None else DEFAULT_ALPHA,
            redraw_limit=s.redraws,
            program=s.program,
        )
        if verdict.kind == PROGRAM_ERRORS and s.plain_function and not result.usage.calls:
            verdict = replace(verdict, reason=f"{verdict.reason}; {NO_CALLS_HINT}")
        ran = result.n
        expected = self.expected if self.expected is not None else s.dataset_size
        if expected is not None and ran < expected:
            self.selection = self.selected is not None and ran >= self.selected and not stopped
            if self.selection:
                why = f"{self.selected} selected with -k, --lf or node ids; run them all for a verdict"
            else:
                why = stopped or "the run stopped early: -x, an interruption or a crashed worker"
            verdict = incomplete(verdict, ran, expected, why)
        elif self.shard is not None:  # a partial share is not judged: combine gates the merged records
            share = f"{ran} of {s.dataset_size}" if s.dataset_size is not None else str(ran)
            reason = f"shard {self.shard}: {share} examples; gate deferred to `python -m pytest_dspex combine`"
            verdict = replace(verdict, passed=True, kind=DEFERRED, reason=reason, details=[], comparison=None)
        self.result, self.verdict = result, verdict
        return verdict

    def row(self) -> dict[str, Any]:
        """The JSON report's entry for this program (``judge`` first)."""
        from .rows import program_row

        assert self.result is not None and self.verdict is not None, "judge() before row()"
        s = self.settings
        row = program_row(
            self.result,
            self.verdict,
            mode=s.mode,
            dataset=s.dataset,
            test=s.test,
            threshold=s.threshold,
            tolerance=s.tolerance,
            max_error_rate=s.max_error_rate,
            golden=s.golden,
            note=s.note,
            prompts=s.prompts,
            alpha=s.alpha,
            provenance=s.provenance,
            instructions_diff=s.instructions_diff,
        )
        if s.dataset_size is not None:
            row["dataset_size"] = s.dataset_size
        if s.redraws:  # combine judges the merged records with the same redraw rule
            row["redraws"] = s.redraws
            if self.result.usage.estimated and self.golden_outcomes:  # --dspex-estimate: what the redraws may add
                from ..evaluation.comparison import RedrawPlan

                plan = RedrawPlan.of(self.golden_outcomes, s.redraws)
                if plan is not None:
                    about, most = plan.expected_calls(r.key for r in self.result.records)
                    row["redraw_estimate"] = {"about": round(about, 3), "at_most": most}
        return s.extra | row  # what the records say wins over anything carried along
