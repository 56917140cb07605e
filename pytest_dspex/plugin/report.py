"""The terminal's dspex section: the summary table and the lines under it (verdicts, comparisons with
the goldens, notes, spend), read from the report rows (``collector.Collector``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["cache_only_line", "diffs_under_failures", "format_table", "gate_lines", "instructions_note", "run_spend", "spend_text", "verdict_lines"]


def instructions_note(program: str) -> str:
    return (
        f"{program}: the instructions differ from the golden's (same fields): gated with the golden's demos against "
        f"its baseline; if this edit is intended, record its baseline: pytest --dspex-rebaseline={program} "
        "(a worse one needs --dspex-force)"
    )


def diffs_under_failures(rows: list[dict[str, Any]], tbstyle: str) -> dict[str, str]:
    """``{program: test}``: the programs a failed whole-dataset test's failure text explains under FAILURES
    (``fixtures.where_from``: where the golden's numbers come from, and an instructions edit's diff): the
    lines under the table do not print them again (README: an instructions diff once per program; the
    diff's line points there). None with ``--tb=no`` or ``line``, which show no such text; a per-example
    test's gate failure does not carry them."""
    if tbstyle in ("no", "line"):
        return {}
    out: dict[str, str] = {}
    for r in rows:
        if (r.get("instructions_diff") or r.get("golden_provenance")) and r.get("mode") != "per-example" and not r["verdict"].get("passed"):
            out.setdefault(str(r["program"]), str(r.get("test") or ""))
    return out


def _fmt_score(row: dict[str, Any]) -> str:
    lo, hi = row.get("ci95") or (0, 0)
    return f"{row['score']:.3f} ({lo:.2f}-{hi:.2f})"


def gate_lines(
    rows: list[dict[str, Any]], fresh: frozenset[str] = frozenset(), diffs_above: dict[str, str] | None = None
) -> list[tuple[str, dict[str, bool]]]:
    """Terminal lines under the table: each program's paired comparison with its golden (delta, 95% CI,
    p, regressed and fixed keys, underpowered), its instructions diff and its flaky examples; ``(text,
    markup)`` pairs.

    ``fresh``: goldens this run has just written (created, replaced or re-baselined): no comparison with
    them is said. ``diffs_above`` (``diffs_under_failures``): programs whose golden provenance and diff a
    failure text shows: the provenance is not said again, the diff is named in one line pointing there.
    A regression judged by the tolerance (the paired test underpowered) is said as one sentence."""
    from ..evaluation.comparison import Comparison
    from ..evaluation.gates import SHOWN_KEYS, tolerance_regression, tolerance_words

    out: list[tuple[str, dict[str, bool]]] = []
    said: set[tuple[str, Any]] = set()
    underpowered: dict[str, list[tuple[int, str]]] = {}  # the "; underpowered: …" ending -> (line index, label)
    for r in rows:
        inputs = {str(rec.get("key")): rec.get("inputs") or {} for rec in r.get("records") or ()}

        def keys(ks: list[str], inputs: dict[str, Any] = inputs) -> str:
            named = [_named(k, inputs.get(k)) for k in ks[:SHOWN_KEYS]]
            return ", ".join(named) + (f" and {len(ks) - SHOWN_KEYS} more" if len(ks) > SHOWN_KEYS else "")

        label = f"{r['program']} [{r.get('mode', 'dataset')}]"
        raw = r.get("comparison")
        if raw and r.get("golden") not in fresh:
            c = Comparison.from_json(raw)
            text = f"{label} vs golden: {c.summary()}"
            # said the same whether or not the threshold failed too: the verdict and this line agree
            by_tolerance = tolerance_regression(raw)
            if by_tolerance:
                text = (
                    f"{label} vs golden: regression by the tolerance: {c.current_score:.3f} vs golden {c.baseline_score:.3f} "
                    f"on {c.shared} shared examples (more than {tolerance_words(raw)} lower); the paired test alone would say "
                    + c.summary()
                )
            if c.regressions:
                text += f"; pass -> fail: {keys(c.regressions)}"
            if c.fixes:
                text += f"; fail -> pass: {keys(c.fixes)}"
            style = {"red": True} if c.regressed or by_tolerance else {"green": True} if c.verdict == "improved" else {}
            if c.underpowered and not c.regressed and not by_tolerance:
                style = {"yellow": True}
            if (r.get("verdict") or {}).get("kind") == "lm_errors":  # the gate is LM errors: no comparison is a verdict
                text = (  # nothing answered: "not judged: none measured (10 lost to LM errors)" (fits 120 columns)
                    f"{label} vs golden: not judged (LM errors decide this gate, not a score); the {c.shared} examples "
                    f"answered, paired with the golden: {c.summary()}" if c.shared
                    else f"{label} vs golden: not judged: " + c.summary().removeprefix("paired comparison: ")
                )  # fmt: skip
                text += f"; pass -> fail: {keys(c.regressions)}" if c.regressions else ""
                text += f"; fail -> pass: {keys(c.fixes)}" if c.fixes else ""
                style = {"yellow": True}
            if c.underpowered and c.needed_n is not None:
                ending = f"; underpowered: needs n >= {c.needed_n} to detect a drop of {c.tolerance:g}"
                if ending in text:
                    underpowered.setdefault(ending, []).append((len(out), label))
            out.append((text, style))
        prov = r.get("golden_provenance") or {}
        warn = bool(prov) and (prov.get("in_sample") or not prov["baseline"].get("fresh"))
        shown = str(r["program"]) in (diffs_above or {})  # the failure it explains says it (once)
        if warn and not shown and r.get("golden") not in fresh and ("prov", r.get("golden")) not in said:
            said.add(("prov", r.get("golden")))  # once per golden, and only as a warning (reports keep it always)
            out.append((f"{r['program']} golden: {prov['text']}", {"yellow": True}))
        if r.get("instructions_diff") and ("diff", r["program"]) not in said:
            said.add(("diff", r["program"]))  # once per program, not per test using it
            above = (diffs_above or {}).get(str(r["program"]))
            if above is not None:  # the failure that it explains shows it (trial10: it was printed twice)
                out.append((f"{r['program']}: instructions differ from the golden's: the diff is under FAILURES ({above})", {"yellow": True}))
            else:
                out.append((instructions_note(str(r["program"])), {"yellow": True}))
                out += [(line, {}) for line in str(r["instructions_diff"]).splitlines()]
        flaky = list(r.get("flaky") or [])
        if flaky:
            repeats = r.get("repeats") or "several"
            reduced = {"all": f"; pass^{repeats} scores each by its worst draw", "any": f"; pass@{repeats} scores each by its best draw"}.get(str(r.get("repeat_reduction")), "")
            out.append((f"{label}: {len(flaky)} flaky example(s), their {repeats} repeats disagree{reduced}: {keys(flaky)}", {"yellow": True}))
    return _underpowered_once(out, underpowered, compared=sum(1 for t, _ in out if " vs golden: " in t))


def _underpowered_once(
    out: list[tuple[str, dict[str, bool]]], endings: dict[str, list[tuple[int, str]]], *, compared: int
) -> list[tuple[str, dict[str, bool]]]:
    """The same "; underpowered: needs n >= N …" ending on several programs' or modes' comparison lines
    is said once for the run, in a line of its own (trial2 F9: 7 times in the example project's gate)."""
    for ending, lines in endings.items():
        if len(lines) < 2:
            continue
        for index, _label in lines:
            text, style = out[index]
            out[index] = (text.replace(ending, ""), style)
        needed, tolerance = ending.split("n >= ", 1)[1].split(" to detect a drop of ")
        if len(lines) == compared:
            which = "both gate sets" if compared == 2 else f"all {compared} gate sets"
        else:
            which = f"{len(lines)} gate sets ({', '.join(label for _, label in lines)})"
        out.append((f"underpowered: {which} compared with a golden have fewer than {needed} shared examples: "
                    f"a drop of {tolerance} needs n >= {needed} to be detected", {"yellow": True}))  # fmt: skip
    return out


def _named(key: str, inputs: Any) -> str:
    """An example as a reader finds it: its id, or its hash key with a short excerpt of its inputs."""
    if not key.startswith("h:") or not inputs:
        return key
    text = " ".join(str(next(iter(inputs.values()), "")).split())
    return f"{key[:10]} ({text[:24] + '…' if len(text) > 24 else text!s})" if text else key


def _gate_cell(row: dict[str, Any]) -> str:
    """The table's gate column in one word (``pass``, ``FAIL``, ``deferred``): the table fits 120 columns,
    and each failed program's verdict is one sentence below it (``verdict_lines``), naming every check."""
    verdict = row["verdict"]
    if verdict.get("kind") == "deferred":  # a shard job: combine gates the merged records
        return "deferred"
    if verdict.get("kind") == "incomplete":  # not all examples ran: no verdict (the sentence below says why)
        return "incomplete"
    return "pass" if verdict["passed"] else "FAIL"


def verdict_lines(rows: list[dict[str, Any]], said: frozenset[str] = frozenset()) -> list[str]:
    """One sentence per failed program in words, every failed check named (``said``: tests whose
    verdict is already on screen, the per-example headline)."""
    from ..reports._format import ProgramView

    out = []
    for r in rows:
        view = ProgramView(r)
        if view.passed or r["verdict"].get("kind") == "deferred" or r.get("test") in said:
            continue
        note = f" (note: {r['note']})" if r.get("note") and "temperature" in str(r["note"]) else ""
        out.append(f"{view.name} [{view.mode}] {view.test_short}: {view.verdict_words}{note}")
    return out


def cache_only_line(rows: list[dict[str, Any]], goldens: Iterable[dict[str, Any]]) -> str | None:
    """One line when no request of this run reached the endpoint (every gate answered from the cache, no
    compile asked it), naming the gates; None otherwise (a run that asked the endpoint was measured)."""
    if not rows or not all(r.get("cache_only") for r in rows):
        return None
    if any(r.get("infra_errors") for r in rows):  # a replay's miss: not every answer came from it (the verdict says so)
        return None
    for g in goldens:
        usage = g.get("compile_usage") or {}
        if float(usage.get("calls", 0) or 0) > float(usage.get("cache_hits", 0) or 0):
            return None
    labels = list(dict.fromkeys(f"{r['program']} [{r.get('mode', 'dataset')}]" for r in rows))
    hits = sum(int((r.get("usage") or {}).get("cache_hits", 0)) for r in rows)
    return (
        f"{', '.join(labels)}: every answer came from the LM cache ({hits} cached, 0 requests): the endpoint was "
        "not asked; --dspex-cache=off measures it as it answers now"
    )


_SPEND_KEYS = ("calls", "cache_hits", "tokens", "cost", "retries")


def spend_text(usage: dict[str, Any]) -> str:
    """``"359 LM calls (12 cached), 104488 tokens, $0.0123"`` for a usage dict."""
    text = f"{int(usage.get('calls', 0))} LM calls ({int(usage.get('cache_hits', 0))} cached), {int(usage.get('tokens', 0))} tokens"
    if usage.get("retries"):
        text += f", {int(usage['retries'])} retries"
    return text + f", ${float(usage.get('cost', 0.0)):.4f}"


def run_spend(rows: list[dict[str, Any]], goldens: Iterable[dict[str, Any]]) -> dict[str, float] | None:
    """The gates' and the compiles' usage added up; None when nothing was compiled (the table says it all)."""
    compiles = [g["compile_usage"] for g in goldens if g.get("compile_usage")]
    if not compiles:
        return None
    total = dict.fromkeys(_SPEND_KEYS, 0.0)
    for usage in [r.get("usage") or {} for r in rows] + compiles:
        for k in _SPEND_KEYS:
            total[k] += float(usage.get(k, 0) or 0)
    return total


def format_table(rows: list[dict[str, Any]], fresh: frozenset[str] = frozenset()) -> list[str]:
    """The dspex table, one row per program and mode. ``fresh``: goldens this run has just written
    (created, replaced or re-baselined): their golden column says ``written``, not a delta against the
    baseline the run itself measured (the compile summary compares with the golden it replaced)."""
    from ..reports._format import ProgramView

    header = ["program", "mode", "score (95% CI)", "thresh", "golden (delta)", "n", "err", "calls", "cached", "tokens", "cost", "gate"]
    lines = [header]
    for r in rows:
        usage = r.get("usage") or {}
        view = ProgramView(r)  # the golden's score on the shared examples when a paired comparison ran
        golden, delta = view.baseline, view.delta
        golden_txt = "-" if golden is None or delta is None else f"{golden:.3f} ({round(delta, 3) + 0.0:+.3f})"
        if view.not_compared:  # no example in common, or an incomplete run: nothing was compared
            # short: the line under the table (and the verdict) says how many were lost and to what
            golden_txt = f"n/a ({view.not_compared.split(' (', 1)[0]})"
        if r.get("golden") in fresh or r.get("golden_written"):
            golden_txt = "written"
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
            _gate_cell(r),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for i, row in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
