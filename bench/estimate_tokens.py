"""``--dspex-estimate`` against the run that follows: calls and tokens, from an empty and a half-full cache.

    python bench/estimate_tokens.py            # every case, a table on stdout
    python bench/estimate_tokens.py classifier extraction   # some cases
    python bench/run.py --only estimate        # the same, as a section of bench/RESULTS-partial.md

Each case is a user project run by pytest in a fresh process: ``--dspex-estimate`` first (no LM call),
then the real run (``--dspex-report``), whose usage the estimate is held to. From an empty cache, and
from a half-full one (the first half of the dataset run before). The fake endpoint
(``pytest_dspex.testing.fake_server``, ``labels_responder``: always right, in the layout asked) counts
a word a token, and the estimate counts its prompts the same way: there the prompt side is exact by
construction and the figure measures the answers (labels as the adapter writes them, a rationale's
length). The ``embedded`` case runs Gemma 3 270M: its tokenizer counts the prompt, the model writes
its own answers. Counts only: the figures do not depend on the machine's load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TRIAGE = '''
from typing import Literal

class Triage(dspex.Signature):
    """Route the customer's message to the team that handles it."""

    message: str = dspex.InputField()
    team: Literal["billing", "technical"] = dspex.OutputField()
'''

ORDER = '''
class Order(dspex.Signature):
    """Extract the ordered item and its quantity from the customer's message."""

    message: str = dspex.InputField()
    item: str = dspex.OutputField(desc="the product as written, lower case")
    quantity: int = dspex.OutputField()
'''

#: two predictors, the second asking with the first's answer (a multi-predictor program)
PIPELINE = '''
class Pipeline(dspex.Module):
    def __init__(self):
        super().__init__()
        self.find_item = dspex.Predict("message -> item")
        self.count = dspex.Predict("message, item -> quantity: int")

    def forward(self, message):
        item = self.find_item(message=message).item
        return dspex.Prediction(item=item, quantity=self.count(message=message, item=item).quantity)
'''

#: what both test layouts share: the program, its metric and its markers
_TEST_HEAD = '''
import pytest
import pytest_dspex as dspex
SIGNATURE
program = PROGRAM

def right(example, prediction, trace=None):
    return all(getattr(prediction, k) == v for k, v in example.labels().items())

