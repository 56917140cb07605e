"""The golden comparison is computed once and said alike everywhere (new-user trial, findings 7 and 9).

* The failure sentence said ``golden 1.000 (delta -1.000 ...)`` for a run whose every example was lost
  to a dead port while the table said ``n/a (none shared)``; with examples lost to a timeout the
  sentence's delta counted them (-0.231) and the table's paired delta did not (+0.000).
* An incomplete row (``-k``, ``--lf``, ``-x``) set the score of the few examples that ran against the
  golden's score on all of them: ``0.923 (+0.077)`` for one example.
"""

from __future__ import annotations

import re

from pytest_dspex.evaluation.gates import against_golden
from pytest_dspex.reports._format import ProgramView
from pytest_dspex.reports.run import ProgramRun

from .test_plugin_baseline import COMPILE, mode, model, project, run, server  # noqa: F401
from .test_run_pipeline import rec, settings


def test_the_sentence_and_the_row_agree_when_examples_timed_out() -> None:
    golden = {f"ex-{i}": 1.0 if i < 9 else 0.0 for i in range(10)}  # the golden: 0.900
    pr = ProgramRun(settings(golden_score=0.9, threshold=None, max_error_rate=0.5), golden_outcomes=golden)
    pr.add(rec(i, 0.0, "timeout") if i in (0, 1) else rec(i, 1.0 if i < 9 else 0.0) for i in range(10))
    verdict = pr.judge()
    view = ProgramView(pr.row())
    assert (view.baseline, view.delta) == (0.875, 0.0)  # the 8 answered examples, paired
    assert f"golden {view.baseline:.3f} (delta {view.delta:+.3f}," in verdict.headline("triage", 10)
    assert "-0.1" not in verdict.headline("triage", 10)  # not the timeouts' zeros against the whole golden


def test_nothing_shared_and_an_incomplete_run_compare_nothing() -> None:
    assert against_golden(0.0, 1.0, {"shared": 0, "delta": 0.0}) == (None, None, "none shared")
    lost = {"shared": 0, "delta": 0.0, "lost": 10}
    assert against_golden(0.0, 1.0, lost) == (None, None, "none measured (10 lost to LM errors)")
    assert against_golden(1.0, 0.9, None, incomplete=True) == (None, None, "incomplete")
    assert against_golden(0.8, 0.9, None) == (0.9, -0.1, "")
    assert against_golden(0.8, None, None, incomplete=True) == (None, None, "")  # no golden: nothing to say


def test_a_dead_endpoints_failure_sentence_says_what_the_table_says(pytester, server, mode):  # noqa: F811
    project(pytester, 10)
    assert run(pytester, server, ["-p", "no:xdist"], *COMPILE).ret == 0
    dead = run(pytester, server, mode, "--dspex-base-url=http://127.0.0.1:9/v1", "--dspex-markdown=s.md")
    out = dead.stdout.str()
    assert dead.ret == 1, out
    assert "golden 1.000 (delta -1.000" not in out
    # every key is the golden's, none was measured (trial finding 3: this said "none shared")
    lost = "none measured (10 lost to LM errors)"
    assert re.search(rf"dspex gate FAILED for 'triage.*golden n/a \({re.escape(lost)}\).*LM errors: 10 of 10", out), out
    # the table short (it fits 120 columns: trial F14), the line under it says how many and why
    dead.stdout.fnmatch_lines(["triage*dataset*n/a (none measured) *", "triage*per-example*n/a (none measured) *",
                               f"triage ?dataset? vs golden: not judged: {lost}"])  # fmt: skip
    assert max(len(line) for line in out.splitlines() if line.startswith("triage ")) <= 120
    assert "none shared" not in out


def test_an_incomplete_row_shows_no_golden_delta(pytester, server, model, mode):  # noqa: F811
    model.worse_when, model.worse = "Route a customer message", {0, 2, 4, 6}  # the golden: 0.600 on 10
    project(pytester, 10)
    assert run(pytester, server, ["-p", "no:xdist"], *COMPILE).ret == 0
    part = run(pytester, server, mode, "-k", "each and (ex-1] or ex-3])", "--dspex-markdown=s.md", "--dspex-html=r.html")
    out = part.stdout.str()
    assert part.ret == 0, out
    part.stdout.fnmatch_lines(["triage*per-example*1.000*n/a (incomplete)*incomplete*", "*incomplete: 2 of 10 examples ran*"])
    assert "(+0.4" not in out and "+0.400" not in out
    md = (pytester.path / "s.md").read_text()
    assert "+0.400" not in md and "n/a (incomplete: not all examples ran)" in md
    assert "n/a (incomplete: not all examples ran)" in (pytester.path / "r.html").read_text()


def test_a_threshold_failure_that_is_no_drop_says_why_in_every_view() -> None:
    """Trial10: the failure sentence (terminal, JSON ``verdict.reason``) and the verdict words (markdown, HTML,
    the line under the table with ``--tb=no``) say alike why a score below the threshold is no drop from the
    golden: the golden's own baseline is below the threshold too, or it is within the endpoint's own noise."""
    below = ProgramRun(settings(golden_score=0.8, threshold=0.95), golden_outcomes={f"ex-{i}": float(i < 8) for i in range(10)})
    below.add(rec(i, float(i < 8)) for i in range(10))
    verdict, words = below.judge(), ProgramView(below.row()).verdict_words
    assert verdict.kind == "below_threshold"
    assert "the golden's own baseline 0.800 is below the threshold 0.95: lower the threshold or recompile (pytest --dspex-compile=triage)" in verdict.reason
    assert words == "FAIL: below threshold (0.800 < 0.95), as is the golden's own baseline 0.800: lower the threshold or recompile"
    assert "own noise" not in verdict.reason + words  # below the threshold is not "within the noise of it"

    draws = {f"ex-{i}": [0.0, 1.0] if i < 4 else [1.0, 1.0] for i in range(10)}  # a noisy baseline: 0.800
    noisy = ProgramRun(settings(golden_score=0.8, threshold=0.75), golden_outcomes=draws)
    noisy.add(rec(i, float(i >= 4)) for i in range(10))  # 0.600: the unchanged program's unlucky run
    verdict, words = noisy.judge(), ProgramView(noisy.row()).verdict_words
    spread = re.search(r"within this endpoint's own noise \(\+-(0\.\d+)\)", verdict.reason)
    assert verdict.kind == "below_threshold" and spread, verdict.reason
    assert words == (f"FAIL: below threshold (0.600 < 0.75), within this endpoint's own noise (+-{spread[1]}) of the "
                     "golden's baseline 0.800 (paired: no change)")  # fmt: skip
    assert "the golden's baseline 0.800 is within this endpoint's own noise" in verdict.reason
