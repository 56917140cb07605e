"""Trial 13 (a new user trying issue 18's promises from README alone): an instructions edit of one step of
a two-predictor pipeline, and an older golden (schema 2: no ``selection`` / ``baseline`` records) gated,
printed and re-baselined.

Every plugin scenario runs with ``-n 2`` and with ``-p no:xdist`` (the ``mode`` fixture)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from pytest_dspex.reports.markdown import render_markdown

from .test_plugin_baseline import COMPILE, GOLDEN, golden, mode, model, project, report_rows, run, server  # noqa: F401

PIPELINE = '''
import pytest
import pytest_dspex as dspex

class Classify(dspex.Signature):
    """Say which team handles the message."""
    message: str = dspex.InputField()
    team: str = dspex.OutputField()

class Reply(dspex.Signature):
    """REPLY_INSTRUCTIONS"""
    message: str = dspex.InputField()
    team: str = dspex.InputField()
    reply: str = dspex.OutputField()

class Pipe(dspex.Module):
    def __init__(self):
        super().__init__()
        self.classify = dspex.Predict(Classify)
        self.respond = dspex.Predict(Reply)

    def forward(self, message):
        team = self.classify(message=message).team
        return dspex.Prediction(team=team, reply=self.respond(message=message, team=team).reply)

def good_reply(example, prediction, trace=None):
    return example.team == prediction.team and example.team in prediction.reply

@pytest.mark.dspex_program(Pipe(), name="pipe", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(good_reply, threshold=0.5)
def test_pipe(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''

REPLY = "Write a one-line reply to the customer."


def pipe_rows(n: int, offset: int = 0) -> str:
    out = []
    for i in range(offset, offset + n):
        team = "billing" if i % 2 else "technical"
        message = f"I was charged twice, case {i}" if i % 2 else f"the app crashes, case {i}"
        out.append({"id": f"ex-{i}", "message": message, "team": team, "reply": f"We will route this to {team}."})
    return "\n".join(json.dumps(r) for r in out) + "\n"


def pipe_model(body: dict[str, Any]) -> str:
    """Right on every step, except that a reply step told to be CURT names the other team for every
    fourth case (an edit of the second predictor's instructions alone that breaks 10 of 40)."""
    system = str(body["messages"][0]["content"])
    text = str(body["messages"][-1]["content"])
    last = text.rsplit("Message:", 1)[-1]
    case = int(re.search(r"case (\d+)", last).group(1))  # type: ignore[union-attr]
    team = "billing" if "charged" in last else "technical"
    other = "technical" if team == "billing" else "billing"
    if text.rstrip().endswith("Reply:"):
        return f" We will route this to {other if 'CURT' in system and case % 4 == 0 else team}."
    return f" {team}"


@pytest.fixture
def pipe_server(server_factory: Any) -> Any:
    s = server_factory(pipe_model)
    s.keep_bodies = False
    return s


def test_an_edit_of_one_predictor_of_a_pipeline_names_it_in_every_view(pytester, pipe_server, mode):  # noqa: F811
    """Only the second step's instructions edited: the diff said ``--- golden instructions`` / ``+++ program
    instructions`` with no word of which of the two predictors changed, and the markdown's regressed examples
    read ``expected team: technical reply: We will route th…, got team: technical reply: We will route th…`` —
    the same on both sides, the reply's difference cut off at 40 characters."""
    pytester.makefile(".jsonl", **{"data/train": pipe_rows(8, 1000), "data/dev": pipe_rows(40)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_pipe=PIPELINE.replace("REPLY_INSTRUCTIONS", REPLY))
    compiled = run(pytester, pipe_server, mode, *COMPILE)
    assert compiled.ret == 0, compiled.stdout.str()
    pytester.makepyfile(test_pipe=PIPELINE.replace("REPLY_INSTRUCTIONS", REPLY + " Be CURT."))
    out = run(pytester, pipe_server, mode, "--dspex-report=report.json", "--dspex-markdown=r.md")
    assert out.ret == 1, out.stdout.str()
    text = out.stdout.str()
    assert "10 regressed" in text
    out.stdout.fnmatch_lines(["--- golden instructions (respond)", "+++ program instructions (respond)"])
    assert "(classify)" not in text  # the step that did not change is not named
    row = report_rows(pytester)["dataset"]
    assert "--- golden instructions (respond)" in row["instructions_diff"]
    md = (pytester.path / "r.md").read_text()
    assert "--- golden instructions (respond)" in md
    # the regressed examples: the field that differs, named, on both sides
    assert "→ expected reply: We will route this to technical., got reply: We will route this to billing." in md, md
    assert "got team:" not in md


def test_the_markdown_shows_every_field_when_all_or_none_differ() -> None:
    def report(expected: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
        record = {"key": "k1", "inputs": {"message": "m"}, "expected": expected, "prediction": got, "score": 0.0}
        row = {
            "program": "p", "mode": "dataset", "test": "t.py::test_p", "score": 0.0, "n": 1, "threshold": 0.5,
            "verdict": {"passed": False, "reason": "regressed"}, "records": [record],
            "comparison": {"verdict": "regressed", "regressions": ["k1"], "test": "mcnemar-exact", "p_value": 0.01},
        }  # fmt: skip
        return {"programs": [row], "complete": True, "passed": False}

    both = render_markdown(report({"team": "a", "reply": "x"}, {"team": "b", "reply": "y"}))
    assert "expected team: a reply: x, got team: b reply: y" in both
    same = render_markdown(report({"team": "a", "reply": "x"}, {"team": "a", "reply": "x"}))  # the metric's call
    assert "expected team: a reply: x, got team: a reply: x" in same
    one = render_markdown(report({"team": "a", "reply": "x"}, {"team": "a", "reply": "y"}))
    assert "expected reply: x, got reply: y" in one


def _older_golden(pytester: pytest.Pytester) -> None:
    """The golden as a version before issue 18 wrote it (schema 2): no ``selection`` or ``baseline``; its
    ``scores.validation`` the selection's outcomes, on the gate's own dataset (in-sample)."""
    g = golden(pytester)
    v2 = {k: v for k, v in g.items() if k not in ("selection", "baseline")}
    v2["schema_version"] = 2
    v2["datasets"]["validation"] = g["baseline"]["dataset"]
    v2["scores"]["validation"] = {"score": 1.0, "n": 20, "examples": {f"ex-{i}": 1.0 for i in range(20)}}
    (pytester.path / GOLDEN).write_text(json.dumps(v2))


def test_an_older_in_sample_golden_says_how_to_record_a_baseline_and_its_rebaseline_stays_in_sample(
    pytester, server, mode  # noqa: F811
):
    """An older golden (chosen on the gate's own examples) said ``IN-SAMPLE … baseline: the selection pass …,
    not a fresh measurement`` without saying what to do; ``--dspex-rebaseline`` then wrote its selection as
    ``validation``, so every later view said ``chosen on a validation set (n=20 …)``: IN-SAMPLE gone."""
    project(pytester, 20)
    assert run(pytester, server, mode, *COMPILE, "-k", "not each").ret == 0
    _older_golden(pytester)
    out = run(pytester, server, mode, "--dspex-report=report.json")
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(
        ["*golden: chosen on the gate's own examples (IN-SAMPLE*not a fresh measurement; record one on the gate's "
         "dataset: pytest --dspex-rebaseline=triage*"]
    )  # fmt: skip
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_dspex", "prompt", str(pytester.path / GOLDEN)], capture_output=True, text=True
    ).stdout
    assert "the marker's valset, else the gate's own examples (IN-SAMPLE)" in shown, shown
    assert "pytest --dspex-rebaseline=triage" in shown

    rebased = run(pytester, server, mode, "--dspex-rebaseline=triage")
    assert rebased.ret == 0, rebased.stdout.str()
    assert golden(pytester)["selection"]["set"] == "in-sample"
    out = run(pytester, server, mode, "--dspex-report=report.json", "--dspex-markdown=r.md")
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(["*golden: chosen on the gate's own examples (IN-SAMPLE: not held out) (n=20*"])
    assert "--dspex-rebaseline=triage" not in out.stdout.str()  # it has a fresh baseline now
    for row in report_rows(pytester).values():
        assert row["golden_provenance"]["in_sample"] is True
    assert "IN-SAMPLE" in (pytester.path / "r.md").read_text()
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_dspex", "prompt", str(pytester.path / GOLDEN)], capture_output=True, text=True
    ).stdout
    assert "IN-SAMPLE: not held out" in shown and "measured again by --dspex-rebaseline" in shown, shown


def test_a_recompile_that_keeps_the_golden_after_the_trainset_changed_says_its_demos_are_the_old_ones(
    pytester, server, mode  # noqa: F811
):
    """The gate said "the trainset … changed since the golden was compiled: its demos come from the old one;
    pytest --dspex-compile=triage recompiles with it"; the user did, the compile kept the golden (its baseline
    ties), said nothing of the trainset, and the next gate run gave the same advice again."""
    from .test_plugin_gates import rows

    # chosen on a valset: without one the selection set is the trainset, and a changed one replaces the golden
    project(pytester, 40, marker=', valset="data/val.jsonl"')
    pytester.makefile(".jsonl", **{"data/val": rows(10, 2000)})
    assert run(pytester, server, mode, *COMPILE).ret == 0
    train = pytester.path / "data/train.jsonl"
    train.write_text(train.read_text().rstrip("\n") + "\n" + rows(5, 1500))
    out = run(pytester, server, mode)
    assert out.ret == 0, out.stdout.str()
    out.stdout.fnmatch_lines(
        ["*triage: the trainset data/train.jsonl changed since the golden was compiled: its demos come from the old "
         "one; pytest --dspex-compile=triage recompiles with it (and replaces the golden when the new choice's "
         "baseline is better; --dspex-force records it anyway)*"]
    )  # fmt: skip
    before = (pytester.path / GOLDEN).read_bytes()
    again = run(pytester, server, mode, *COMPILE)
    assert again.ret == 0, again.stdout.str()
    # zero-shot chosen again (the same program): said, the file untouched
    again.stdout.fnmatch_lines(
        ["*golden unchanged: __dspex__/test_triage/triage.json*same demos and instructions as the golden file, "
         "chosen again from the changed trainset, and the same score: the file is left untouched, so its recorded "
         "trainset fingerprint is the old one and gate runs still note the change; --dspex-force records it*"]
    )  # fmt: skip
    assert (pytester.path / GOLDEN).read_bytes() == before
    # another choice that does not improve on the golden: kept, and its demos said to be the old trainset's
    kept = run(pytester, server, mode, *COMPILE, "--dspex-candidates=1", "--dspex-optimizer=labeled")
    assert kept.ret == 0, kept.stdout.str()
    kept.stdout.fnmatch_lines(
        ["*golden kept: __dspex__/test_triage/triage.json*does not improve on the golden's*; its demos still come "
         "from the trainset it was compiled on, not the changed one (--dspex-force records this run's choice)*"]
    )  # fmt: skip
    assert (pytester.path / GOLDEN).read_bytes() == before


def test_a_second_dataset_of_the_same_program_says_why_nothing_is_paired(pytester, server, mode):  # noqa: F811
    """The program's per-example test on another file than its dataset test: its row read ``n/a (none
    shared)`` / "no examples shared with the golden", a pass with no regression gate, nothing said of why
    (the one baseline measured on the other dataset) nor how to gate it against a baseline of its own."""
    from .test_plugin_gates import rows

    project(pytester, 20)
    pytester.makefile(".jsonl", **{"data/other": rows(10, 3000)})
    source = (pytester.path / "test_triage.py").read_text()
    pytester.makepyfile(test_triage=source.replace('dspex_dataset("data/dev.jsonl")', 'dspex_dataset("data/other.jsonl")'))
    assert run(pytester, server, mode, *COMPILE, "-k", "not each").ret == 0
    out = run(pytester, server, mode, "--dspex-report=report.json", "--dspex-markdown=r.md")
    assert out.ret == 0, out.stdout.str()
    said = (
        "none of the 10 examples is in the golden's baseline (measured on another dataset, 20 examples): nothing is "
        "paired, only the threshold gates this dataset; a program has one baseline, so give this test's "
        "dspex_program marker a name of its own (name='triage_...') for a golden and baseline of its own"
    )
    out.stdout.fnmatch_lines([f"*triage: {said}*"])
    assert out.stdout.str().count("none of the 10 examples") == 1
    by_mode = report_rows(pytester)
    assert said in by_mode["per-example"]["note"]
    assert "none of the" not in by_mode["dataset"]["note"]  # the dataset the baseline was measured on
    assert said.split("; a program")[0] in (pytester.path / "r.md").read_text()  # markdown escapes the name's _
