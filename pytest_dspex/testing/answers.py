"""What the fake endpoints answer: the faults, their bodies, and a chat completion built from a responder.

Shared by ``fake_server.FakeLMServer`` (aiohttp, in the test's process) and ``fast_server`` (the
benches' standalone endpoint), so that both send the same bytes for the same request.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BAD_SHAPE", "FAULT_NAMES", "GARBLED", "NOT_FOUND_ERROR", "Faults", "Responder",
    "chat_completion", "pick_fault", "refusal_completion",
]  # fmt: skip

Responder = Callable[[dict[str, Any]], str]


@dataclass
class Faults:
    http_500: float = 0.0
    http_429: float = 0.0
    retry_after: float = 0.05
    garbled: float = 0.0
    bad_shape: float = 0.0
    stall: float = 0.0
    stall_s: float = 5.0
    refusal: float = 0.0
    http_404: float = 0.0
    seed: int = 0


FAULT_NAMES = ("http_500", "http_429", "garbled", "bad_shape", "stall", "refusal", "http_404")
GARBLED = '{"choices": [{"mess\x00\x01garbled'  # the ``garbled`` fault's 200 body: not JSON
BAD_SHAPE = {"error": "unexpected"}  # the ``bad_shape`` fault's 200 body: JSON without ``choices``
NOT_FOUND_ERROR = {"error": {"message": "Not Found", "type": "invalid_request_error", "code": "not_found"}}


def pick_fault(faults: Faults, rng: random.Random) -> str | None:
    """The fault this request gets (one draw of ``rng``), or None: an answer."""
    r = rng.random()
    for name in FAULT_NAMES:
        p = getattr(faults, name)
        if r < p:
            return name
        r -= p
    return None


def chat_completion(body: dict[str, Any], responder: Responder, model: str) -> dict[str, Any]:
    """The answer to ``body``: ``responder``'s text cut at ``max_tokens``, with its usage (a word is a token)."""
    text, finish = _limited(responder(body), body.get("max_tokens"))
    words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": body.get("model", model),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": words, "completion_tokens": len(text.split()), "total_tokens": words + len(text.split())},
    }


def refusal_completion(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The ``refusal`` fault's answer: ``content: null`` and a ``refusal``, as OpenAI's models decline."""
    message = {"role": "assistant", "content": None, "refusal": "I'm sorry, I can't help with that."}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": body.get("model", model),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
    }


def _limited(text: str, max_tokens: Any) -> tuple[str, str]:
    """``text`` cut at ``max_tokens`` tokens (a word is a token here), as a real server cuts an answer:
    then ``finish_reason`` is ``length``."""
    if not isinstance(max_tokens, int) or max_tokens <= 0:
        return text, "stop"
    import re

    words = list(re.finditer(r"\S+", text))
    if len(words) <= max_tokens:
        return text, "stop"
    return text[: words[max_tokens - 1].end()], "length"
