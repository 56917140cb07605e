"""A self-contained HTML report: one file, inline CSS and JS, nothing fetched.

    from pytest_dspex.reports import write_html
    write_html(json.load(open("dspex-report.json")), "dspex-report.html")

What is the same for every run (verdict rows, metadata, prompts) is rendered here with every value
HTML-escaped. The per-example table can hold tens of thousands of rows, so its data travels as one
JSON blob in a ``<script type="application/json">`` (``<``, ``>`` and ``&`` written as ``\\u003c``…,
so no input can close the script element) and the page's script draws one page of rows at a time
with ``textContent`` only. A Content-Security-Policy allows only this file's own script (by hash):
the page fetches nothing and could run no injected script even if one slipped through.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from .._support.atomic import atomic_write_text
from ._format import ProgramView, clean_url, fields_text, fmt_num, fmt_score, outcome, split_expected
from .checkout import commit_text

__all__ = ["render_html", "write_html"]


def write_html(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render ``report`` (the ``--dspex-report`` JSON) and write it to ``path`` atomically."""
    target = Path(path)
    atomic_write_text(target, render_html(report))
    return target


def render_html(report: Mapping[str, Any]) -> str:
    """The HTML report of ``report`` as one string (see the module docstring)."""
    programs = [ProgramView(row) for row in report.get("programs") or []]
    payload = {"programs": [_rows(p) for p in programs]}
    data = _script_json(payload)
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{script_hash}'"
    judged = [p for p in programs if not p.deferred]  # a shard job's gates are combine's to judge
    passed = bool(judged) and bool(report.get("passed", all(p.passed for p in programs)))  # nothing ran: no pass
    failed = sum(1 for p in programs if not p.passed)
    incomplete = sum(1 for p in programs if p.incomplete)
    deferred = [p for p in programs if p.deferred]
    status = (
        f"deferred: {deferred[0].verdict_text} (no verdict in a shard job)" if deferred and not failed and len(deferred) == len(programs)
        else "passed" if passed
        else f"incomplete ({incomplete} of {len(programs)} programs: not all examples ran)" if failed and incomplete == failed
        else f"failed ({failed} of {len(programs)} programs)" if failed
        else "no program was evaluated"
    )  # fmt: skip
    if report.get("stopped"):  # not every test ran: no verdict, whatever the programs gated before it say
        status = f"incomplete run: {report['stopped']}; not every test ran" + (
            f" ({failed} of {len(programs)} programs failed before it)" if failed
            else f" ({len(programs)} program{'s' if len(programs) != 1 else ''} passed before it)" if programs else ""
        ) + (f"; not gated: {', '.join(report['not_gated'])}" if report.get("not_gated") else "")  # fmt: skip
    elif report.get("failed_before_verdict"):  # a program whose tests failed before its gate: no pass (T12-3)
        before = "passed" if judged and all(p.passed for p in judged) else status
        status = f"failed before a verdict: {', '.join(report['failed_before_verdict'])} (see the test log); the others: {before}"
        passed = False
    parts = [
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>pytest-dspex report: {escape(status)}</title><style>{_CSS}</style></head><body>",
        f'<header><h1>pytest-dspex report <span class="badge {"pass" if passed else "deferred" if deferred and not failed else "fail"}" id="status">'
        f"{escape(status)}</span></h1>{_metadata(report)}</header><main>",
        _summary(programs),
        *(_program(i, p, _diff_shown_in(programs, i)) for i, p in enumerate(programs)),
        _goldens(report),
        "</main>",
        f'<script type="application/json" id="dspex-data">{data}</script>',
        f"<script>{_SCRIPT}</script></body></html>\n",
    ]
    return "".join(parts)


# -- data for the script ---------------------------------------------------------------------------
def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON.parse rejects them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _script_json(payload: Any) -> str:
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        text = json.dumps(_finite(payload), ensure_ascii=False, separators=(",", ":"), default=str)
    # inside <script> only "</" matters to the HTML parser; escaping <, > and & (valid JSON escapes) also
    # rules out "<!--" tricks, and U+2028/9 are escaped for old JS parsers
    return (
        text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    )  # fmt: skip


