"""``python -m pytest_dspex``: commands that work on golden files and reports, outside pytest.

    python -m pytest_dspex prompt tests/__dspex__/test_triage/triage.json --input message="I was charged twice"
    python -m pytest_dspex report dspex-report.json --html report.html --markdown summary.md
    python -m pytest_dspex import optimized.json --test tests/test_triage.py::test_triage

Each subcommand is a function that adds its parser to the ``subparsers`` it is given and sets
``handler`` (``Namespace -> exit code``); ``COMMANDS`` lists them in help order, so adding one is
one function and one list entry. Errors the user can fix (a missing or corrupted file, an unknown
field) print ``pytest-dspex: error: ...`` and exit 2, like a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "build_parser", "main"]

Subparsers = Any  # argparse._SubParsersAction, private in typeshed's eyes
Handler = Callable[[argparse.Namespace], int]

EXIT_OK, EXIT_USAGE = 0, 2


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


# -- prompt ------------------------------------------------------------------------------------
def _add_prompt(sub: Subparsers) -> None:
    p = sub.add_parser(
        "prompt",
        help="print the messages a compiled program sends",
        description="Print the exact messages the program compiled into GOLDEN sends to its LM "
        "(instructions, demos and the input, laid out by its adapter). Inputs not given are shown "
        "as {field} placeholders.",
    )
    p.add_argument("golden", metavar="GOLDEN", help="a golden file (<test dir>/__dspex__/<module>/<program>.json)")
    p.add_argument(
        "--input", "-i", action="append", default=[], metavar="FIELD=VALUE",
        help="an input field's value (repeatable); text for a non-text field is read as JSON",
    )  # fmt: skip
    p.add_argument(
        "--adapter", choices=("compact", "chat", "json"), default=None,
        help="the prompt layout (default: the one the golden records, else compact, the default of Predict)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON: messages, stop sequences and demo counts per predictor")
    p.set_defaults(handler=_prompt)


def _parse_inputs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise CommandError(f"--input {pair!r}: expected FIELD=VALUE")
        out[name.strip()] = value
    return out


def _golden_by_name(given: str) -> str:
    """``given`` if it is a file or looks like a path; a program's name (as ``--dspex-compile=NAME`` takes
    it) is its one golden under the current folder (trial12 T12-5), and an error naming them when several."""
    if Path(given).exists() or "/" in given or "\\" in given or given.endswith(".json"):
        return given
    found = sorted(
        p.as_posix() for p in Path().glob(f"**/__dspex__/*/{given}.json")
        if not any(part.startswith(".") or part in ("node_modules", "site-packages") for part in p.parts)
    )
    if len(found) == 1:
        return found[0]
    if found:
        raise CommandError(
            f"{given}: no such golden file; the goldens of a program {given!r} here: {', '.join(found)} (give the path)"
        )
    raise CommandError(
        f"{given}: no such golden file; compile one with pytest --dspex-compile "
        "(GOLDEN is a path: <test dir>/__dspex__/<test module>/<program>.json)"
    )


def _prompt(args: argparse.Namespace) -> int:
    from .errors import DspexError
    from .golden.production import golden_adapters, golden_requests, read_golden

    inputs = _parse_inputs(args.input)
    args.golden = _golden_by_name(args.golden)
    try:
        golden = read_golden(args.golden)
        # a plain function's golden (no predictors) holds its baseline only: its prompt is the messages
        # its own code builds, so there is none to print, and --input names no field of it (trial8 T8-4)
        plain = not golden.data.get("predictors")
        requests = {} if plain else golden_requests(golden, inputs=inputs, adapter=args.adapter)
    except DspexError as exc:
        raise CommandError(str(exc)) from None
    note = (
        "a plain function (no predictors): no prompt is recorded for it, it sends the messages its own code builds; "
        "the golden holds its baseline, which later runs are paired with"
    )
    adapters = dict.fromkeys(requests, args.adapter) if args.adapter else golden_adapters(golden)
    from .optimize.review import review_golden, summary_lines

    demos = {path: len(entry.get("demos", [])) for path, entry in golden.data["predictors"].items()}
    review = review_golden(golden.data)
    calibrations = {path: entry.get("calibration") for path, entry in golden.data["predictors"].items()}
    provenance = golden.provenance()
    if args.json:
        out = {
            "golden": args.golden,
            "program": golden.data.get("program"),
            "provenance": provenance,
            **({"note": note} if plain else {}),
            "predictors": {
                path: {
                    "adapter": adapters[path], "demos": demos[path], **review.get(path, {}),
                    "messages": r.messages, "stop": list(r.stop), "extra": dict(r.extra or {}),
                    **({"calibration": calibrations[path]} if calibrations.get(path) else {}),
                }
                for path, r in requests.items()
            },
        }
        sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        return EXIT_OK
    lines = [f"# {args.golden}: program {golden.data.get('program', '?')!s}", f"# {provenance['text']}"]
    threshold = (golden.data.get("optimizer") or {}).get("metric_threshold")
    if threshold is not None:
        lines.append(f"# bootstrapped demos needed metric >= {threshold:g}")
    lines += [f"# {line}" for line in summary_lines(review)]
    if plain:
        lines.append(f"# {note}")
    for path, r in requests.items():
        lines += ["", f"## predictor {path}: {adapters[path]} adapter, {demos[path]} demos"]
        for m in r.messages:
            lines += ["", f"--- {m['role']} ---", m["content"]]
        if r.stop:
            lines += ["", "--- stop sequences ---", json.dumps(list(r.stop), ensure_ascii=False)]
        if calibrations.get(path):
            lines += [
                "", "--- calibration (label: score adjustment) ---",
                json.dumps(calibrations[path], ensure_ascii=False),
                "The answer is the label with the highest log p(first answer token) + adjustment: ask for "
                "logprobs, or load the golden with pytest_dspex.load_golden, which does.",
            ]  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


# -- report ------------------------------------------------------------------------------------
def _add_report(sub: Subparsers) -> None:
    from .reports.formats import add_format_arguments

    p = sub.add_parser(
        "report",
        help="render a JSON report (--dspex-report) as HTML, markdown or JUnit XML",
        description="Render a JSON report written by pytest --dspex-report (or merged by another command) "
        "in the formats asked for: a self-contained HTML file, a PR-ready markdown summary, JUnit XML.",
    )
    p.add_argument("report", metavar="REPORT", help="the JSON report")
    add_format_arguments(p, exclude=("json",))  # the input is the JSON report
    p.set_defaults(handler=_report)


def read_report(path: str) -> dict[str, Any]:
    """A JSON report from disk; a missing or corrupted one is a ``CommandError`` naming the file."""
    from .reports.combine import CombineError
    from .reports.combine import read_report as read

    try:
        return read(path)
    except CombineError as exc:
        raise CommandError(str(exc)) from None


def _report(args: argparse.Namespace) -> int:
    from .reports.formats import wanted_formats, write_formats

    if not wanted_formats(args):
        from .reports.formats import FORMATS

        flags = [f"--{f.option} PATH" for f in FORMATS.values() if f.name != "json"]
        raise CommandError(f"report: say what to write: {', '.join(flags[:-1])} and/or {flags[-1]}")
    data = read_report(args.report)
    programs = data.get("programs") or []
    incomplete = [p for p in programs if isinstance(p, dict) and (p.get("verdict") or {}).get("kind") == "incomplete"]
    if not programs or incomplete:  # rendered as what it is (never a pass), and said here too
        what = "no program was evaluated" if not programs else f"{len(incomplete)} program(s) incomplete: not all examples ran"
        sys.stderr.write(f"pytest-dspex: {args.report}: {what}; no gate verdict\n")
    _, unwritten = write_formats(data, args)
    return EXIT_USAGE if unwritten else EXIT_OK  # writing is all it does: a report not written is its failure


# -- import (pytest_dspex.plugin.importer) -------------------------------------------------------------
def _add_import(sub: Subparsers) -> None:
    p = sub.add_parser(
        "import",
        help="turn a DSPy program's saved state into a test's golden, with a fresh baseline",
        description="Load SAVED (a program saved by DSPy with program.save(), any optimizer) into the program of "
        "TEST's @pytest.mark.dspex_program, write its golden file (demos, instructions and field wording kept) "
        "and run TEST once: the gate's dataset is evaluated with the imported program and those outcomes are "
        "the golden's baseline. Arguments after -- go to pytest (e.g. -- --dspex-model=gpt-4o-mini).",
    )
    p.add_argument("saved", metavar="SAVED", help="the JSON file written by DSPy's program.save()")
    p.add_argument("--test", required=True, metavar="TEST", help="the pytest node id of the gate, e.g. tests/test_triage.py::test_triage")
    p.add_argument("--force", action="store_true", help="replace the program's existing golden file")
    p.set_defaults(handler=_import, takes_pytest_args=True)


def _import(args: argparse.Namespace) -> int:
    from .errors import DspexError
    from .plugin.importer import import_dspy_state

    try:
        result = import_dspy_state(args.saved, args.test, force=args.force, pytest_args=args.pytest_args, out=sys.stdout)
    except DspexError as exc:
        raise CommandError(str(exc)) from None
    return result.exit_code


# -- combine (pytest_dspex.reports.combine) -------------------------------------------------------------
def _add_combine(sub: Subparsers) -> None:
    from .reports.combine import add_parser

    add_parser(sub)


# -- entry -------------------------------------------------------------------------------------
#: The subcommands, in help order: each adds its parser and sets ``handler``.
COMMANDS: list[Callable[[Subparsers], None]] = [_add_prompt, _add_import, _add_report, _add_combine]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_dspex",
        description="pytest-dspex commands for golden files and reports (the tests themselves run under pytest).",
    )
    sub = parser.add_subparsers(dest="command", title="commands", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # what follows goes to pytest (``import``)
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if extra and not getattr(args, "takes_pytest_args", False):
        parser.error(f"{args.command}: arguments after -- are for `import` (pytest's arguments)")
    args.pytest_args = extra
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        sys.stderr.write(f"pytest-dspex: error: {exc}\n")
        return EXIT_USAGE
