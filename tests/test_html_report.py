"""The HTML report, opened in a real headless Chromium: what a person sees, and that inputs stay text.

Without a ``chromium`` executable the browser tests skip on a developer's machine and fail in CI
(``CI=true``), where ``.ci/run`` installs Debian's chromium.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from pytest_dspex.reports import render_html, write_html

from .chromium import Chromium, Page, find_chromium
from .needs import CHROMIUM_INSTALL, need
from .report_samples import EVIL, program_row, record, report


def _rows(page: Page, section: str = "#p0") -> list[dict[str, Any]]:
    """The rows a person sees in a section's example table: class, key and cell texts."""
    return page.evaluate(  # type: ignore[no-any-return]
        f"""Array.from(document.querySelectorAll('{section} table.examples tbody tr')).map(tr => ({{
            cls: tr.className, key: tr.children[1].querySelector('code').textContent,
            tag: (tr.children[1].querySelector('.tag') || {{}}).textContent || null,
            cells: Array.from(tr.children).map(td => td.innerText)}}))"""
    )


def _click(page: Page, selector: str) -> None:
    page.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


def _type(page: Page, selector: str, text: str) -> None:
    page.evaluate(
        f"(() => {{ const el = document.querySelector({json.dumps(selector)}); el.value = {json.dumps(text)};"
        " el.dispatchEvent(new Event('input', {bubbles: true})); })()"
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    need("chromium", "no chromium executable" if find_chromium() is None else None, CHROMIUM_INSTALL)
    with Chromium.launch(tmp_path_factory.mktemp("chromium-profile")) as b:
        yield b


@pytest.fixture
def page(browser: Chromium) -> Page:
    return browser.new_page()


def _open(page: Page, tmp_path: Path, data: dict[str, Any]) -> Path:
    path = write_html(data, tmp_path / "report.html")
    page.goto(path.as_uri())
    assert page.evaluate("document.body.dataset.ready") == "true", "the report's script did not finish"
    return path


# -- in the browser ------------------------------------------------------------------------------
def test_shows_the_verdict_rows_and_the_examples(page: Page, tmp_path: Path) -> None:
    _open(page, tmp_path, report(program_row("triage", 40, passed=False), program_row("find_product", 12, misses=1, errors=0)))
    summary = page.evaluate("Array.from(document.querySelectorAll('#summary tbody tr')).map(tr => tr.innerText)")
    assert len(summary) == 2
    assert "triage" in summary[0] and "0.800 (0.70–0.88)" in summary[0] and "FAIL: regressed" in summary[0]
    assert "-0.025 [-0.070, +0.020] p=0.031" in summary[0]  # delta with its CI and p
    assert "lm_timeout 2" in summary[0] and "$0.0123" in summary[0]
    assert "find_product" in summary[1] and "pass" in summary[1]
    rows = _rows(page)
    assert len(rows) == 40
    assert rows[0]["key"] == "ex-0" and "I was charged twice" in rows[0]["cells"][2]
    assert rows[0]["cells"][3] == "billing" and rows[0]["cells"][4] == "technical"  # expected, got
    assert rows[6]["cls"] == "error" and "lm_timeout" in rows[6]["cells"][6] and "no answer within 30 s" in rows[6]["cells"][6]
    assert len(_rows(page, "#p1")) == 12
    meta = page.evaluate("document.querySelector('header dl').innerText")
    assert "gemma-3-270m" in meta and "0123456789abcdef" in meta and "0.1.0" in meta
    assert "sk-secret" not in page.evaluate("document.documentElement.outerHTML")
    assert page.evaluate("performance.getEntriesByType('resource').length") == 0  # nothing fetched


def test_filters_hide_the_passing_examples(page: Page, tmp_path: Path) -> None:
    row = program_row("triage", 40, misses=6, errors=2, regressions=3, fixes=1)
    row["records"][39] = record(39, outcome="parse")  # the model's unparseable answer: a miss that has an error
    _open(page, tmp_path, report(row))
    _click(page, "#p0 [data-filter=miss]")
    rows = _rows(page)
    assert [r["key"] for r in rows] == [f"ex-{i}" for i in (0, 1, 2, 3, 4, 5, 39)]
    assert all(r["cls"] == "miss" for r in rows)
    assert page.evaluate("document.querySelector('#p0 [data-filter=miss]').getAttribute('aria-pressed')") == "true"
    _click(page, "#p0 [data-filter=error]")
    assert [(r["key"], r["cls"]) for r in _rows(page)] == [("ex-6", "error"), ("ex-7", "error"), ("ex-39", "miss")]
    assert "parse" in _rows(page)[2]["cells"][6]
    _click(page, "#p0 [data-filter=regression]")
    assert [(r["key"], r["tag"]) for r in _rows(page)] == [("ex-0", "regression"), ("ex-1", "regression"), ("ex-2", "regression")]
    _click(page, "#p0 [data-filter=fix]")
    assert [(r["key"], r["tag"]) for r in _rows(page)] == [("ex-8", "fix")]
    _click(page, "#p0 [data-filter=all]")
    assert len(_rows(page)) == 40
    counts = page.evaluate("Array.from(document.querySelectorAll('#p0 [data-filter]')).map(b => b.innerText)")
    assert counts == ["all (40)", "misses (7)", "errors (3)", "regressions (3)", "fixes (1)"]


def test_search_and_paging(page: Page, tmp_path: Path) -> None:
    _open(page, tmp_path, report(program_row("triage", 250, misses=0, errors=0, regressions=0, fixes=0)))
    assert len(_rows(page)) == 100
    assert page.evaluate("document.querySelector('#p0 .info').textContent") == "1–100 of 250"
    _click(page, "#p0 .next")
    rows = _rows(page)
    assert rows[0]["key"] == "ex-100" and len(rows) == 100
    _type(page, "#p0 .search", "VAT NUMBER")  # case-insensitive, over inputs, answers and errors
    rows = _rows(page)
    assert rows and all("VAT number" in r["cells"][2] for r in rows)
    assert len(rows) == len([i for i in range(250) if i % 6 == 4])
    _type(page, "#p0 .search", "no such text anywhere")
    assert _rows(page) == []
    assert page.evaluate("document.querySelector('#p0 .empty-rows').hidden") is False


def test_sorting_by_latency_and_score(page: Page, tmp_path: Path) -> None:
    _open(page, tmp_path, report(program_row("triage", 30, misses=4, errors=1)))
    _click(page, "#p0 button.sort[data-sort=lat]")  # slowest first
    lat = [float(r["cells"][7].split()[0]) for r in _rows(page)]
    assert lat == sorted(lat, reverse=True)
    _click(page, "#p0 button.sort[data-sort=lat]")
    lat = [float(r["cells"][7].split()[0]) for r in _rows(page)]
    assert lat == sorted(lat)
    _click(page, "#p0 button.sort[data-sort=s]")  # lowest score first, then by position
    assert [r["key"] for r in _rows(page)][:5] == ["ex-0", "ex-1", "ex-2", "ex-3", "ex-4"]
    assert {r["cls"] for r in _rows(page)[:5]} == {"miss", "error"}
    _click(page, "#p0 [data-filter=miss]")  # sorting survives filtering
    assert page.evaluate("document.querySelector('#p0 button.sort[data-sort=s]').getAttribute('aria-sort')") == "ascending"
    assert len(_rows(page)) == 4


def test_untrusted_text_shows_as_text_and_never_runs(page: Page, tmp_path: Path) -> None:
    row = program_row("<b>evil</b>", 5, evil=True)
    row["records"][1]["error_kind"] = "program"
    row["records"][1]["error"] = "ValueError: </script><script>window.__pwned = 3</script>"
    row["prompts"] = {"self": [{"role": "user", "content": EVIL}]}
    _open(page, tmp_path, report(row, evil_meta=True))
    assert page.evaluate("window.__pwned === undefined")
    assert page.evaluate("document.querySelectorAll('main script, main img, header img, header script').length") == 0
    rows = _rows(page)
    assert rows[0]["cells"][2] == EVIL  # the input, character for character
    assert "</script><script>window.__pwned = 3</script>" in rows[1]["cells"][6]
    assert page.evaluate("document.querySelector('#p0 h2').innerText").startswith("<b>evil</b>")
    assert EVIL in page.evaluate("document.querySelector('header dl').innerText")
    assert EVIL in page.evaluate("document.querySelector('#p0 .prompts pre').textContent")


def test_odd_values_do_not_break_the_page(page: Page, tmp_path: Path) -> None:
    row = program_row("triage", 3, misses=0, errors=0)
    row["records"][0].update(latency_s=float("nan"), score=float("inf"))
    row["records"][1]["inputs"] = {"when": {"nested": [1, 2.5, None, True]}, "text": "\u2028line\u2029sep"}
    _open(page, tmp_path, report(row))
    rows = _rows(page)
    assert len(rows) == 3 and rows[0]["cells"][5] == ""
    assert rows[1]["cells"][2] == 'when: {"nested": [1, 2.5, null, true]}\ntext: \u2028line\u2029sep'


def test_repeats_are_shown(page: Page, tmp_path: Path) -> None:
    row = program_row("triage", 3, misses=0, errors=0)
    row["records"][0].update(score=2 / 3, repeats=[1.0, 0.0, 1.0])
    row["flaky"] = ["ex-0"]
    _open(page, tmp_path, report(row))
    assert page.evaluate("document.querySelector('#p0 tbody tr .tag.flaky').textContent") == "flaky"
    assert page.evaluate("document.querySelector('#p0 thead').innerText").count("score (repeats)") == 1
    assert _rows(page)[0]["cells"][5].split() == ["0.667", "1", "0", "1"]


# -- the file itself -----------------------------------------------------------------------------
def test_self_contained_and_escaped() -> None:
    html = render_html(report(program_row(evil=True), evil_meta=True))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)  # nothing fetched
    assert "<script>window.__pwned" not in html and "<img src=x" not in html
    blob = re.search(r'<script type="application/json" id="dspex-data">(.*?)</script>', html, re.S)
    assert blob is not None and "<" not in blob.group(1) and ">" not in blob.group(1)
    assert json.loads(blob.group(1))["programs"][0][0]["in"] == EVIL
    assert "Content-Security-Policy" in html and "script-src 'sha256-" in unescape(html)


