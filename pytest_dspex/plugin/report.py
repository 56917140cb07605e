"""What the controller gathers from every test report, the summary table and the JSON report.

Workers and the single process alike attach JSON-able dicts to ``item.user_properties``
(``dspex_result`` for whole-dataset evaluations, ``dspex_example`` for per-example items,
``dspex_golden`` for goldens used or written). Reports carry them to the controller (xdist ships
``user_properties``), where ``Collector`` builds per-program rows and per-example aggregates; so
the result is the same with ``-n`` and without.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gates import Verdict, judge

__all__ = ["Aggregate", "Collector", "format_table"]


@dataclass
class Aggregate:
    """Per-example items of one program on one dataset, scored together."""

    program: str
    dataset: str
    threshold: float | None
    tolerance: float
    golden_score: float | None
    golden: str | None
    scores: dict[int, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)
    verdict: Verdict | None = None

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def score(self) -> float:
        return sum(self.scores.values()) / self.n if self.n else 0.0

    @property
    def lm_unavailable(self) -> bool:
        return self.errors.get("lm_unavailable", 0) * 2 > self.n

    def ci95(self) -> tuple[float, float]:
        from ..stats import confidence_interval

        return confidence_interval(list(self.scores.values()))

    def decide(self) -> Verdict:
        self.verdict = judge(
            score=self.score,
            n=self.n,
            threshold=self.threshold,
            golden_score=self.golden_score,
            tolerance=self.tolerance,
            lm_unavailable=self.lm_unavailable,
            budget_spent=self.errors.get("budget", 0),
        )
        return self.verdict

    def row(self) -> dict[str, Any]:
        assert self.verdict is not None
        lo, hi = self.ci95()
        return {
            "program": self.program,
            "mode": "per-example",
            "test": self.dataset,
            "score": self.score,
            "ci95": [lo, hi],
            "n": self.n,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "usage": dict(self.usage),
            "golden": self.golden,
            **{k: v for k, v in self.verdict.to_dict().items() if k != "score"},
        }


class Collector:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.aggregates: dict[tuple[str, str], Aggregate] = {}
        self.goldens: dict[str, dict[str, Any]] = {}
        self.test_files: set[str] = set()

    def add(self, nodeid: str, fspath: str, properties: list[tuple[str, Any]]) -> None:
        for key, value in properties:
            if key == "dspex_result":
                self.rows.append({**value, "test": nodeid})
                self.test_files.add(fspath)
            elif key == "dspex_example":
                self.test_files.add(fspath)
                agg_key = (value["program"], value["dataset"])
                agg = self.aggregates.get(agg_key)
                if agg is None:
                    agg = self.aggregates[agg_key] = Aggregate(
                        value["program"], value["dataset"], value["threshold"], value["tolerance"],
                        value["golden_score"], value["golden"],
                    )  # fmt: skip
                agg.scores[value["index"]] = value["score"]
                if value.get("error_kind"):
                    agg.errors[value["error_kind"]] = agg.errors.get(value["error_kind"], 0) + 1
                for k, v in (value.get("usage") or {}).items():
                    agg.usage[k] = agg.usage.get(k, 0) + v
            elif key == "dspex_golden":
                prev = self.goldens.get(value["path"], {})
                merged = {**prev, **{k: v for k, v in value.items() if v is not None}}
                self.goldens[value["path"]] = merged

    def finish(self) -> list[Aggregate]:
        failed = []
        for agg in self.aggregates.values():
            if not agg.decide().passed:
                failed.append(agg)
        return failed

    def all_rows(self) -> list[dict[str, Any]]:
        return self.rows + [a.row() for a in self.aggregates.values() if a.verdict is not None]

    def unused_goldens(self, known_test_files: set[str]) -> list[str]:
        """Golden files beside the test files that ran which no test used (like syrupy's unused)."""
        used = set(self.goldens)
        unused = []
        dirs = {Path(f).parent / "__dspex__" for f in known_test_files}
        for d in sorted(dirs):
            if not d.is_dir():
                continue
            for module_dir in sorted(p for p in d.iterdir() if p.is_dir()):
                test_file = d.parent / f"{module_dir.name}.py"
                ran = str(test_file) in known_test_files
                if ran or not test_file.exists():
                    for g in sorted(module_dir.glob("*.json")):
                        if str(g) not in used:
                            unused.append(str(g))
        return unused


def _fmt_score(row: dict[str, Any]) -> str:
    lo, hi = row.get("ci95") or (0, 0)
    return f"{row['score']:.3f} ({lo:.2f}-{hi:.2f})"


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["program", "mode", "score (95% CI)", "thresh", "golden (delta)", "n", "err", "calls", "cached", "tokens", "cost", "gate"]
    lines = [header]
    for r in rows:
        usage = r.get("usage") or {}
        golden = r.get("golden_score")
        golden_txt = "-" if golden is None else f"{golden:.3f} ({round(r['score'] - golden, 3) + 0.0:+.3f})"
        lines.append([
            str(r["program"]),
            str(r.get("mode", "dataset")),
            _fmt_score(r),
            "-" if r.get("threshold") is None else f"{r['threshold']:.2f}",
            golden_txt,
            str(r["n"]),
            str(r.get("errors", 0)),
            str(int(usage.get("calls", 0))),
            str(int(usage.get("cache_hits", 0))),
            str(int(usage.get("tokens", 0))),
            f"${usage.get('cost', 0.0):.4f}",
            "pass" if r.get("passed") else ("FAIL: " + str(r.get("reason", ""))),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for i, row in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
