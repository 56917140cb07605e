"""Every demo complete and earned, and said so: a pipeline whose trainset labels only its first
step, a graded metric, a signature gaining a field (unit level here; the pytest layer at the end)."""

from __future__ import annotations

import json
import re

import pytest

import pytest_dspex as dspex
from pytest_dspex.optimize import BootstrapFewShot, BootstrapFewShotWithRandomSearch, LabeledFewShot
from pytest_dspex.optimize.review import review_program, summary_lines


# -- a two-step pipeline: classify (labeled in the trainset), then write (not) -------------------
class Classify(dspex.Signature):
    """Say how the customer feels."""

    review: str = dspex.InputField()
    sentiment: str = dspex.OutputField()


class Write(dspex.Signature):
    """Write a short reply to the review."""

    review: str = dspex.InputField()
    sentiment: str = dspex.InputField()
    reply: str = dspex.OutputField()


class Responder(dspex.Module):
    def __init__(self, lm=None):
        self.classify = dspex.Predict(Classify, lm=lm)
        self.write = dspex.Predict(Write, lm=lm)

    def forward(self, review):
        sentiment = self.classify(review=review).sentiment
        return self.write(review=review, sentiment=sentiment)


def reviews(n: int) -> list[dspex.Example]:
    return [
        dspex.Example(review=f"case {i}: " + ("love it" if i % 2 else "it broke"), sentiment="positive" if i % 2 else "negative").with_inputs("review")
        for i in range(n)
    ]  # fmt: skip


def pipeline_responder(body):
    text = body["messages"][-1]["content"].rstrip()
    last = text.rsplit("Review:", 1)[-1]
    if text.endswith("Sentiment:"):
        return " positive" if "love" in last else " negative"
    return " Thank you!" if "positive" in last.split("\n", 1)[-1] else " Sorry about that."


def sentiment_matches(example, prediction, trace=None):
    """The reply is not labeled: it must suit the labeled sentiment."""
    return prediction.reply == ("Thank you!" if example.sentiment == "positive" else "Sorry about that.")


def test_a_step_the_trainset_does_not_label_gets_bootstrapped_demos_with_every_field(server_factory, make_lm):
    server = server_factory(pipeline_responder)
    opt = BootstrapFewShot(sentiment_matches, max_bootstrapped_demos=3, max_labeled_demos=6)
    compiled = opt.compile(Responder(make_lm(server)), trainset=reviews(12))
    classify, write = compiled.classify.demos, compiled.write.demos
    assert [d.get("augmented", False) for d in write] == [True] * 3  # no labeled demo without a reply
    assert all(d["reply"] in ("Thank you!", "Sorry about that.") and d["sentiment"] and d["review"] for d in write)
    assert len(classify) == 6 and all(set(d) >= {"review", "sentiment"} for d in classify)
    assert all("reply" not in d for d in classify)  # a labeled demo carries its predictor's fields only
    assert opt.report.predictors["write"].to_dict() == {"labeled": 0, "bootstrapped": 3, "unlabeled_fields": ["reply"]}
    assert opt.report.predictors["classify"].to_dict() == {"labeled": 3, "bootstrapped": 3}
    review = review_program(compiled, reviews(12))
    assert summary_lines(review) == [
        "classify: 3 labeled, 3 bootstrapped demos",
        "write: 0 labeled, 3 bootstrapped demos (no training example gives reply: its demos come only from the teacher's runs)",
    ]


def test_labeled_demos_are_sampled_per_predictor_from_the_examples_holding_its_fields():
    program = LabeledFewShot(4).compile(Responder(), reviews(12))
    assert program.write.demos == []  # nothing in the trainset shows a reply
    assert len(program.classify.demos) == 4 and all(set(d) == {"review", "sentiment"} for d in program.classify.demos)

    class Twice(dspex.Module):
        def __init__(self):
            self.a = dspex.Predict(Classify)
            self.b = dspex.Predict(Classify)

    twice = LabeledFewShot(4).compile(Twice(), reviews(12))
    assert twice.a.demos != twice.b.demos  # DSPy: one Random(0), one sample per predictor


