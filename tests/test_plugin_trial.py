"""A new user's trial of the paired gate (after issue 18): relabelled examples, a re-baseline that
regresses, a compile whose fresh baseline is below the threshold, a model switch, nothing shared."""

from __future__ import annotations

import json

import pytest

from .test_plugin_baseline import COMPILE, golden, mode, model, project, run, server, write_test  # noqa: F401


def relabel(pytester: pytest.Pytester, cases: range) -> None:
    path = pytester.path / "data/dev.jsonl"
    lines = []
    for i, line in enumerate(path.read_text().splitlines()):
        row = json.loads(line)
        if i in cases:
            row["team"] = "technical" if row["team"] == "billing" else "billing"
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")


def test_relabelled_examples_are_left_out_of_the_pairing_and_said(pytester, server, mode):  # noqa: F811
    project(pytester, 120)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    assert len(golden(pytester)["baseline"]["labels"]) == 120
    relabel(pytester, range(0, 120, 12))  # 10 labels corrected: same ids, same program, same answers
    out = run(pytester, server, mode, "--dspex-report=report.json")
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(
        ["*triage: 10 examples relabelled since the baseline, not paired; record a new baseline with "
         "pytest --dspex-rebaseline=triage*"]
    )  # fmt: skip
    assert "regressed" not in out.stdout.str()
    rows = json.loads((pytester.path / "report.json").read_text())["programs"]
    assert {r["mode"] for r in rows} == {"dataset", "per-example"}
    for r in rows:
        assert "10 examples relabelled" in r["note"]
        assert r["comparison"]["shared"] == 110


def test_a_golden_without_label_hashes_pairs_every_example_as_before(pytester, server):  # noqa: F811
    project(pytester, 120)
    assert run(pytester, server, ["-p", "no:xdist"], *COMPILE).ret == 0
    path = pytester.path / "__dspex__/test_triage/triage.json"
    data = json.loads(path.read_text())
    del data["baseline"]["labels"]
    path.write_text(json.dumps(data))
    relabel(pytester, range(0, 120, 12))
    out = run(pytester, server, ["-p", "no:xdist"], "-k", "not each")
    assert out.ret == 1
    out.stdout.fnmatch_lines(["*10 of 120 shared examples went pass -> fail*"])
    assert "relabelled" not in out.stdout.str()


def test_a_rebaseline_that_is_no_worse_is_written_without_force(pytester, server, model, mode):  # noqa: F811
    project(pytester, 200)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    before = golden(pytester)
    write_test(pytester, "Route a customer message to the team that should handle it, please.")  # every answer the same
    out = run(pytester, server, mode, "--dspex-rebaseline=triage")
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(["*golden rebaselined*", "*new baseline vs the golden's baseline: no change*"])
    after = golden(pytester)
    assert after["baseline"]["how"] == "rebaseline" and before["baseline"]["how"] == "compile"


def test_a_rebaseline_that_changes_nothing_leaves_the_golden_untouched(pytester, server, mode):  # noqa: F811
    """Trial finding F15: nothing changed, yet the golden was rewritten (how, timestamps): git noise."""
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    path = pytester.path / "__dspex__/test_triage/triage.json"
    before = path.read_bytes()
    out = run(pytester, server, mode, "--dspex-rebaseline=triage")
    assert out.ret == 0, out.stdout.str()
    # trial3 T7: it said "compile spent" / "(gates and compile)" and "golden unchanged" twice in the line
    out.stdout.fnmatch_lines([
        "*golden unchanged: __dspex__/test_triage/triage.json; re-baseline spent * re-baseline changed nothing (same "
        "instructions, model and baseline outcomes: 40 gate examples, score 1.000)",
        "dspex LM spend in this run (gates and re-baseline): *",
    ])  # fmt: skip
    assert "compile spent" not in out.stdout.str() and out.stdout.str().count("golden unchanged") == 1
    assert "golden rebaselined" not in out.stdout.str()
    assert path.read_bytes() == before


def test_a_rebaseline_the_gate_calls_a_regression_by_the_tolerance_is_refused(pytester, server, model, mode):  # noqa: F811
    """Trial finding F12: on 40 examples the paired test is underpowered, so the gate fails a drop of more
    than the tolerance; a re-baseline recorded that drop without --dspex-force and called it "no change"."""
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    before = golden(pytester)
    model.worse_when, model.worse = "in one word", {0, 10, 20, 30}  # 1.000 -> 0.900: p=0.0625, not significant
    write_test(pytester, "Route a customer message to the team that should handle it, in one word.")
    gate = run(pytester, server, mode, "-k", "not each")
    assert gate.ret == 1  # the gate: a regression by the tolerance
    gate.stdout.fnmatch_lines(["*triage ?dataset? vs golden: regression by the tolerance: 0.900 vs golden 1.000*"])
    refused = run(pytester, server, mode, "--dspex-rebaseline=triage")
    assert refused.ret == 1, refused.stdout.str()
    refused.stdout.fnmatch_lines([
        "*__dspex__/test_triage/triage.json: new baseline not recorded: it is worse than the one it would replace — "
        "regression by the tolerance: 0.900 vs 1.000 on 40 shared examples (more than 0.05 lower); the paired test "
        "alone would say no change*the golden is unchanged*pytest --dspex-rebaseline=triage --dspex-force*",
    ])  # fmt: skip
    assert golden(pytester) == before
    forced = run(pytester, server, mode, "--dspex-rebaseline=triage", "--dspex-force")
    assert forced.ret == 0, forced.stdout.str()
    forced.stdout.fnmatch_lines(["*new baseline vs the golden's baseline: regression by the tolerance: 0.900 vs 1.000*"])
    assert golden(pytester)["baseline"]["score"] == 0.9


