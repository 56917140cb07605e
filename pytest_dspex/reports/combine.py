"""Merge the JSON reports of sharded runs into the one verdict an unsharded run would give.

    pytest --dspex-shard=1/3 --dspex-report=shard-1.json     # ... one CI job per shard
    python -m pytest_dspex combine shard-*.json --report combined.json --html report.html

``combine(reports)`` takes the parsed reports (the team contract's report JSON, each with
``"shard": {"index": K, "count": N}``) and returns one report of the same shape: per program and
dataset, the shards' records are concatenated, and score, n, confidence interval, error counts,
the paired comparison with the golden's per-example outcomes and the gate are computed from them
by the function a single run uses (``reports.run.ProgramRun``: ``EvaluationResult.from_records``,
``gates.judge``, the row). Nothing is averaged across shards.

Refused with a :class:`CombineError` (exit code 2 on the command line), never a silently smaller n:

* a shard missing or given twice, reports of different shard counts, a sharded report mixed with
  an unsharded one;
* an example key in two shards (or twice in one), or a record in a shard that does not own it
  (the shards evaluated different datasets or ran different versions);
* a program evaluated by some shards but not others (unless the reports record its ``dataset_size``
  and the merged records add up to it: a shard may own none of a small dataset's examples), shards
  that disagree on its metric, threshold, tolerance, golden or model, and a ``dataset_size`` that
  the merged records do not add up to;
* a golden file named by the reports that cannot be read under ``rootdir`` (the paired comparison
  needs its per-example outcomes);
* reports that evaluated no program (an interrupted run), or a program whose examples did not all run
  in its shard (verdict ``incomplete``: ``-x``, ``-k``, an interruption, a crashed worker).

The command exits 1 when a gate fails, 0 when every gate passes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluation.gates import DEFAULT_MAX_ERROR_RATE
from ..evaluation.records import ExampleRecord
from ..evaluation.sharding import shard_of
from .document import RunDocument
from .formats import add_format_arguments, write_formats
from .run import ProgramRun, RunSettings

__all__ = [
    "CombineError",
    "add_parser",
    "combine",
    "combine_files",
    "golden_outcomes",
    "main",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: per-program fields computed from one shard's records: recomputed from all of them, never copied
_PER_SHARD = frozenset(
    {"records", "comparison", "verdict", "flaky", "usage", "passed", "elapsed_s", "lm_unavailable", "worst", "shards"}
)
#: per-program fields every shard must agree on
_SAME = (
    "mode",
    "metric",
    "threshold",
    "tolerance",
    "alpha",
    "golden",
    "golden_score",
    "max_error_rate",
    "dataset_size",
)


class CombineError(ValueError):
    """Reports that cannot be combined into one honest verdict (the message says which and why)."""


def _name(i: int, names: Sequence[str] | None) -> str:
    return names[i] if names is not None and i < len(names) else f"report #{i + 1}"


def _check_shards(reports: Sequence[Mapping[str, Any]], names: Sequence[str] | None) -> int:
    """The shard count, after checking that every shard 1..N is there exactly once."""
    shards = [r.get("shard") for r in reports]
    if all(s is None for s in shards):
        if len(reports) > 1:
            raise CombineError(
                f"{len(reports)} reports without shard metadata: combine merges the reports of one sharded run "
                "(pytest --dspex-shard=K/N --dspex-report=...), one report per shard"
            )
        return 1
    if any(s is None for s in shards):
        bad = [_name(i, names) for i, s in enumerate(shards) if s is None]
        raise CombineError(f"{', '.join(bad)}: not from a sharded run, but the other reports are")
    seen: dict[int, str] = {}
    counts: dict[int, list[str]] = {}
    for i, s in enumerate(shards):
        try:
            k, n = int(s["index"]), int(s["count"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            raise CombineError(
                f"{_name(i, names)}: malformed shard metadata {s!r} (expected {{'index': K, 'count': N}})"
            ) from None
        if not 1 <= k <= n:
            raise CombineError(f"{_name(i, names)}: shard {k}/{n} is out of range")
        counts.setdefault(n, []).append(_name(i, names))
        if k in seen:
            raise CombineError(f"shard {k}/{n} is given twice ({seen[k]} and {_name(i, names)})")
        seen[k] = _name(i, names)
    if len(counts) > 1:
        detail = "; ".join(f"of {n}: {', '.join(v)}" for n, v in sorted(counts.items()))
        raise CombineError(f"the reports come from runs with different shard counts ({detail})")
    (count,) = counts
    missing = sorted(set(range(1, count + 1)) - set(seen))
    if missing:
        raise CombineError(
            f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{k}/{count}' for k in missing)} "
            f"missing: got {', '.join(f'{k}/{count}' for k in sorted(seen))}; combining without "
            f"{'them' if len(missing) > 1 else 'it'} would judge a smaller n"
        )
    return count


def golden_outcomes(path: Path) -> dict[str, float | list[float]] | None:
    """A golden file's per-example validation outcomes (schema 2), or None for a golden without them
    (schema 1: the gate falls back to the tolerance against its score, as in a single run)."""
    from ..errors import GoldenFileError
    from ..golden.file import read_golden

    try:
        missing = "golden file named by the reports not found (run combine from the project's rootdir or pass --rootdir)"
        return read_golden(path, missing=missing).baseline_outcomes
    except GoldenFileError as exc:
        raise CombineError(str(exc)) from None


def _usage_sum(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in entries:
        for k, v in (e.get("usage") or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
    for k, v in out.items():
        if isinstance(v, float):
            out[k] = round(v, 10)
    return out


def _program_key(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(entry.get("test") or ""), str(entry.get("program") or ""), str(entry.get("dataset") or ""))


def _label(key: tuple[str, str, str]) -> str:
    test, program, dataset = key
    return f"program {program!r} on {dataset or '?'}" + (f" ({test})" if test else "")


def _merge_program(
    key: tuple[str, str, str],
    parts: list[tuple[int, int, Mapping[str, Any]]],
    count: int,
    report_names: list[str],
    rootdir: Path,
    default_max_error_rate: float,
) -> dict[str, Any]:
    label = _label(key)
    first = parts[0][2]
    for field in _SAME:
        values = {json.dumps(p[2].get(field), sort_keys=True) for p in parts}
        if len(values) > 1:
            shown = ", ".join(f"{report_names[i]}: {p.get(field)!r}" for i, _, p in parts)
            raise CombineError(f"{label}: the shards disagree on {field} ({shown})")
    records: list[ExampleRecord] = []
    owner: dict[str, str] = {}
    for i, shard_index, entry in parts:
        raw_records = entry.get("records")
        if not isinstance(raw_records, list):
            raise CombineError(
                f"{report_names[i]}: {label} has no records (write the shard reports with --dspex-report)"
            )
        for raw in raw_records:
            try:
                rec = ExampleRecord.from_json(raw)
            except (KeyError, TypeError, ValueError) as exc:
                raise CombineError(f"{report_names[i]}: {label}: malformed record {str(raw)[:200]} ({exc})") from None
            if rec.key in owner:
                raise CombineError(
                    f"{label}: example {rec.key!r} is in {owner[rec.key]} and {report_names[i]} "
                    "(duplicated example keys or overlapping shards)"
                )
            if count > 1 and shard_of(rec.key, count) != shard_index:
                raise CombineError(
                    f"{report_names[i]}: {label}: example {rec.key!r} belongs to shard {shard_of(rec.key, count)}/{count}, "
                    f"not {shard_index}/{count} (the shards evaluated different datasets or ran different versions)"
                )
            owner[rec.key] = report_names[i]
            records.append(rec)
    size = first.get("dataset_size")
    if size is not None and int(size) != len(records):
        raise CombineError(f"{label}: the shards hold {len(records)} examples, the dataset has {int(size)}")
    indexes = [r.index for r in records]
    if len(set(indexes)) != len(indexes):
        dup = sorted({x for x in indexes if indexes.count(x) > 1})[:5]
        raise CombineError(f"{label}: record index {dup} appears in more than one shard")

    # the merged run: the first shard's settings (all agree, checked above) with every shard's records,
    # judged and made a row by the functions a single run uses; nothing per shard is copied
    settings = RunSettings.from_json(first)
    for _, _, entry in parts[1:]:
        settings.update(RunSettings.from_json(entry))  # the prompts, provenance and instructions diff any shard recorded
    if first.get("max_error_rate") is None:
        settings.max_error_rate = default_max_error_rate
    merged = ProgramRun(settings, golden_outcomes=golden_outcomes(rootdir / str(first["golden"])) if first.get("golden") else None)
    merged.add(records)
    merged.judge()
    row = merged.row()
    # the shards' own accounting (retries, hedges...) summed; the records' sums when they have none
    row["usage"] = _usage_sum([p for _, _, p in parts]) or row["usage"]
    row["shards"] = len(parts)
    return row


def combine(
    reports: Sequence[Mapping[str, Any]],
    *,
    names: Sequence[str] | None = None,
    rootdir: str | Path = ".",
    max_error_rate: float | None = None,
) -> dict[str, Any]:
    """One report judged from the records of every shard (see the module docs for what is refused).

    ``names`` label the reports in error messages (file names); ``rootdir`` is where the reports'
    relative golden paths are read; ``max_error_rate`` applies when a report does not record its own.
    """
    if not reports:
        raise CombineError("no reports to combine")
    report_names = [_name(i, names) for i in range(len(reports))]
    for i, r in enumerate(reports):
        if not isinstance(r, Mapping) or not isinstance(r.get("programs"), list):
            raise CombineError(
                f"{report_names[i]}: not a pytest-dspex report (expected an object with a 'programs' list)"
            )
    count = _check_shards(reports, names)

    for field in ("git_commit", "plugin_version"):
        values = {r.get(field) for r in reports if r.get(field) is not None}
        if len(values) > 1:
            raise CombineError(
                f"the shards ran different {field.replace('_', ' ')}s: {', '.join(sorted(map(str, values)))}"
            )
    # a shard made on edited files makes the whole run's report one made on them; all must say clean for clean
    dirty_values = [r.get("git_dirty") for r in reports]
    dirty = True if True in dirty_values else False if all(v is False for v in dirty_values) else None
    models = {str((r.get("model") or {}).get("model")) for r in reports if (r.get("model") or {}).get("model")}
    if len(models) > 1:
        raise CombineError(f"the shards used different models: {', '.join(sorted(models))}")

    if not any(r["programs"] for r in reports):  # an interrupted or empty run: nothing to judge, never a pass
        raise CombineError(
            f"{', '.join(report_names)}: no program was evaluated (an interrupted run, or no dspex test selected); "
            "a verdict needs the shards' records"
        )
    groups: dict[tuple[str, str, str], list[tuple[int, int, Mapping[str, Any]]]] = {}
    for i, r in enumerate(reports):
        shard_index = int(r["shard"]["index"]) if r.get("shard") else 1
        seen: set[tuple[str, str, str]] = set()
        for entry in r["programs"]:
            if not isinstance(entry, Mapping):
                raise CombineError(f"{report_names[i]}: a program entry is not an object")
            key = _program_key(entry)
            verdict = entry.get("verdict")
            if isinstance(verdict, Mapping) and verdict.get("kind") == "incomplete":
                raise CombineError(
                    f"{report_names[i]}: {_label(key)} is {verdict.get('reason') or 'incomplete'}; run that shard "
                    "whole (without -x, -k or an interruption) before combining"
                )
            if key in seen:
                raise CombineError(f"{report_names[i]}: {_label(key)} appears twice")
            seen.add(key)
            groups.setdefault(key, []).append((i, shard_index, entry))
    for name, r in zip(report_names, reports, strict=True):
        if r.get("stopped"):  # the session ended early (a crashed worker, a collection error, ...): not whole
            raise CombineError(f"{name}: the run stopped early ({r['stopped']}); run that shard whole before combining")
    for key, parts in groups.items():
        # a shard may hold none of a small dataset's examples; without the dataset's size to prove
        # that nothing is missing, a program absent from a shard is an error
        if len(parts) != len(reports) and any(p.get("dataset_size") is None for _, _, p in parts):
            have = {i for i, _, _ in parts}
            lacking = [report_names[i] for i in range(len(reports)) if i not in have]
            raise CombineError(
                f"{_label(key)} is missing from {', '.join(lacking)}: every shard must report every program "
                "(with its share of the examples, possibly none), or record the dataset's size (dataset_size)"
            )

    limit = DEFAULT_MAX_ERROR_RATE if max_error_rate is None else max_error_rate
    base = reports[0]
    report_limit = base.get("max_error_rate")
    programs = [
        _merge_program(
            key, parts, count, report_names, Path(rootdir), limit if report_limit is None else float(report_limit)
        )
        for key, parts in groups.items()
    ]
    unused_sets = [set(r.get("unused_goldens") or []) for r in reports]
    goldens: dict[str, Any] = {}
    for r in reports:
        g = r.get("goldens")
        if isinstance(g, Mapping):
            goldens.update(g)
    failed: dict[str, list[str]] = {}  # every shard's programs that failed before a verdict (trial12 T12-3)
    for r in reports:
        for program, tests in (r.get("failed_before_verdict") or {}).items():
            failed.setdefault(str(program), []).extend(t for t in tests if t not in failed.get(str(program), []))
    return (
        RunDocument.from_json({**base, "failed_before_verdict": failed, "git_dirty": dirty})
        .merged(
            programs,
            goldens=goldens,
            unused_goldens=sorted(set.intersection(*unused_sets)) if unused_sets else [],
            combined={"shards": count, "reports": len(reports)},
        )
        .to_json()
    )


def read_report(path: str) -> dict[str, Any]:
    """A JSON report from disk (also ``report`` on the command line); a missing or corrupted one is a
    ``CombineError`` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CombineError(f"{path}: no such report (write one with pytest --dspex-report={path})") from None
    except (OSError, ValueError) as exc:
        raise CombineError(f"{path}: not a readable JSON report ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("programs", []), list):
        raise CombineError(f"{path}: not a pytest-dspex report (expected an object with a 'programs' list)")
    return data


def combine_files(
    paths: Sequence[str], *, rootdir: str | Path = ".", max_error_rate: float | None = None
) -> dict[str, Any]:
    """``combine`` of the reports at ``paths`` (named by their paths in errors)."""
    return combine([read_report(p) for p in paths], names=list(paths), rootdir=rootdir, max_error_rate=max_error_rate)


def add_parser(sub: Any) -> None:
    """Add the ``combine`` subcommand to an argparse ``subparsers`` (``python -m pytest_dspex combine``)."""
    p = sub.add_parser(
        "combine",
        help="merge sharded runs' reports into one verdict",
        description="Merge the JSON reports of a sharded run (pytest --dspex-shard=K/N --dspex-report=...) "
        "into the verdict one unsharded run would give. Exit 1 when a gate fails, 2 on bad input "
        "(a missing or duplicated shard, overlapping examples, an unreadable report).",
    )
    _arguments(p)
    p.set_defaults(handler=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", nargs="+", metavar="REPORT", help="one JSON report per shard")
    add_format_arguments(p)
    p.add_argument("--rootdir", default=".", help="the project root the reports' paths are relative to (default: .)")
    p.add_argument(
        "--max-error-rate", type=float, default=None,
        help=f"error budget for reports that do not record theirs (default {DEFAULT_MAX_ERROR_RATE})",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """The ``combine`` command: 0 when every gate passes, 1 when one fails, 2 on bad input."""
    try:
        report = combine_files(args.reports, rootdir=args.rootdir, max_error_rate=args.max_error_rate)
    except CombineError as exc:
        sys.stderr.write(f"pytest-dspex: error: {exc}\n")
        return EXIT_USAGE
    to_stdout, _ = write_formats(report, args)  # a report not written is said; the exit code stays the verdict's
    if args.format_markdown != "-":  # the whole run's summary on the job page, with or without --markdown (as
        # the plugin's); printed to stdout, it is the caller's to place
        from .._support.atomic import describe_os_error
        from .markdown import append_step_summary, render_markdown

        try:
            append_step_summary(render_markdown(report))
        except OSError as exc:
            where = os.environ.get("GITHUB_STEP_SUMMARY")
            sys.stderr.write(f"pytest-dspex: GitHub job summary not written: $GITHUB_STEP_SUMMARY ({where}): {describe_os_error(exc)}\n")
    out = sys.stderr if to_stdout else sys.stdout  # stdout carries a report then
    from ._format import ProgramView

    for p in report["programs"]:
        view = ProgramView(p)  # mode and test: a program gated by two tests is two different lines
        lo, hi = p["ci95"]
        state = "passed" if view.passed else f"FAILED ({'; '.join(view.failed_checks)})"
        out.write(
            f"{p['program']} [{view.mode}] {view.test_short} on {p.get('dataset')}: score {p['score']:.3f} (95% CI {lo:.3f}-{hi:.3f}) on n={p['n']} "
            f"from {report['combined']['shards']} shard(s): gate {state}\n"
        )
    return EXIT_OK if report["passed"] else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytest_dspex.reports.combine REPORT...`` (the same as ``python -m pytest_dspex combine``)."""
    parser = argparse.ArgumentParser(prog="python -m pytest_dspex combine", description=__doc__.split("\n\n")[0])
    _arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
