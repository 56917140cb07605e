"""Figures of the HTML report at 10,000 examples: write time, file size, open and filter in Chromium.

    python bench/html_report.py [--n 10000] [--runs 5]

Targets (issue 12): written in <= 1 s, file <= 10 MB, opens and filters in headless Chromium in <= 2 s.
"Opens" is navigation start to the page's script having drawn the first page of rows (the load event
fires after the inline script ran); "filters" is a click on "misses" until its rows are in the DOM,
then a text search. Wall-clock figures; on a shared machine they are noisy (median of the runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_dspex.reports import write_html  # noqa: E402
from tests.chromium import Chromium  # noqa: E402
from tests.report_samples import program_row, record, report  # noqa: E402


def big_report(n: int) -> dict[str, Any]:
    row = program_row("triage", 10, misses=0, errors=0)
    records = []
    for i in range(n):
        outcome = "error" if i % 97 == 0 else "miss" if i % 9 == 0 else "pass"
        rec = record(i, outcome=outcome, key=f"h:{i * 2654435761 % 16**16:016x}")
        rec["inputs"]["message"] += f" — order #{i * 7919}, placed on the web shop, paid by card; the customer wrote twice."
        records.append(rec)
    row.update(records=records, n=n)
    row["comparison"]["regressions"] = [r["key"] for r in records if r["score"] < 1][:120]
    row["comparison"]["fixes"] = [r["key"] for r in records if r["score"] == 1][:80]
    return report(row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data = big_report(args.n)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        out = Path(tmp) / "report.html"
        writes = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            write_html(data, out)
            writes.append(time.perf_counter() - t0)
        size = out.stat().st_size
        opens, filters, searches, totals = [], [], [], []
        with Chromium.launch(Path(tmp) / "profile") as browser:
            for _ in range(args.runs):
                page = browser.new_page()
                t0 = time.perf_counter()
                page.goto(out.as_uri())
                assert page.evaluate("document.body.dataset.ready") == "true"
                opened = time.perf_counter()
                t1 = time.perf_counter()
                shown = page.evaluate(
                    "(() => { document.querySelector('#p0 [data-filter=miss]').click();"
                    " return document.querySelectorAll('#p0 tbody tr.miss').length; })()"
                )
                filtered = time.perf_counter()
                assert shown == 100, shown
                t2 = time.perf_counter()
                page.evaluate(
                    "(() => { const s = document.querySelector('#p0 .search'); s.value = 'order #7919';"
                    " s.dispatchEvent(new Event('input')); })()"
                )
                searched = time.perf_counter()
                opens.append(opened - t0)
                filters.append(filtered - t1)
                searches.append(searched - t2)
                totals.append(filtered - t0)
    med = statistics.median
    print(f"examples: {args.n}, runs: {args.runs} (median, min-max)")
    print(f"write_html:        {med(writes) * 1000:7.0f} ms  ({min(writes) * 1000:.0f}-{max(writes) * 1000:.0f})   target <= 1000 ms")
    print(f"file size:         {size / 1e6:7.2f} MB                  target <= 10 MB")
    print(f"open (to rows):    {med(opens) * 1000:7.0f} ms  ({min(opens) * 1000:.0f}-{max(opens) * 1000:.0f})")
    print(f"filter 'misses':   {med(filters) * 1000:7.0f} ms  ({min(filters) * 1000:.0f}-{max(filters) * 1000:.0f})")
    print(f"search:            {med(searches) * 1000:7.0f} ms  ({min(searches) * 1000:.0f}-{max(searches) * 1000:.0f})")
    print(f"open + filter:     {med(totals) * 1000:7.0f} ms  ({min(totals) * 1000:.0f}-{max(totals) * 1000:.0f})   target <= 2000 ms")


if __name__ == "__main__":
    main()