def test_paths_stay_relative_to_the_rootdir(tmp_path: Path) -> None:
    html = render_html(report())
    assert "tests/__dspex__/test_triage/triage.json" in html and "tests/test_triage.py::test_triage" in html
    assert str(Path.cwd()) not in html and str(tmp_path) not in html


def test_an_old_flat_row_and_an_empty_report_render() -> None:
    flat = {"program": "triage", "score": 0.5, "n": 2, "ci95": [0.1, 0.9], "passed": False, "reason": "below threshold 0.70",
            "usage": {"calls": 2, "tokens": 40, "cost": 0.0}, "golden_score": 0.75, "errors": 0}  # fmt: skip
    html = render_html({"programs": [flat]})
    assert "FAIL: below threshold 0.70" in html and "-0.250" in html
    assert "No LM program was evaluated" in render_html({"programs": []})


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    write_html(report(), target)
    first = target.read_text(encoding="utf-8")
    write_html(report(program_row("other", 3)), target)
    assert target.read_text(encoding="utf-8") != first
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp file left behind
    assert target.stat().st_mode & 0o777 == 0o644  # readable by whoever serves the CI artifact


def test_ten_thousand_rows_stay_small() -> None:
    rows = program_row("triage", 10, misses=0, errors=0)
    rows["records"] = [record(i, outcome="miss" if i % 9 == 0 else "pass") for i in range(10_000)]
    html = render_html(report(rows))
    assert len(html.encode()) < 10 * 1024 * 1024
