"""Trial F18: a test calling ``dspex_evaluate`` twice (a dev set and another set) showed only the last
evaluation in the table and the reports; the one gated against the golden was in none."""

from __future__ import annotations

import json

from .test_plugin_baseline import COMPILE, mode, model, project, run, server  # noqa: F401
from .test_plugin_gates import rows

TWO = '''

@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
def test_two(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
    dspex_evaluate("data/more.jsonl")
'''


def test_each_evaluation_of_a_test_has_its_row_named_by_its_dataset(pytester, server, mode):  # noqa: F811
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE, "-k", "not each").ret == 0
    pytester.makefile(".jsonl", **{"data/more": rows(12, 500)})
    test_file = pytester.path / "test_triage.py"
    test_file.write_text(test_file.read_text() + TWO)
    out = run(pytester, server, mode, "-k", "test_two", "--dspex-report=report.json", "--dspex-markdown=summary.md")
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(["*triage*dataset: dev.jsonl*1.000*40*", "*triage*dataset: more.jsonl*1.000*12*"], consecutive=False)
    got = {r["mode"]: r for r in json.loads((pytester.path / "report.json").read_text())["programs"]}
    assert set(got) == {"dataset: dev.jsonl", "dataset: more.jsonl"}
    assert got["dataset: dev.jsonl"]["comparison"]["shared"] == 40  # the one paired with the golden
    assert not (got["dataset: more.jsonl"].get("comparison") or {}).get("shared")
    assert all(r["test"].endswith("::test_two") for r in got.values())
    summary = (pytester.path / "summary.md").read_text()
    assert "dataset: dev.jsonl" in summary and "dataset: more.jsonl" in summary
