"""What the LM client is asked and what it answers: a chat request, the constraint its answer must
match, and the completion.

The prompt layer (``programs.adapters``) builds an ``LMRequest``; the client (``lm.client``) sends it.
Neither the request nor the constraint knows an endpoint's dialect: ``programs.constrained`` turns a
``Constraint`` into the extra body fields an endpoint accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Completion", "Constraint", "LMRequest"]


@dataclass(frozen=True, slots=True)
class Constraint:
    """What the whole completion must match: a GBNF ``grammar`` or a JSON ``schema``."""

    kind: Literal["grammar", "json"]
    grammar: str | None = None
    schema: Mapping[str, Any] | None = None
    name: str = "answer"


@dataclass(frozen=True, slots=True)
class LMRequest:
    """What an adapter asks of the LM: chat messages, stop sequences and extra body fields.

    ``extra`` (for instance a ``response_format`` JSON schema or a llama.cpp ``grammar``) is merged into
    the request body, and so into the cache key. ``constraint`` is what the answer must match, in no
    endpoint's dialect yet: ``constrained.acomplete`` turns it into ``extra`` fields the endpoint
    accepts (the client itself ignores it). ``max_tokens`` is the most the answer's fields can take
    (``constrained.answer_tokens``): the client asks for no more than that and the LM's own limit.
    """

    messages: list[dict[str, str]]
    stop: tuple[str, ...] = ()
    extra: Mapping[str, Any] | None = None
    constraint: Constraint | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """What the LM answered: the text, its tokens and cost (0 for a cached answer), and why it stopped."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: bool = False
    finish_reason: str | None = None
    #: the first answer token's alternatives (text, logprob), when the request asked for ``logprobs``
    top_logprobs: tuple[tuple[str, float], ...] | None = None
    #: the model's refusal (``message.refusal``), when it declined to answer
    refusal: str | None = None