def test_a_compile_below_the_threshold_keeps_the_golden_it_would_replace(pytester, server, mode):  # noqa: F811
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    before = golden(pytester)
    source = (pytester.path / "test_triage.py").read_text()
    # an added output field the model never writes: every answer is a parse error, the score 0.000
    source = source.replace("team: str = dspex.OutputField()", "team: str = dspex.OutputField()\n    urgent: bool = dspex.OutputField()")
    pytester.makepyfile(test_triage=source)
    out = run(pytester, server, mode, *COMPILE)
    assert out.ret == 1
    out.stdout.fnmatch_lines([
        "*golden not replaced: the newly compiled program's baseline scores 0.000 on 40 gate examples, below the "
        "threshold 0.500 (the golden it would replace: 1.000)*Kept the existing golden — it is stale (*urgent*)*"
        "pytest --dspex-compile=triage --dspex-force*",
    ])  # fmt: skip
    assert golden(pytester) == before
    forced = run(pytester, server, ["-p", "no:xdist"], *COMPILE, "--dspex-force")
    assert forced.ret == 1  # written as asked, and the gate fails below its threshold
    assert golden(pytester)["baseline"]["score"] == 0.0


def test_a_model_switch_is_named_beside_the_verdict(pytester, server, mode):  # noqa: F811
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    out = run(pytester, server, mode, "--dspex-model=other-model", "--dspex-report=report.json", "--dspex-markdown=s.md")
    assert out.ret == 0, out.stdout.str()
    said = (
        "golden measured with fake-model, this run with other-model; if the switch is intended, record its "
        "baseline: pytest --dspex-rebaseline=triage"
    )
    out.stdout.fnmatch_lines([f"*triage: {said}*"])
    rows = json.loads((pytester.path / "report.json").read_text())["programs"]
    assert len(rows) == 2 and all(said in r["note"] for r in rows)
    assert said in (pytester.path / "s.md").read_text()
    same = run(pytester, server, mode, "--dspex-report=report.json")
    assert "golden measured with" not in same.stdout.str()


def test_nothing_shared_with_the_golden_shows_no_golden_score_nor_delta(pytester, server, mode):  # noqa: F811
    from .test_plugin_gates import rows

    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    pytester.makefile(".jsonl", **{"data/dev": rows(40, 500)})  # other ids: no example in common
    out = run(pytester, server, mode, "--dspex-report=r.json", "--dspex-markdown=s.md", "--dspex-html=r.html")
    text = out.stdout.str()
    assert "+0.000" not in text, text
    out.stdout.fnmatch_lines(["triage*dataset*n/a (none shared)*", "triage*per-example*n/a (none shared)*"])
    out.stdout.fnmatch_lines(["*no examples shared with the golden*"])
    md = (pytester.path / "s.md").read_text()
    assert "+0.000" not in md and "| n/a | n/a (no examples shared with the golden) |" in md
    html = (pytester.path / "r.html").read_text()
    assert "n/a (no examples shared with the golden)" in html
    rows_ = json.loads((pytester.path / "r.json").read_text())["programs"]
    assert all(r["comparison"]["shared"] == 0 for r in rows_)


def test_a_recompile_after_an_output_field_rename_compares_with_the_golden_it_replaces(pytester, server, mode):  # noqa: F811
    """trial 4 F6: `team` renamed `department` (signature, metric, both files): the recompile said "replaced
    because the signature changed" and no comparison with the baseline it replaced, as every example's label
    hash had changed with the field's name although no label had."""
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    source = (pytester.path / "test_triage.py").read_text()
    pytester.makepyfile(test_triage=source.replace("team", "department"))
    for name in ("data/train.jsonl", "data/dev.jsonl"):
        path = pytester.path / name
        path.write_text(path.read_text().replace('"team":', '"department":'))
    relabel_department = pytester.path / "data/dev.jsonl"
    rows = [json.loads(line) for line in relabel_department.read_text().splitlines()]
    rows[0]["department"] = "technical" if rows[0]["department"] == "billing" else "billing"  # one label corrected
    relabel_department.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run(pytester, server, mode, *COMPILE)
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines([
        "*golden updated*replaced because the signature changed*",
        "*new baseline vs the golden's baseline: no change*39 shared examples*",  # the relabelled one left out
    ])  # fmt: skip


def test_a_rebaseline_asks_afresh_with_the_cache_on(pytester, server, model, mode):  # noqa: F811
    """Trial10 T10-5: with the answer cache on, a re-baseline took every answer from the cache (the
    compile's baseline draws): an endpoint that changed behind the same model name (a provider's silent
    upgrade) was never measured. Its passes now have this run's own rollout ids: fresh answers."""
    cache = ["--dspex-cache=on", f"--dspex-cache-dir={pytester.path / 'answers'}"]
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE, *cache).ret == 0
    before = golden(pytester)
    model.worse_when, model.worse = "", {0, 10, 20, 30}  # the same prompts now answered worse: 1.000 -> 0.900
    gate = run(pytester, server, mode, "-k", "not each", *cache)
    assert gate.ret == 0, gate.stdout.str()  # the gate's own answers come from the cache, as cached answers do
    out = run(pytester, server, mode, "--dspex-rebaseline=triage", *cache)
    assert out.ret == 1, out.stdout.str()
    out.stdout.fnmatch_lines(["*new baseline not recorded: it is worse than the one it would replace*0.900 vs 1.000*"])
    assert golden(pytester) == before