def _rows(program: ProgramView) -> list[dict[str, Any]]:
    regressions, fixes = set(program.keys("regressions")), set(program.keys("fixes"))
    flaky = {str(k) for k in program.row.get("flaky") or []}
    rows = []
    for rec in program.records:
        key = str(rec.get("key", rec.get("index", "")))
        row: dict[str, Any] = {
            "i": rec.get("index"),
            "k": key,
            "in": fields_text(rec.get("inputs")),
            "ex": fields_text(split_expected(rec)[0]),  # the row's id is its key, not an expected output
            "got": fields_text(rec.get("prediction")),
            "s": rec.get("score"),
            "o": outcome(rec),
            "lat": rec.get("latency_s"),
        }
        if rec.get("repeats"):
            row["r"] = rec["repeats"]
        if rec.get("error_kind"):
            row["ek"] = rec["error_kind"]
            row["e"] = rec.get("error") or ""
        if key in regressions:
            row["t"] = "regression"
        elif key in fixes:
            row["t"] = "fix"
        if key in flaky:
            row["fl"] = 1
        rows.append(row)
    return rows


# -- static parts ------------------------------------------------------------------------------
def _metadata(report: Mapping[str, Any]) -> str:
    model = report.get("model") or {}
    shard = report.get("shard")
    items = [
        ("model", model.get("model") or model.get("name")),
        ("endpoint", clean_url(model.get("base_url") or model.get("endpoint"))),
        ("plugin", report.get("plugin_version")),
        ("created", report.get("created")),
        ("git commit", commit_text(report["git_commit"], report.get("git_dirty"), width=None) if report.get("git_commit") else None),
        ("rootdir", report.get("rootdir")),
        ("shard", f"{shard['index']}/{shard['count']}" if isinstance(shard, Mapping) else None),
    ]
    cells = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(str(v))}</dd></div>" for k, v in items if v)
    return f'<dl class="meta">{cells}</dl>'


_SUMMARY_COLUMNS = (
    "program", "mode", "test", "verdict", "score (95% CI)", "threshold", "golden", "delta", "n", "errors",
    "calls", "cache hits", "tokens", "cost",
)  # fmt: skip


def _summary_cells(p: ProgramView) -> list[str]:
    row, usage = p.row, p.usage
    return [
        fmt_score(row.get("score"), row.get("ci95")),
        fmt_num(row.get("threshold"), 2),
        p.golden_text,
        p.delta_text,
        str(row.get("n", "")),
        p.errors_text,
        str(int(usage["calls"])),
        str(int(usage["cache_hits"])),
        str(int(usage["tokens"])),
        f"${usage['cost']:.4f}",
    ]


def _verdict_class(p: ProgramView) -> str:
    """``pass``, ``fail`` or ``deferred`` (a shard job's share: neither)."""
    return "deferred" if p.deferred else "pass" if p.passed else "fail"


def _summary(programs: list[ProgramView]) -> str:
    if not programs:
        return '<p class="empty">No LM program was evaluated in this run.</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in _SUMMARY_COLUMNS)
    body = []
    for i, p in enumerate(programs):
        cells = "".join(f"<td>{escape(c)}</td>" for c in _summary_cells(p))
        verdict = (
            f'<td class="verdict {_verdict_class(p)}" title="{escape(p.verdict_text)}">'
            f"{escape(p.verdict_words)}</td>"
        )
        where = f"<td>{escape(p.mode)}</td><td>{escape(p.test_short)}</td>"
        body.append(f'<tr><td><a href="#p{i}">{escape(p.name)}</a></td>{where}{verdict}{cells}</tr>')
    return (
        f'<div class="wide"><table class="summary" id="summary"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
    )


def _dl(items: Iterable[tuple[str, Any]]) -> str:
    cells = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(str(v))}</dd></div>" for k, v in items if v not in (None, "", []))
    return f'<dl class="meta">{cells}</dl>'


def _diff_shown_in(programs: list[ProgramView], i: int) -> int:
    """The section that shows program ``i``'s instructions diff: the first with the same program and diff (a
    program gated by two tests shows it once; the other section points there)."""
    p = programs[i]
    diff = p.row.get("instructions_diff")
    return next((j for j, q in enumerate(programs[:i]) if q.name == p.name and q.row.get("instructions_diff") == diff), i)


