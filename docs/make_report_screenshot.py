"""Render docs/report.png: the HTML report of a realistic run, photographed by headless Chromium.

    python docs/make_report_screenshot.py            # writes docs/report.png (and docs/report-example.html with --keep)

The examples are the example project's dev sets, the prompts are rendered from its golden files
(``pytest_dspex.golden.production.golden_requests``), and the comparison with the golden is computed by
``pytest_dspex.evaluation.comparison.compare``; which examples miss or fail is scripted (no model runs here),
so the picture is the same on every machine.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_dspex.evaluation.comparison import compare  # noqa: E402
from pytest_dspex.evaluation.datasets import example_key  # noqa: E402
from pytest_dspex.golden.production import golden_requests, read_golden  # noqa: E402
from pytest_dspex.reports import write_html  # noqa: E402
from tests.chromium import Chromium  # noqa: E402

DATA = ROOT / "example_project" / "tests" / "data"
GOLDENS = ROOT / "example_project" / "tests" / "__dspex__"


def _rows(name: str, output: str, *, wrong: dict[int, str], errors: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (DATA / f"{name}_dev.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, row in enumerate(rows):
        inputs = {"message": row["message"]}
        expected = {output: row[output]}
        rec: dict[str, Any] = {
            "index": i, "key": example_key({"message": row["message"]}), "inputs": inputs, "expected": expected,
            "prediction": dict(expected), "score": 1.0, "repeats": None, "error_kind": None, "error": None,
            "latency_s": 0.21 + (i * 37 % 23) / 100,
            "usage": {"calls": 1, "cache_hits": 0, "prompt_tokens": 212, "completion_tokens": 4, "cost": 0.0},
        }  # fmt: skip
        if i in wrong:
            rec.update(prediction={output: wrong[i]}, score=0.0)
        if i in errors:
            kind, message = errors[i]
            rec.update(prediction=None, score=0.0, error_kind=kind, error=message)
        records.append(rec)
    return records


def _program(name: str, output: str, records: list[dict[str, Any]], *, flipped: set[int], fixed: set[int],
             threshold: float) -> dict[str, Any]:  # fmt: skip
    golden_path = GOLDENS / f"test_{name}" / f"{name}.json"
    golden = read_golden(golden_path)
    current = {r["key"]: r["score"] for r in records}
    baseline = {r["key"]: (1.0 if r["index"] in flipped else 0.0 if r["index"] in fixed else r["score"]) for r in records}
    cmp = compare(baseline, current).to_json()
    n = len(records)
    score = sum(r["score"] for r in records) / n
    from pytest_dspex.evaluation.stats import confidence_interval

    lo, hi = confidence_interval([r["score"] for r in records])
    errors: dict[str, int] = {}
    for r in records:
        if r["error_kind"]:
            errors[r["error_kind"]] = errors.get(r["error_kind"], 0) + 1
    golden_score = sum(baseline.values()) / n
    passed = score >= threshold and cmp["verdict"] != "regressed"
    reason = "" if passed else (f"regressed against the golden: {len(cmp['regressions'])} examples flipped, p={cmp['p_value']:.3f}")
    prompts = {path: [dict(m) for m in req.messages] for path, req in golden_requests(golden).items()}
    return {
        "program": name, "mode": "dataset", "dataset": f"tests/data/{name}_dev.jsonl",
        "test": f"tests/test_{name}.py::test_{name}", "metric": "team_matches" if name == "triage" else "same_product",
        "threshold": threshold, "tolerance": 0.05, "score": score, "n": n, "ci95": [lo, hi],
        "errors": sum(errors.values()), "errors_by_kind": errors,
        "usage": {"calls": n + 1, "cache_hits": n // 3, "prompt_tokens": 212 * n, "completion_tokens": 4 * n, "cost": 0.0},
        "golden": str(golden_path.relative_to(ROOT / "example_project")), "golden_score": golden_score,
        "verdict": {"passed": passed, "reason": reason, "kind": None if passed else "regressed"},
        "comparison": cmp, "flaky": [], "prompts": prompts, "records": records,
    }  # fmt: skip


def build_report() -> dict[str, Any]:
    triage = _rows(
        "triage", "team",
        wrong={3: "technical", 11: "billing", 17: "other", 22: "account", 29: "billing", 33: "technical"},
        errors={26: ("parse", "AdapterParseError: 'refund' is not one of billing, technical, account, other"),
                38: ("lm_timeout", "LMTimeoutError: no answer from http://127.0.0.1:8080/v1 within 30 s")},
    )  # fmt: skip
    product = _rows("product", "product", wrong={5: "Kindle", 40: "Echo"}, errors={})
    programs = [
        _program("triage", "team", triage, flipped={3, 11, 17, 22, 26, 29, 33}, fixed={5}, threshold=0.70),
        _program("find_product", "product", product, flipped={40}, fixed={12, 30}, threshold=0.80),
    ]
    return {
        "plugin_version": "0.1.0", "created": "2026-11-26T01:30:00+00:00", "rootdir": ".",
        "git_commit": "d91843d5a3b1c0e4f2a7b9c8d6e5f4a3b2c1d0e9",
        "model": {"model": "gemma-3-270m", "base_url": "http://127.0.0.1:8080/v1"},
        "shard": None, "goldens": {}, "unused_goldens": [],
        "programs": programs,
        "passed": all(p["verdict"]["passed"] for p in programs),
    }  # fmt: skip


def main() -> None:
    report = build_report()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        html = write_html(report, Path(tmp) / "report.html")
        if "--keep" in sys.argv:
            (ROOT / "docs" / "report-example.html").write_text(html.read_text(encoding="utf-8"), encoding="utf-8")
        with Chromium.launch(Path(tmp) / "profile") as browser:
            page = browser.new_page()
            page.set_viewport(1360, 1000)
            page.goto(html.as_uri())
            page.evaluate("document.querySelector('#p0 [data-filter=miss]').click()")
            page.screenshot(ROOT / "docs" / "report.png")
    print(f"wrote {ROOT / 'docs' / 'report.png'}")


if __name__ == "__main__":
    main()