@pytest.mark.dspex_program(program, name="NAME", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(right, threshold=0.0)
'''

DATASET_TEST = _TEST_HEAD + '''def test_NAME(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''

PER_EXAMPLE_TEST = _TEST_HEAD + '''@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_NAME(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


def triage_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    billing = ["I was charged twice for my subscription this month", "Please refund the invoice I paid by mistake",
               "Why is there an extra charge on my card?", "I need a copy of last month's invoice"]  # fmt: skip
    technical = ["The app crashes as soon as I open it", "I cannot log in since the last update",
                 "The export button does nothing on my laptop", "Sync keeps failing with a timeout error"]  # fmt: skip
    rows = []
    for i in range(start, start + n):
        pool, team = (billing, "billing") if i % 2 else (technical, "technical")
        rows.append({"message": f"{pool[(i // 2) % len(pool)]} (case {i})", "team": team})
    return rows


def rationale(example: dict[str, Any]) -> str:
    """A ChainOfThought rationale as a chat model writes one: two short sentences."""
    if example.get("team") == "billing":
        return "The customer is asking about a charge or an invoice, which is a payment matter. Payment questions go to the billing team."
    return "The customer describes something in the product that does not work as expected. Problems with the app go to the technical team."


def _orders(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (HERE / "data" / f"order_{name}.jsonl").read_text().splitlines() if line.strip()]


#: name -> (signature, program, test, inputs, outputs, train rows, dev rows, ChainOfThought, compile first)
CASES: dict[str, dict[str, Any]] = {
    "classifier": {"signature": TRIAGE, "program": "dspex.Predict(Triage)", "test": DATASET_TEST, "outputs": ["team"],
                   "train": lambda: triage_rows(12, 100), "dev": lambda: triage_rows(20)},
    "extraction": {"signature": ORDER, "program": "dspex.Predict(Order)", "test": PER_EXAMPLE_TEST, "outputs": ["item", "quantity"],
                   "train": lambda: _orders("train"), "dev": lambda: _orders("dev")},
    "cot": {"signature": TRIAGE, "program": "dspex.ChainOfThought(Triage)", "test": DATASET_TEST, "outputs": ["team"],
            "train": lambda: triage_rows(12, 100), "dev": lambda: triage_rows(20), "reasoning": True},
    "pipeline": {"signature": PIPELINE, "program": "Pipeline()", "test": PER_EXAMPLE_TEST, "outputs": ["item", "quantity"],
                 "train": lambda: _orders("train"), "dev": lambda: _orders("dev")},
    "compiled": {"signature": TRIAGE, "program": "dspex.Predict(Triage)", "test": DATASET_TEST, "outputs": ["team"],
                 "train": lambda: triage_rows(12, 100), "dev": lambda: triage_rows(20), "compile": True},
    "compiled-extraction": {"signature": ORDER, "program": "dspex.Predict(Order)", "test": PER_EXAMPLE_TEST,
                            "outputs": ["item", "quantity"], "train": lambda: _orders("train"), "dev": lambda: _orders("dev"),
                            "compile": True},
    "compiled-cot": {"signature": TRIAGE, "program": "dspex.ChainOfThought(Triage)", "test": DATASET_TEST, "outputs": ["team"],
                     "train": lambda: triage_rows(12, 100), "dev": lambda: triage_rows(20), "reasoning": True, "compile": True},
    "embedded": {"signature": TRIAGE, "program": "dspex.Predict(Triage)", "test": DATASET_TEST, "outputs": ["team"],
                 "train": lambda: triage_rows(12, 100), "dev": lambda: triage_rows(10), "embedded": True},
    "embedded-cot": {"signature": TRIAGE, "program": "dspex.ChainOfThought(Triage)", "test": DATASET_TEST, "outputs": ["team"],
                     "train": lambda: triage_rows(12, 100), "dev": lambda: triage_rows(10), "embedded": True, "reasoning": True},
}  # fmt: skip


def _write(project: Path, case: dict[str, Any], name: str, dev: list[dict[str, Any]]) -> None:
    (project / "data").mkdir(parents=True, exist_ok=True)
    (project / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in case["train"]()))
    (project / "data" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    test = case["test"].replace("SIGNATURE", case["signature"]).replace("PROGRAM", case["program"]).replace("NAME", name.replace("-", "_"))
    (project / f"test_{name.replace('-', '_')}.py").write_text(test)


def _pytest(project: Path, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OPENAI_API_KEY": "k"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    if done.returncode not in (0, 1):
        raise RuntimeError(f"pytest {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def parse_estimate(out: str) -> dict[str, int]:
    """The estimate's figures from its output."""
    total = re.search(r"a run would make (\d+) LM calls, about ([\d,]+) tokens", out)
    split = re.search(r"([\d,]+) prompt \+ ([\d,]+) completion tokens, at most ([\d,]+)", out)
    if total is None:
        raise RuntimeError(f"no estimate in the output:\n{out[-3000:]}")
    figures = {"calls": int(total.group(1)), "tokens": int(total.group(2).replace(",", ""))}
    if split is not None:
        figures.update(prompt=int(split.group(1).replace(",", "")), completion=int(split.group(2).replace(",", "")),
                       at_most=int(split.group(3).replace(",", "")))  # fmt: skip
    else:  # nothing to call
        figures.update(prompt=0, completion=0, at_most=0)
    return figures


def spent(report: Path) -> dict[str, int]:
    """What the real run spent, from its JSON report."""
    rows = json.loads(report.read_text())["programs"]
    u = [r["usage"] for r in rows]
    calls = sum(int(x["calls"]) - int(x["cache_hits"]) for x in u)
    prompt, completion = sum(int(x["prompt_tokens"]) for x in u), sum(int(x["completion_tokens"]) for x in u)
    return {"calls": calls, "prompt": prompt, "completion": completion, "tokens": prompt + completion}


def measure(name: str, cache: str, base: Path, url: str | None) -> dict[str, Any]:
    """One case from an ``empty`` or a ``half`` cache: the estimate's figures and the run's."""
    case = CASES[name]
    project = base / f"{name}-{cache}"
    shutil.rmtree(project, ignore_errors=True)
    dev = case["dev"]()
    endpoint = [] if url is None else [f"--dspex-base-url={url}", "--dspex-model=fake-model"]
    args = [*endpoint, "--dspex-cache-dir=cache", "--dspex-missing-golden=zero-shot"]
    if case.get("compile"):  # a golden with demos, compiled with a cache of its own
        _write(project, case, name, dev)
        _pytest(project, [*endpoint, "--dspex-cache-dir=compile-cache", "--dspex-compile", "--dspex-optimizer=bootstrap"])
    if cache == "half":
        _write(project, case, name, dev[: len(dev) // 2])
        _pytest(project, args)
    _write(project, case, name, dev)
    estimate = parse_estimate(_pytest(project, [*args, "--dspex-estimate"]))
    _pytest(project, [*args, "--dspex-report=report.json"])
    return {"case": name, "cache": cache, "estimate": estimate, "spent": spent(project / "report.json")}


def _off(est: int, real: int) -> str:
    return f"{(est - real) / real:+.0%}" if real else ("0%" if est == 0 else "n/a")


def rows(results: list[dict[str, Any]]) -> list[str]:
    out = ["| case | cache | calls est/made | prompt est/spent | completion est/spent | tokens est/spent (off) | at most |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        e, s = r["estimate"], r["spent"]
        out.append(f"| {r['case']} | {r['cache']} | {e['calls']}/{s['calls']} | {e['prompt']:,}/{s['prompt']:,} ({_off(e['prompt'], s['prompt'])}) "
                   f"| {e['completion']:,}/{s['completion']:,} ({_off(e['completion'], s['completion'])}) "
                   f"| {e['tokens']:,}/{s['tokens']:,} ({_off(e['tokens'], s['tokens'])}) | {e['at_most']:,} |")  # fmt: skip
    return out


def run(names: list[str]) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from pytest_dspex.testing.fake_server import FakeLMServer, labels_responder

    base = Path(tempfile.mkdtemp(prefix="dspex-bench-estimate-"))
    results = []
    try:
        for name in names:
            case = CASES[name]
            examples = case["train"]() + case["dev"]()
            responder = labels_responder(examples, ["message"], case["outputs"], reasoning=rationale if case.get("reasoning") else None)
            for cache in ("empty", "half"):
                if case.get("embedded"):
                    results.append(measure(name, cache, base, None))
                    continue
                with FakeLMServer(responder) as server:
                    results.append(measure(name, cache, base, server.base_url))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


def section(ctx: Any) -> list[str]:
    """bench/run.py's ``estimate`` section."""
    results = run(list(CASES))
    for r in results:
        e, s = r["estimate"], r["spent"]
        off = abs(e["tokens"] - s["tokens"]) / s["tokens"] if s["tokens"] else 0.0
        ctx.target(f"--dspex-estimate tokens, {r['case']}, {r['cache']} cache", f"{e['tokens']:,} est. / {s['tokens']:,} spent",
                   "within ±10%", off <= 0.10 and e["calls"] == s["calls"])  # fmt: skip
    return [*rows(results), "",
            "Counts, not times. Prompt tokens on the fake endpoint are counted as it counts them (a word a token); "
            "the embedded case counts with Gemma's tokenizer. `at most`: each answer at its token limit."]  # fmt: skip


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(CASES)
    print("\n".join(rows(run(chosen))))