def _program(i: int, p: ProgramView, diff_in: int | None = None) -> str:
    row = p.row
    c = p.comparison
    facts: list[tuple[str, Any]] = [
        ("test", row.get("test")),
        ("mode", p.mode),
        ("dataset", row.get("dataset")),
        ("metric", row.get("metric")),
        ("golden", row.get("golden")),
        ("golden from", (row.get("golden_provenance") or {}).get("text")),
        ("tolerance", row.get("tolerance")),
    ]
    if c is not None:
        facts += [
            ("paired test", c.get("test")),
            ("shared examples", c.get("shared")),
            ("compared", c.get("verdict")),
            ("regressions", len(c.get("regressions") or [])),
            ("fixes", len(c.get("fixes") or [])),
            ("re-asked", p.redrawn_text),
        ]
        if c.get("underpowered"):
            needed = c.get("needed_n")
            facts.append(("power", f"underpowered: needs n ≥ {needed}" if needed else "underpowered"))
    if row.get("flaky"):
        facts.append(("flaky", ", ".join(str(k) for k in row["flaky"])))
    badge = f'<span class="badge {_verdict_class(p)}">{escape(p.verdict_words)}</span>'
    has_repeats = any(r.get("repeats") for r in p.records)
    columns = (
        ("#", "i"), ("key", ""), ("inputs", ""), ("expected", ""), ("got", ""),
        ("score" + (" (repeats)" if has_repeats else ""), "s"), ("error", ""), ("latency", "lat"),
    )  # fmt: skip
    head = "".join(
        f'<th><button type="button" class="sort" data-sort="{key}" title="sort">{h}</button></th>' if key else f"<th>{h}</th>"
        for h, key in columns
    )
    filters = "".join(
        f'<button type="button" data-filter="{f}" aria-pressed="{str(f == "all").lower()}">{label}'
        f' <span class="count"></span></button>'
        for f, label in (("all", "all"), ("miss", "misses"), ("error", "errors"), ("regression", "regressions"), ("fix", "fixes"))
    )
    return (
        f'<section class="program" id="p{i}" data-index="{i}"><h2>{escape(p.name)} <small>{escape(p.mode)} · {escape(p.test_short)}</small> {badge}</h2>'
        f'<p class="score">score {escape(fmt_score(row.get("score"), row.get("ci95")))} · n {escape(str(row.get("n", "")))}'
        f" · delta {escape(p.delta_text)}</p>"
        f"{_dl(facts)}{_instructions(row, i if diff_in is None else diff_in, i)}{_prompts(row.get('prompts'))}"
        f'<div class="toolbar"><div class="filters" role="group" aria-label="filter examples">{filters}</div>'
        '<input type="search" class="search" placeholder="search key, inputs, answers, errors" aria-label="search examples">'
        '<span class="pager"><button type="button" class="prev" aria-label="previous page">‹</button>'
        '<span class="info"></span><button type="button" class="next" aria-label="next page">›</button></span></div>'
        f'<table class="examples"><thead><tr>{head}</tr></thead><tbody></tbody></table>'
        '<p class="empty-rows" hidden>No example matches.</p></section>'
    )


def _instructions(row: Mapping[str, Any], shown_in: int, here: int) -> str:
    diff = row.get("instructions_diff")
    if not diff:
        return ""
    name = escape(str(row.get("program", "")))
    if shown_in != here:  # once per program: an earlier section shows it
        return (f'<div class="instructions"><p>The instructions differ from the golden\'s: the diff is in '
                f'<a href="#p{shown_in}">{name} above</a>.</p></div>')  # fmt: skip
    return (
        '<div class="instructions"><p>The instructions differ from the golden\'s: gated with the golden\'s demos '
        f"against its baseline. If this edit is intended, record its baseline: <code>pytest --dspex-rebaseline={name}</code> (a worse one needs <code>--dspex-force</code>)</p>"
        f"<pre>{escape(str(diff))}</pre></div>"
    )


def _prompts(prompts: Any) -> str:
    if not isinstance(prompts, Mapping) or not prompts:
        return ""
    blocks = []
    for path, messages in prompts.items():
        msgs = messages.get("messages", []) if isinstance(messages, Mapping) else messages or []
        body = "".join(
            f'<div class="msg"><div class="role">{escape(str(m.get("role", "")))}</div><pre>{escape(str(m.get("content", "")))}</pre></div>'
            for m in msgs
            if isinstance(m, Mapping)
        )
        blocks.append(f"<details><summary>prompt of <code>{escape(str(path))}</code> ({len(msgs)} messages)</summary>{body}</details>")
    return f'<div class="prompts">{"".join(blocks)}</div>'