def test_the_search_reports_which_predictors_got_which_demos(server_factory, make_lm):
    server = server_factory(pipeline_responder)
    search = BootstrapFewShotWithRandomSearch(sentiment_matches, num_candidates=1, max_bootstrapped_demos=2, max_labeled_demos=4, calibrate=False)
    result = search.compile(Responder(make_lm(server)), trainset=reviews(10), valset=reviews(6))
    for cand in result.candidates:
        for p in cand.program.predictors():
            fields = [n for n in p.signature.fields]
            assert all(all(d.get(n) is not None for n in fields) for d in p.demos), (cand.name, p.demos)
    review = result.demo_review
    assert review["write"]["labeled"] == 0 and review["write"]["unlabeled_fields"] == ["reply"]
    assert review["write"]["bootstrapped"] == sum(1 for d in result.program.write.demos if d.get("augmented"))


# -- a graded metric: partial credit earns no demo unless a threshold says so ---------------------
class Extract(dspex.Signature):
    """Extract the person's name."""

    text: str = dspex.InputField()
    name: str = dspex.OutputField()


PEOPLE = ["Grandpa Joe", "Ann", "Aunt May", "Bob", "Cy", "Dee"]


def people() -> list[dspex.Example]:
    return [dspex.Example(text=f"case {i}: {n} waved", name=n).with_inputs("text") for i, n in enumerate(PEOPLE)]


def last_word_responder(body):
    text = body["messages"][-1]["content"].rstrip()
    said = re.search(r"case \d+: (.*) waved", text.rsplit("Text:", 1)[-1]).group(1)
    return " " + said.split()[-1]  # "Grandpa Joe" -> "Joe": half right


def name_credit(example, prediction, trace=None) -> float:
    if prediction.name == example.name:
        return 1.0
    return 0.5 if prediction.name in example.name else 0.0


@pytest.mark.parametrize(
    "threshold, kept",
    [(None, ["Ann", "Bob", "Cy", "Dee"]), (0.5, ["Grandpa Joe", "Ann", "Aunt May", "Bob"]), (1.0, ["Ann", "Bob", "Cy", "Dee"])],
)
def test_a_graded_metric_earns_a_demo_with_full_credit_unless_a_threshold_is_set(server_factory, make_lm, threshold, kept):
    server = server_factory(last_word_responder)
    opt = BootstrapFewShot(name_credit, metric_threshold=threshold, max_bootstrapped_demos=4, max_labeled_demos=4)
    compiled = opt.compile(dspex.Predict(Extract, lm=make_lm(server)), trainset=people())
    boot = [d for d in compiled.demos if d.get("augmented")]
    assert [d["text"].split(": ")[1].removesuffix(" waved") for d in boot] == kept
    flags = review_program(compiled, people())["self"]["flags"]
    if threshold == 0.5:  # the half-right demos are in, and the review says so
        assert flags == ["demo 1: name = 'Joe', its example says 'Grandpa Joe'", "demo 3: name = 'May', its example says 'Aunt May'"]
    else:
        assert flags == []


def test_bool_and_non_numeric_metric_values_keep_dspys_truthiness():
    from pytest_dspex.optimize.bootstrap import full_credit

    assert full_credit(True) and not full_credit(False)
    assert full_credit(1) and full_credit(1.0) and not full_credit(0.99) and not full_credit(float("nan"))
    assert full_credit(0.5, 0.5) and not full_credit(0.49, 0.5)
    assert full_credit("yes")  # an object: its truthiness, as in DSPy


# -- a signature gaining a field ------------------------------------------------------------------
class Person(dspex.Signature):
    """Extract the person's name and whether they are an adult."""

    text: str = dspex.InputField()
    name: str = dspex.OutputField()
    is_adult: bool = dspex.OutputField()


def aged(n: int, labeled_adult: int) -> list[dspex.Example]:
    """``n`` examples; only the first ``labeled_adult`` carry the new ``is_adult`` label."""
    out = []
    for i in range(n):
        row = {"text": f"case {i}: P{i}, aged {8 + i * 5}", "name": f"P{i}"}
        if i < labeled_adult:
            row["is_adult"] = 8 + i * 5 >= 18
        out.append(dspex.Example(**row).with_inputs("text"))
    return out


