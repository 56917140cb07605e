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

from .._atomic import atomic_write_text
from ._format import ProgramView, clean_url, fields_text, fmt_num, fmt_score

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
    passed = bool(report.get("passed", not failed))
    icon = "✅" if passed else "❌"
    if not programs:
        headline = "no LM program was evaluated"
    elif failed:
        headline = f"{len(failed)} of {len(programs)} program{'s' if len(programs) != 1 else ''} failed"
    else:
        headline = f"{len(programs)} program{'s' if len(programs) != 1 else ''} passed"
    lines = [f"### {icon} pytest-dspex: {headline}", ""]
    if programs:
        lines += [
            "| program | score (95% CI) | threshold | golden | delta | n | errors | cost | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in programs:
            row = p.row
            verdict = ("✅ " if p.passed else "❌ ") + md_text(p.verdict_text, 120)
            lines.append(
                "| "
                + " | ".join([
                    md_text(p.name),
                    md_text(fmt_score(row.get("score"), row.get("ci95"))),
                    md_text(fmt_num(row.get("threshold"), 2)),
                    md_text(fmt_num(row.get("golden_score"))),
                    md_text(p.delta_text),
                    md_text(row.get("n", "")),
                    md_text(p.errors_text),
                    md_text(f"${p.usage['cost']:.4f}"),
                    verdict,
                ])
                + " |"
            )  # fmt: skip
    for p in programs:
        lines += _regressions(p)
    lines += ["", _footer(report)]
    return "\n".join(lines) + "\n"


def _regressions(p: ProgramView) -> list[str]:
    keys = p.keys("regressions")
    if not keys:
        return []
    c = p.comparison or {}
    by_key = {str(r.get("key")): r for r in p.records}
    title = f"**{md_text(p.name)}**: {len(keys)} example{'s' if len(keys) != 1 else ''} regressed against the golden"
    if c.get("p_value") is not None:
        title += f" (paired {md_text(c.get('test') or 'test')}, p={md_text(fmt_num(c['p_value']))})"
    out = ["", title, ""]
    for key in keys[:MAX_LISTED]:
        rec = by_key.get(key)
        detail = ""
        if rec is not None:
            got = rec.get("error") if rec.get("error_kind") else fields_text(rec.get("prediction"))
            detail = (
                f": {md_text(fields_text(rec.get('inputs')), 60)} → expected {md_text(fields_text(rec.get('expected')), 40)},"
                f" got {md_text(got or '', 40)}"
            )
        code = " ".join(key.replace("`", "'").split())
        out.append(f"- `{code}`{detail}")
    if len(keys) > MAX_LISTED:
        out.append(f"- … and {len(keys) - MAX_LISTED} more")
    return out


def _footer(report: Mapping[str, Any]) -> str:
    model = report.get("model") or {}
    bits = []
    if model.get("model") or model.get("name"):
        bits.append(f"model {md_text(model.get('model') or model.get('name'))}")
    endpoint = clean_url(model.get("base_url") or model.get("endpoint"))
    if endpoint:
        bits.append(f"at {md_text(endpoint)}")
    if report.get("git_commit"):
        bits.append(f"commit {md_text(str(report['git_commit'])[:12])}")
    if report.get("plugin_version"):
        bits.append(f"pytest-dspex {md_text(report['plugin_version'])}")
    return "<sub>" + " · ".join(bits) + "</sub>" if bits else ""


def append_step_summary(text: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Append ``text`` to the file named by ``$GITHUB_STEP_SUMMARY``, when it is set (else do nothing)."""
    target = (os.environ if env is None else env).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as fh:
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
