"""A markdown summary ready to paste as a pull-request comment (and to show on a GitHub job page).

    text = write_markdown(report, "dspex-summary.md")   # also appended to $GITHUB_STEP_SUMMARY

One table row per program with its verdict, then per program the examples that regressed against
its golden (the first 10, "and N more"). Every value from the run is escaped: an input may hold
markdown or HTML, and GitHub renders both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._support.atomic import atomic_write_text
from ._format import ProgramView, endpoint_text, fields_text, fmt_num, fmt_score, p_text, split_expected, value_text
from .checkout import commit_text

__all__ = ["MAX_LISTED", "append_step_summary", "md_text", "render_markdown", "write_markdown"]

#: How many regressed examples are listed per program before "and N more".
MAX_LISTED = 10

# inline text never starts a line here, so only the characters that act mid-line are escaped
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_text(value: Any, limit: int = 80) -> str:
    """``value`` as inline markdown text: one line, at most ``limit`` characters, nothing interpreted."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The summary of ``report`` (the ``--dspex-report`` JSON) as GitHub-flavoured markdown."""
    programs = [ProgramView(row) for row in report.get("programs") or []]
    failed = [p for p in programs if not p.passed]
    incomplete = [p for p in failed if p.incomplete]
    judged = [p for p in programs if not p.deferred]  # a shard job's gates are combine's to judge
    passed = bool(judged) and bool(report.get("passed", not failed))  # nothing evaluated passed nothing
    icon = "✅" if passed else "⏸️" if programs and not judged else "⚠️" if len(incomplete) == len(failed) else "❌"
    headline = _headline(programs)
    if report.get("stopped"):  # not every test ran: what was gated before it is no verdict on the run
        ungated = ", ".join(report.get("not_gated") or ())
        headline = f"incomplete run: {report['stopped']}; not every test ran, so no verdict" + (
            f" (before it: {headline})" if programs else ""
        ) + (f"; not gated: {ungated}" if ungated else "")
    if report.get("failed_before_verdict") and not report.get("stopped"):  # a red run is never a green comment
        icon = "❌"
        headline = f"failed before a verdict: {', '.join(report['failed_before_verdict'])} (see the test log)" + (
            f"; the others: {headline}" if programs else ""
        )
    lines = [f"### {icon} pytest-dspex: {md_text(headline, 300)}", ""]
    if programs:
        lines += [
            "| program | mode | test | score (95% CI) | threshold | golden | delta | n | errors | cost | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in programs:
            row = p.row
            icon = "⏸️ " if p.deferred else "✅ " if p.passed else "⚠️ " if p.incomplete else "❌ "
            verdict = icon + md_text(p.verdict_words, 160)
            lines.append(
                "| "
                + " | ".join([
                    md_text(p.name),
                    md_text(p.mode),
                    md_text(p.test_short, 60),
                    md_text(fmt_score(row.get("score"), row.get("ci95"))),
                    md_text(fmt_num(row.get("threshold"), 2)),
                    md_text(p.golden_text),
                    md_text(p.delta_text),
                    md_text(row.get("n", "")),
                    md_text(p.errors_text),
                    md_text(f"${p.usage['cost']:.4f}"),
                    verdict,
                ])
                + " |"
            )  # fmt: skip
    said: set[tuple[str, str]] = set()  # a program's golden line once, not once per mode (the same golden)
    for p in programs:
        lines += _provenance(p, said)
        lines += _regressions(p)
    lines += ["", _footer(report)]
    return "\n".join(lines) + "\n"


def _headline(programs: list[ProgramView]) -> str:
    """Counts of programs (a program gated by two tests is one program, failed if either failed)."""
    if not programs:
        return "no LM program was evaluated"
    deferred = [p for p in programs if p.deferred]
    if deferred:  # a shard job (--dspex-shard): its share is not judged here, combine gives the verdict
        shard = str(deferred[0].verdict.get("reason") or "").split(":", 1)[0] or "a shard job"
        names = list(dict.fromkeys(p.name for p in deferred))
        tests = f" ({len(deferred)} tests)" if len(deferred) != len(names) else ""
        said = (f"{shard}: no verdict here: the gate of {len(names)} program{'s' if len(names) != 1 else ''}{tests} "
                "is deferred to `python -m pytest_dspex combine`")  # fmt: skip
        rest = [p for p in programs if not p.deferred]
        return f"{_headline(rest)}; {said}" if rest else said
    names = list(dict.fromkeys(p.name for p in programs))
    failed = {p.name for p in programs if not p.passed}
    tests = f" ({len(programs)} tests)" if len(programs) != len(names) else ""
    plural = "s" if len(names) != 1 else ""
    if failed and all(p.incomplete for p in programs if not p.passed):  # not all examples ran: no verdict
        return f"{len(failed)} of {len(names)} program{plural} incomplete (not all examples ran){tests}"
    if failed:
        return f"{len(failed)} of {len(names)} program{plural} failed{tests}"
    return f"{len(names)} program{plural} passed{tests}"


def _provenance(p: ProgramView, said: set[tuple[str, str]]) -> list[str]:
    """Where the golden's numbers come from (once per program and golden: ``said``), and an instructions
    edit's diff (in a fenced block, once per program and diff)."""
    out: list[str] = []
    prov = p.row.get("golden_provenance")
    line = f"**{md_text(p.name)}** golden: {md_text(prov.get('text', ''), 300)}" if prov else ""
    if line and (p.name, line) not in said:
        said.add((p.name, line))
        out += ["", line]
    if p.row.get("note"):  # beside the verdict: relabelled examples, another model or temperature than the golden's
        out += ["", f"**{md_text(p.name)}** ({md_text(p.mode)}) note: {md_text(p.row['note'], 400)}"]
    if p.redrawn_text:  # the extra calls of --dspex-redraws
        out += ["", f"**{md_text(p.name)}** ({md_text(p.mode)}): {md_text(p.redrawn_text, 200)}"]
    diff = p.row.get("instructions_diff")
    if diff and (p.name, str(diff)) not in said:  # once per program, not once per test mode (the same diff)
        said.add((p.name, str(diff)))
        fence = "~~~~"
        body = str(diff).replace(fence, "~ ~ ~ ~")
        out += [
            "",
            f"**{md_text(p.name)}**: the instructions differ from the golden's; gated with the golden's demos against "
            f"its baseline. If this edit is intended, record its baseline: `pytest --dspex-rebaseline={md_text(p.name)}` (a worse one needs `--dspex-force`)",
            "",
            f"{fence}diff",
            body,
            fence,
        ]
    return out


def _regressions(p: ProgramView) -> list[str]:
    keys = p.keys("regressions")
    if not keys:
        return []
    c = p.comparison or {}
    by_key = {str(r.get("key")): r for r in p.records}
    title = (
        f"**{md_text(p.name)}** ({md_text(p.mode)}, {md_text(p.test_short, 60)}): {len(keys)} "
        f"example{'s' if len(keys) != 1 else ''} regressed against the golden"
    )
    if c.get("p_value") is not None:
        test = str(c.get("test") or "test")
        title += f" ({md_text(test if test.startswith('paired') else 'paired ' + test)}, {md_text(p_text(c['p_value']))})"
    out = ["", title, ""]
    for key in keys[:MAX_LISTED]:
        rec = by_key.get(key)
        detail = ""
        if rec is not None:
            expected, _meta = split_expected(rec)  # the row's id is the key, not an expected output
            prediction = rec.get("prediction")
            if not rec.get("error_kind"):
                expected, prediction = _differing_fields(expected, prediction)
            got = rec.get("error") if rec.get("error_kind") else fields_text(prediction)
            detail = (
                f": {md_text(fields_text(rec.get('inputs')), 60)} → expected {md_text(fields_text(expected), 40)},"
                f" got {md_text(got or '', 40)}"
            )
        code = " ".join(key.replace("`", "'").split())
        out.append(f"- `{code}`{detail}")
    if len(keys) > MAX_LISTED:
        out.append(f"- … and {len(keys) - MAX_LISTED} more")
    return out


def _differing_fields(expected: Any, prediction: Any) -> tuple[Any, Any]:
    """Of several output fields, only those where the answer differs from the label (each as
    ``field: value``): cut to 40 characters, ``team: billing reply: We will route th…`` on both sides hid
    the one field that differed (trial13). Every field when none or all differ."""
    if not isinstance(expected, Mapping) or not isinstance(prediction, Mapping) or len(expected) < 2:
        return expected, prediction
    differ = [k for k in expected if k in prediction and value_text(expected[k]) != value_text(prediction[k])]
    if not differ or len(differ) == len(expected):
        return expected, prediction
    # ``fields_text`` shows one field's value alone: keep the name beside it
    named = {"": "; ".join(f"{k}: {value_text(expected[k])}" for k in differ)}
    return named, {"": "; ".join(f"{k}: {value_text(prediction[k])}" for k in differ)}


def _footer(report: Mapping[str, Any]) -> str:
    model = report.get("model") or {}
    bits = []
    if model.get("model") or model.get("name"):
        bits.append(f"model {md_text(model.get('model') or model.get('name'))}")
    endpoint = endpoint_text(model.get("base_url") or model.get("endpoint"))
    if endpoint:
        bits.append(md_text(endpoint))
    if report.get("git_commit"):  # "(uncommitted changes)": the commit does not hold what ran
        bits.append(f"commit {md_text(commit_text(report['git_commit'], report.get('git_dirty')))}")
    if report.get("plugin_version"):
        bits.append(f"pytest-dspex {md_text(report['plugin_version'])}")
    return "<sub>" + " · ".join(bits) + "</sub>" if bits else ""


def append_step_summary(text: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Append ``text`` to the file named by ``$GITHUB_STEP_SUMMARY``, when it is set (else do nothing)."""
    target = (os.environ if env is None else env).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")
    return path


def write_markdown(
    report: Mapping[str, Any],
    path: str | os.PathLike[str] | None = None,
    *,
    step_summary: bool = True,
    env: Mapping[str, str] | None = None,
) -> str:
    """Render the summary, write it to ``path`` (atomically) when given, and append it to
    ``$GITHUB_STEP_SUMMARY`` when that is set and ``step_summary`` is true. Returns the text."""
    text = render_markdown(report)
    if path is not None:
        atomic_write_text(Path(path), text)
    if step_summary:
        append_step_summary(text, env)
    return text