def always_adult(body):
    text = body["messages"][-1]["content"].rsplit("Text:", 1)[-1]
    name = re.search(r"(P\d+),", text).group(1)
    system = body["messages"][0]["content"]
    if "JSON" in system or "json" in system.lower():
        return json.dumps({"name": name, "is_adult": True})
    return f" {name}\nIs Adult: true"


def name_matches(example, prediction, trace=None):
    return example.name == prediction.name  # checks the name only


def test_a_field_added_to_the_signature_is_in_every_demo_and_wrong_ones_are_flagged(server_factory, make_lm):
    server = server_factory(always_adult)
    train = aged(10, labeled_adult=4)
    opt = BootstrapFewShot(name_matches, max_bootstrapped_demos=2, max_labeled_demos=8)
    compiled = opt.compile(dspex.Predict(Person, lm=make_lm(server)), trainset=train)
    demos = compiled.demos
    assert all(d.get("is_adult") is not None for d in demos), demos  # none without the new field
    labeled = [d for d in demos if not d.get("augmented")]
    # P0 and P2 bootstrapped (the demos cover both labels of is_adult); P4.. have no is_adult label
    assert {d["name"] for d in labeled} == {"P1", "P3"}
    flags = review_program(compiled, train)["self"]["flags"]
    # P0 (aged 8) was answered "adult": the metric did not look, the review does
    assert flags == ["demo 1: is_adult = True, its example says False"]


# -- the pytest layer: the compile summary, the golden and `prompt` say the same -----------------
RESPONDER_TEST = '''
import pytest
import pytest_dspex as dspex

class Classify(dspex.Signature):
    """Say how the customer feels."""
    review: str = dspex.InputField()
    sentiment: str = dspex.OutputField()

class Write(dspex.Signature):
    """Write a short reply to the review."""
    review: str = dspex.InputField()
    sentiment: str = dspex.InputField()
    reply: str = dspex.OutputField()

class Responder(dspex.Module):
    def __init__(self):
        self.classify = dspex.Predict(Classify)
        self.write = dspex.Predict(Write)

    def forward(self, review):
        return self.write(review=review, sentiment=self.classify(review=review).sentiment)

def suits(example, prediction, trace=None):
    return prediction.reply == ("Thank you!" if example.sentiment == "positive" else "Sorry about that.")

@pytest.mark.dspex_program(Responder(), name="responder", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(suits, threshold=0.5MARKER)
def test_responder(dspex_evaluate):
    assert dspex_evaluate("data/dev.jsonl").n == 6
'''


def review_rows(n: int, offset: int = 0) -> str:
    return "".join(json.dumps({"review": f"case {i}: " + ("love it" if i % 2 else "it broke"),
                               "sentiment": "positive" if i % 2 else "negative"}) + "\n" for i in range(offset, offset + n))  # fmt: skip


