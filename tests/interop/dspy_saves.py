"""Real DSPy 3.4.1 saves, made against the repo's fake server (no network), and their pytest-dspex twins.

``dspy_saves(folder)`` compiles three DSPy programs (a Predict, a ChainOfThought, a Module of both)
with ``BootstrapFewShot`` at its defaults and with ``LabeledFewShot(k=8)``, and rewrites the
bootstrapped ones' instructions the way MIPROv2 and COPRO do (new instructions; COPRO also gives
the last output field a new prefix); each is saved with ``program.save``. The training examples
carry extra columns (``id``, ``source``), as real datasets do, so the labeled demos carry them too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: no fetch of its price list

import dspy

import pytest_dspex as dspex
from pytest_dspex.testing.fake_server import FakeLMServer, last_user_message

OPTIMIZED = "OPTIMIZED: reply with digits only."
INSTRUCTIONS = "Answer the arithmetic question."


def sum_responder(body: dict[str, Any]) -> str:
    """Adds the first two numbers of the question; answers in DSPy's chat layout, each field asked for."""
    user = last_user_message(body)
    asked = user.split("Respond with")
    question = asked[0].rsplit("[[ ## question ## ]]", 1)[-1]
    nums = [int(n) for n in re.findall(r"\d+", question)][:2] or [0, 0]
    answer = str(sum(nums))
    fields = [f for f in re.findall(r"\[\[ ## (\w+) ## \]\]", asked[-1]) if f != "completed"] or ["answer"]
    parts = [f"[[ ## {f} ## ]]\n" + (f"{nums[0]} plus {nums[-1]} is {answer}." if f == "reasoning" else answer) for f in fields]
    return "\n\n".join(parts) + "\n\n[[ ## completed ## ]]"


def trainset() -> list[Any]:
    return [
        dspy.Example(id=f"ex-{i}", question=f"What is {i} + {i + 3}?", answer=str(2 * i + 3), source="generated").with_inputs(
            "question"
        )
        for i in range(30)
    ]


class QA(dspy.Signature):
    """Answer the arithmetic question."""

    question: str = dspy.InputField(desc="a sum to work out")
    answer: str = dspy.OutputField(desc="digits only")


class Pipe(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict(QA)
        self.final = dspy.ChainOfThought(QA)

    def forward(self, question: str) -> Any:
        self.draft(question=question)
        return self.final(question=question)


class OurQA(dspex.Signature):
    """Answer the arithmetic question."""

    question: str = dspex.InputField(desc="a sum to work out")
    answer: str = dspex.OutputField(desc="digits only")


class OurPipe(dspex.Module):
    def __init__(self) -> None:
        self.draft = dspex.Predict(OurQA)
        self.final = dspex.ChainOfThought(OurQA)

    def forward(self, question: str) -> Any:
        self.draft(question=question)
        return self.final(question=question)


def dspy_programs() -> dict[str, Any]:
    return {"predict": dspy.Predict(QA), "cot": dspy.ChainOfThought(QA), "module": Pipe()}


def make_dspex_programs() -> dict[str, dspex.Module]:
    return {"predict": dspex.Predict(OurQA), "cot": dspex.ChainOfThought(OurQA), "module": OurPipe()}


def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


def dspy_saves(folder: Path) -> dict[str, Path]:
    """``{"bfs_predict": path, "lfs_cot": path, "opt_module": path, ...}``: DSPy's own saves."""
    out: dict[str, Path] = {}
    train = trainset()
    with FakeLMServer(sum_responder) as server:
        lm = dspy.LM("openai/fake", api_base=server.base_url, api_key="test", cache=False)
        with dspy.context(lm=lm):
            for kind, program in dspy_programs().items():
                compiled = dspy.BootstrapFewShot(metric=metric).compile(program, trainset=train)
                out[f"bfs_{kind}"] = folder / f"bfs_{kind}.json"
                compiled.save(str(out[f"bfs_{kind}"]))
                out[f"lfs_{kind}"] = folder / f"lfs_{kind}.json"
                dspy.LabeledFewShot(k=8).compile(program, trainset=train).save(str(out[f"lfs_{kind}"]))
                for _, predictor in compiled.named_predictors():
                    sig = predictor.signature.with_instructions(OPTIMIZED)
                    predictor.signature = sig.with_updated_fields(list(sig.output_fields)[-1], prefix="Final Answer:")
                out[f"opt_{kind}"] = folder / f"opt_{kind}.json"
                compiled.save(str(out[f"opt_{kind}"]))
    return out