def _goldens(report: Mapping[str, Any]) -> str:
    unused = report.get("unused_goldens") or []
    if not unused:
        return ""
    items = "".join(f"<li><code>{escape(str(u))}</code></li>" for u in unused)
    return f'<section class="unused"><h2>Golden files no test used</h2><ul>{items}</ul></section>'


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#fff;--soft:#f6f8fa;--pass:#1a7f37;--fail:#cf222e;--warn:#9a6700}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg);margin:0 auto;max-width:1400px;padding:16px 24px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 6px}
.badge{display:inline-block;font-size:12px;font-weight:600;padding:2px 8px;border-radius:10px;vertical-align:middle;color:#fff}
.badge.pass{background:var(--pass)}.badge.fail{background:var(--fail)}.badge.deferred{background:var(--muted)}
td.pass{color:var(--pass);font-weight:600}td.fail{color:var(--fail);font-weight:600}
dl.meta{display:flex;flex-wrap:wrap;gap:4px 20px;margin:6px 0;color:var(--muted)}dl.meta div{display:flex;gap:6px}dt{font-weight:600}dd{margin:0;color:var(--fg);word-break:break-all}
table{border-collapse:collapse;width:100%;margin:8px 0}th,td{border-bottom:1px solid var(--line);padding:4px 7px;text-align:left;vertical-align:top}
th{background:var(--soft);position:sticky;top:0;font-weight:600;white-space:nowrap}
.wide{overflow-x:auto}table.summary td{white-space:nowrap}table.summary td.verdict{white-space:normal;min-width:140px;max-width:320px}
.score{margin:2px 0;font-size:15px}
.toolbar{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-top:10px}
.toolbar button{font:inherit;border:1px solid var(--line);background:var(--soft);border-radius:6px;padding:3px 10px;cursor:pointer}
.toolbar button[aria-pressed=true]{background:var(--fg);color:#fff;border-color:var(--fg)}
.toolbar button:disabled{opacity:.4;cursor:default}
button.sort{font:inherit;font-weight:600;border:0;background:none;padding:0;cursor:pointer;color:inherit}
button.sort::after{content:" ↕";color:var(--muted);font-weight:400}button.sort[aria-sort=ascending]::after{content:" ↑"}button.sort[aria-sort=descending]::after{content:" ↓"}
.search{flex:1;min-width:220px;font:inherit;padding:4px 8px;border:1px solid var(--line);border-radius:6px}
.pager{display:flex;gap:6px;align-items:center;color:var(--muted)}
table.examples td .cell{white-space:pre-wrap;word-break:break-word;max-height:9em;overflow:auto;min-width:80px}
table.examples td:nth-child(3){width:32%}
tr.miss td:first-child{border-left:3px solid var(--warn)}tr.error td:first-child{border-left:3px solid var(--fail)}tr.pass td:first-child{border-left:3px solid var(--pass)}
.tag{font-size:11px;border-radius:8px;padding:0 6px;margin-left:4px;color:#fff}.tag.regression{background:var(--fail)}.tag.fix{background:var(--pass)}.tag.flaky{background:var(--warn)}
.kind{font-family:ui-monospace,monospace;font-size:12px;background:var(--soft);border:1px solid var(--line);border-radius:4px;padding:0 4px;margin-right:4px}
.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}.reps{display:block;color:var(--muted);font-size:12px}
details{margin:6px 0}summary{cursor:pointer;color:var(--muted)}.msg{margin:4px 0 8px}.role{font-weight:600;font-size:12px;text-transform:uppercase;color:var(--muted)}
pre{white-space:pre-wrap;word-break:break-word;background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:8px;margin:2px 0;font-size:12.5px}
.empty,.empty-rows{color:var(--muted)}
"""

# Draws the per-example table from the JSON blob. Text goes in with textContent only.
_SCRIPT = """
(function () {
  "use strict";
  var PAGE = 100;
  var data = JSON.parse(document.getElementById("dspex-data").textContent);
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function num(x, d) { return (typeof x === "number") ? x.toFixed(d) : ""; }
  function match(row, filter) {
    if (filter === "all") return true;
    if (filter === "miss") return row.o === "miss";
    if (filter === "error") return !!row.ek;
    return row.t === filter;
  }
  function hay(row) {
    if (row._h === undefined) {
      row._h = [row.k, row.in, row.ex, row.got, row.ek || "", row.e || ""].join("\\n").toLowerCase();
    }
    return row._h;
  }
  function cell(tr, text, cls) {
    var td = el("td", cls);
    td.appendChild(el("div", "cell", text));
    tr.appendChild(td);
    return td;
  }
  function draw(row) {
    var tr = el("tr", row.o);
    tr.appendChild(el("td", "num", row.i));
    var key = el("td");
    key.appendChild(el("code", null, row.k));
    if (row.t) key.appendChild(el("span", "tag " + row.t, row.t));
    if (row.fl) key.appendChild(el("span", "tag flaky", "flaky"));
    tr.appendChild(key);
    cell(tr, row["in"]);
    cell(tr, row.ex);
    cell(tr, row.got);
    var score = el("td", "num", num(row.s, 3));
    if (row.r) score.appendChild(el("span", "reps", row.r.join(" ")));
    tr.appendChild(score);
    var err = el("td");
    if (row.ek) {
      err.appendChild(el("span", "kind", row.ek));
      err.appendChild(el("div", "cell", row.e));
    }
    tr.appendChild(err);
    tr.appendChild(el("td", "num", typeof row.lat === "number" ? num(row.lat, 3) + " s" : ""));
    return tr;
  }
  function setup(section, rows) {
    var state = {filter: "all", q: "", page: 0, view: rows, sort: null, dir: 1};
    var tbody = section.querySelector("table.examples tbody");
    var info = section.querySelector(".info");
    var prev = section.querySelector(".prev"), next = section.querySelector(".next");
    var empty = section.querySelector(".empty-rows");
    var buttons = Array.prototype.slice.call(section.querySelectorAll("[data-filter]"));
    buttons.forEach(function (b) {
      var f = b.getAttribute("data-filter"), n = 0;
      for (var i = 0; i < rows.length; i++) if (match(rows[i], f)) n++;
      b.querySelector(".count").textContent = "(" + n + ")";
      if (n === 0 && f !== "all") b.disabled = true;
      b.addEventListener("click", function () {
        state.filter = f;
        buttons.forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
        refilter();
      });
    });
    section.querySelector(".search").addEventListener("input", function (ev) {
      state.q = ev.target.value.trim().toLowerCase();
      refilter();
    });
    prev.addEventListener("click", function () { state.page--; render(); });
    next.addEventListener("click", function () { state.page++; render(); });
    Array.prototype.slice.call(section.querySelectorAll("button.sort")).forEach(function (b) {
      b.addEventListener("click", function () {
        var key = b.getAttribute("data-sort");
        state.dir = (state.sort === key) ? -state.dir : (key === "i" ? 1 : key === "s" ? 1 : -1);
        state.sort = key;
        section.querySelectorAll("button.sort").forEach(function (o) { o.removeAttribute("aria-sort"); });
        b.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
        refilter();
      });
    });
    function value(r) { var v = r[state.sort]; return typeof v === "number" ? v : -Infinity; }
    function refilter() {
      var out = [];
      for (var i = 0; i < rows.length; i++) {
        var r = rows[i];
        if (match(r, state.filter) && (!state.q || hay(r).indexOf(state.q) >= 0)) out.push(r);
      }
      if (state.sort) {
        out.sort(function (a, b) { return (value(a) - value(b)) * state.dir || (a.i - b.i); });
      }
      state.view = out;
      state.page = 0;
      render();
    }
    function render() {
      var pages = Math.max(1, Math.ceil(state.view.length / PAGE));
      state.page = Math.min(Math.max(state.page, 0), pages - 1);
      var start = state.page * PAGE, stop = Math.min(start + PAGE, state.view.length);
      var frag = document.createDocumentFragment();
      for (var i = start; i < stop; i++) frag.appendChild(draw(state.view[i]));
      tbody.textContent = "";
      tbody.appendChild(frag);
      info.textContent = state.view.length ? (start + 1) + "–" + stop + " of " + state.view.length : "0 of " + rows.length;
      prev.disabled = state.page === 0;
      next.disabled = state.page >= pages - 1;
      empty.hidden = state.view.length > 0;
      section.setAttribute("data-shown", String(stop - start));
    }
    render();
  }
  var sections = document.querySelectorAll("section.program");
  for (var s = 0; s < sections.length; s++) {
    setup(sections[s], data.programs[Number(sections[s].getAttribute("data-index"))] || []);
  }
  document.body.setAttribute("data-ready", "true");
})();
"""