@pytest.fixture
def responder_project(pytester, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makefile(".jsonl", **{"data/train": review_rows(10, 100), "data/dev": review_rows(6)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

    def write(marker: str = "") -> None:
        pytester.makepyfile(test_resp=RESPONDER_TEST.replace("MARKER", marker))

    write()
    return write


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_compile_summary_and_prompt_list_demos_per_predictor(pytester, responder_project, server_factory, mode):
    import subprocess
    import sys

    from .test_plugin import run

    server = server_factory(pipeline_responder)
    result = run(pytester, server, mode, "--dspex-compile", "--dspex-candidates=1", "--dspex-demos=2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*golden created: __dspex__/test_resp/responder.json*",
        "*  classify: * labeled, * bootstrapped demos",
        "*  write: 0 labeled, * bootstrapped demos (no training example gives reply*)",
    ])  # fmt: skip
    golden_path = pytester.path / "__dspex__" / "test_resp" / "responder.json"
    golden = json.loads(golden_path.read_text())
    assert golden["optimizer"]["metric_threshold"] == 1.0  # full credit, recorded
    write_demos = golden["predictors"]["write"]["demos"]
    assert all(d["bootstrapped"] and d["outputs"].get("reply") for d in write_demos)  # never a demo without its reply
    assert golden["optimizer"]["demos"]["write"]["unlabeled_fields"] == ["reply"]
    shown = subprocess.run([sys.executable, "-m", "pytest_dspex", "prompt", str(golden_path)], capture_output=True, text=True, check=True).stdout
    assert "# bootstrapped demos needed metric >= 1" in shown
    assert "# write: 0 labeled, " in shown and "(no training example gives reply" in shown


def test_metric_threshold_from_the_marker_or_the_option_is_recorded(pytester, responder_project, server_factory):
    from .test_plugin import run

    server = server_factory(pipeline_responder)
    golden_path = pytester.path / "__dspex__" / "test_resp" / "responder.json"
    result = run(pytester, server, ["-p", "no:xdist"], "--dspex-compile", "--dspex-candidates=0", "--dspex-metric-threshold=0.5")
    assert result.ret == 0, result.stdout.str()
    assert json.loads(golden_path.read_text())["optimizer"]["metric_threshold"] == 0.5
    responder_project(marker=", metric_threshold=0.75")  # the marker wins over the option
    result = run(pytester, server, ["-p", "no:xdist"], "--dspex-compile", "--dspex-candidates=0", "--dspex-force", "--dspex-metric-threshold=0.5")
    assert result.ret == 0, result.stdout.str()
    assert json.loads(golden_path.read_text())["optimizer"]["metric_threshold"] == 0.75
    responder_project(marker=", metric_threshold=2")
    result = run(pytester, server, ["-p", "no:xdist"], "--dspex-compile")
    result.stdout.fnmatch_lines(["*dspex_metric: metric_threshold=2 must be a number between 0 and 1*"])
    result = run(pytester, server, ["-p", "no:xdist"], "--dspex-compile", "--dspex-metric-threshold=1.5")
    result.stderr.fnmatch_lines(["*--dspex-metric-threshold must be between 0 and 1, got 1.5*"])


def test_a_passing_run_that_leaves_a_field_empty_is_not_a_demo(server_factory, make_lm):
    class Optional_(dspex.Signature):
        """Extract the person's name and, when given, their age."""

        text: str = dspex.InputField()
        name: str = dspex.OutputField()
        age: int | None = dspex.OutputField()

    def respond(body):
        text = body["messages"][-1]["content"].rsplit("Text:", 1)[-1]
        name = re.search(r"case \d+: (\w+)", text).group(1)
        return f" {name}\nAge: 30" if name != "Ann" else f" {name}\nAge: null"

    server = server_factory(respond)
    train = [dspex.Example(text=f"case {i}: {n} waved", name=n, age=30).with_inputs("text") for i, n in enumerate(["Ann", "Bob", "Cy"])]
    opt = BootstrapFewShot(lambda e, p, t=None: p.name == e.name, max_bootstrapped_demos=2, max_labeled_demos=2)
    compiled = opt.compile(dspex.Predict(Optional_, lm=make_lm(server)), trainset=train)
    boot = [d for d in compiled.demos if d.get("augmented")]
    assert [d["name"] for d in boot] == ["Bob", "Cy"] and all(d["age"] == 30 for d in boot)
    assert opt.report.incomplete == 1 and opt.report.errors == 0  # Ann passed, without an age


def test_no_demos_for_an_unlabeled_field_does_not_claim_no_teacher_run_earned_one() -> None:
    # trial finding 1: other candidates had bootstrapped demos; zero-shot was chosen. The line said
    # "no teacher run earned a demo", which the golden's own candidates contradicted
    line = summary_lines({"self": {"labeled": 0, "bootstrapped": 0, "unlabeled_fields": ["department"]}})[0]
    assert line == (
        "self: 0 labeled, 0 bootstrapped demos (no training example gives department, and the chosen candidate "
        "has no demo from a teacher run: no demos)"
    )
    assert "no teacher run earned" not in line
