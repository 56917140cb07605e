"""Trial 12 (a new user's first hour on the example project, embedded model): what a gate says about
examples added to its dataset since the golden's baseline was measured.

Every scenario runs with ``-n 2`` and with ``-p no:xdist`` (the ``mode`` fixture)."""

from __future__ import annotations

import json

from .test_plugin_baseline import COMPILE, mode, model, project, run, server  # noqa: F401
from .test_plugin_gates import rows


def test_examples_added_since_the_baseline_are_said_not_paired(pytester, server, mode):  # noqa: F811
    """T12-1: 5 rows added to the gate's dataset: the table read ``0.867 … golden 0.875 (+0.000)``, the
    line under it "no change … 40 shared examples", and nothing said that 5 of the 45 were compared
    with nothing (only the threshold gated them) nor how to add them to the baseline."""
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    dev = pytester.path / "data/dev.jsonl"
    dev.write_text(dev.read_text().rstrip("\n") + "\n" + rows(5, 500))  # five new examples (new ids)
    out = run(pytester, server, mode, "--dspex-report=report.json", "--dspex-markdown=r.md")
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(
        ["*triage: 5 of 45 examples are new since the golden's baseline (not in it): not paired, only the "
         "threshold gates them; record a new baseline with pytest --dspex-rebaseline=triage*"]
    )  # fmt: skip
    rows_ = json.loads((pytester.path / "report.json").read_text())["programs"]
    assert {r["mode"] for r in rows_} == {"dataset", "per-example"}
    for r in rows_:
        assert "5 of 45 examples are new since the golden's baseline" in r["note"]
        assert r["comparison"]["shared"] == 40
    assert "5 of 45 examples are new since the golden's baseline" in (pytester.path / "r.md").read_text()


def test_an_unchanged_dataset_says_nothing_new(pytester, server, mode):  # noqa: F811
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    out = run(pytester, server, mode, "--dspex-report=report.json")
    assert out.ret == 0, out.stdout.str()
    assert "new since the golden's baseline" not in out.stdout.str()
    assert "changed since the golden was compiled" not in out.stdout.str()
    for r in json.loads((pytester.path / "report.json").read_text())["programs"]:
        assert "new since" not in r["note"]


def test_a_trainset_changed_since_the_compile_is_said(pytester, server, mode):  # noqa: F811
    """T12-2: 5 rows added to the trainset: the normal run was green and said nothing; the golden's demos
    still come from the old trainset, and only a recompile would use the new rows."""
    project(pytester, 40)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    train = pytester.path / "data/train.jsonl"
    train.write_text(train.read_text().rstrip("\n") + "\n" + rows(5, 1500))
    out = run(pytester, server, mode, "--dspex-report=report.json")
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(
        ["*triage: the trainset data/train.jsonl changed since the golden was compiled: its demos come from the "
         "old one; pytest --dspex-compile=triage recompiles with it*"]
    )  # fmt: skip
    assert out.stdout.str().count("changed since the golden was compiled") == 1
    for r in json.loads((pytester.path / "report.json").read_text())["programs"]:
        assert "the trainset data/train.jsonl changed since the golden was compiled" in r["note"]

