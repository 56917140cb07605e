"""Issue 24's reproductions, scripted: incomplete and unearned demos, per candidate of a compile.

    PYTHONPATH=. python bench/demo_quality.py

Against a loopback fake endpoint (no model), ``BootstrapFewShotWithRandomSearch`` at the plugin's
defaults (4 bootstrapped, 16 labeled, 4 shuffled candidates) on three programs:

* ``responder``: ``classify(review -> sentiment)`` then ``write(review, sentiment -> reply)``; the
  trainset has no ``reply``. Counted: demos of ``write`` without a reply, over all candidates.
* ``extract`` with a graded metric (1.0 exact, 0.5 when the answer is part of the name); the model
  answers the last word ("Grandpa Joe" -> "Joe"). Counted: bootstrapped demos with partial credit.
* ``person`` gaining ``is_adult: bool``, labeled in 4 of 12 training examples; the model always
  says adult and the metric checks the name only. Counted: demos without ``is_adult``, and
  bootstrapped demos whose ``is_adult`` contradicts the label.

Counts are exact (deterministic given the seed); no timing.
"""

from __future__ import annotations

import json
import re

import pytest_dspex as dspex
from pytest_dspex.optimize import BootstrapFewShotWithRandomSearch
from pytest_dspex.testing.fake_server import FakeLMServer


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
        return self.write(review=review, sentiment=self.classify(review=review).sentiment)


class Extract(dspex.Signature):
    """Extract the person's name."""

    text: str = dspex.InputField()
    name: str = dspex.OutputField()


class Person(dspex.Signature):
    """Extract the person's name and whether they are an adult."""

    text: str = dspex.InputField()
    name: str = dspex.OutputField()
    is_adult: bool = dspex.OutputField()


def respond(body):
    text = body["messages"][-1]["content"].rstrip()
    if text.endswith("Sentiment:"):
        last = text.rsplit("Review:", 1)[-1]
        return " positive" if "love" in last else " negative"
    if text.endswith("Reply:"):
        return " Thank you!" if "positive" in text.rsplit("Sentiment:", 1)[-1] else " Sorry about that."
    last = text.rsplit("Text:", 1)[-1]
    said = re.search(r"case \d+: (.*?)(?:, aged \d+)? waved", last).group(1)  # type: ignore[union-attr]
    if "whether they are an adult" in json.dumps(body["messages"]):
        return f" {said}\nIs Adult: true"
    return " " + said.split()[-1]


NAMES = ["Grandpa Joe", "Ann", "Aunt May", "Bob", "Uncle Sam", "Cy", "Dee", "Big Al", "Eve", "Flo", "Gus", "Hal"]


def main() -> None:
    print(json.dumps(measure(), indent=1))


def section(ctx) -> list[str]:  # type: ignore[no-untyped-def]
    """bench/run.py's section: the counts, with targets (no incomplete or half-earned demo; every contradiction flagged)."""
    found = measure()
    for what, figure in found.items():
        if "contradicting" in what:
            continue
        zero = figure.split()[0] == "0"
        if "flagged" in what:
            contradicting = next(v for k, v in found.items() if "contradicting" in k).split()[0]
            ctx.target(what, figure, "= contradicting demos", figure == contradicting)
        else:
            ctx.target(what, figure, "0", zero)
    return ["| what | count |", "|---|---|", *(f"| {k} | {v} |" for k, v in found.items())]


def measure() -> dict[str, str]:
    server = FakeLMServer(respond).start()
    lm = dspex.LM("fake", base_url=server.base_url, api_key="bench", cache=None)
    out = {}
    try:
        # 1. responder: write's demos without a reply
        train = [dspex.Example(review=f"case {i}: " + ("love it" if i % 2 else "it broke"), sentiment="positive" if i % 2 else "negative").with_inputs("review")
                 for i in range(12)]  # fmt: skip

        def suits(ex, pred, trace=None):
            return pred.reply == ("Thank you!" if ex.sentiment == "positive" else "Sorry about that.")

        res = BootstrapFewShotWithRandomSearch(suits, calibrate=False).compile(Responder(lm), trainset=train)
        write = [d for c in res.candidates for d in c.program.write.demos]
        out["responder: write demos without reply (all candidates)"] = f"{sum(1 for d in write if not d.get('reply'))} of {len(write)}"

        # 2. graded metric
        people = [dspex.Example(text=f"case {i}: {n} waved", name=n).with_inputs("text") for i, n in enumerate(NAMES)]

        def credit(ex, pred, trace=None):
            return 1.0 if pred.name == ex.name else (0.5 if pred.name in ex.name else 0.0)

        res = BootstrapFewShotWithRandomSearch(credit, calibrate=False).compile(dspex.Predict(Extract, lm=lm), trainset=people)
        by_text = {ex.text: ex.name for ex in people}
        boot = [d for c in res.candidates for d in c.program.demos if d.get("augmented")]
        half = [d for d in boot if d["name"] != by_text[d["text"]]]
        out["graded metric: bootstrapped demos with partial credit (all candidates)"] = f"{len(half)} of {len(boot)}"

        # 3. a field added
        aged = []
        for i, n in enumerate(NAMES):
            row = {"text": f"case {i}: {n}, aged {6 + 4 * i} waved", "name": n}
            if i < 4:
                row["is_adult"] = 6 + 4 * i >= 18
            aged.append(dspex.Example(**row).with_inputs("text"))

        def name_ok(ex, pred, trace=None):
            return pred.name == ex.name

        res = BootstrapFewShotWithRandomSearch(name_ok, calibrate=False).compile(dspex.Predict(Person, lm=lm), trainset=aged)
        demos = [d for c in res.candidates for d in c.program.demos]
        truth = {ex.text: (6 + 4 * NAMES.index(ex.name) >= 18) for ex in aged}
        wrong = [d for d in demos if d.get("augmented") and d.get("is_adult") is not None and d["is_adult"] != truth[d["text"]]]
        out["field added: demos without is_adult (all candidates)"] = f"{sum(1 for d in demos if d.get('is_adult') is None)} of {len(demos)}"
        out["field added: bootstrapped demos contradicting the age (all candidates)"] = f"{len(wrong)} of {sum(1 for d in demos if d.get('augmented'))}"
        try:
            from pytest_dspex.optimize.review import review_program
        except ImportError:
            out["field added: contradictions flagged by the review"] = "no review"
        else:
            flags = sum(len(review_program(c.program, aged)["self"]["flags"]) for c in res.candidates)
            out["field added: contradictions flagged by the review"] = str(flags)
    finally:
        lm.close()
        server.stop()
    return out


if __name__ == "__main__":
    main()
