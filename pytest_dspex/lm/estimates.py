"""What ``--dspex-estimate`` reckons a call the response cache cannot answer would take, in tokens.

The prompt is the request's own messages (the adapter formatted them, demos included, as a run would
send them), counted by the model's rule (``counting``):

* the embedded model (``gemma-3-270m``): its own tokenizer on the prompt its server makes of the
  messages, when llama-cpp-python and the model are installed (the vocabulary only is read);
* ``fake-model``, the name ``pytest_dspex.testing.FakeLMServer`` answers as: a word a token, as that
  server counts;
* any other model: a prompt at about 4 characters a token and 4 tokens a message (OpenAI's
  tokenizers on English text), an answer by its words, numbers and punctuation runs (short
  structured text: markers, JSON, a label, where characters mislead). Measured against Gemma's
  262k-token vocabulary on the bench's prompts (classifier and extraction, compact/chat/JSON layouts):
  prompts within 4%, answers within 19% (digits: Gemma has a token per digit) where 4 characters a
  token was 8-100% off a short answer.

The answer is the one the example's labels make: the predictor formats the example's output values
as its adapter formats an answer (field markers included, ``expecting``) and the LM counts that (a call
no predictor made — a plain function's, through the loopback endpoint — the labels' values: one as its
text, several as a JSON object; ``from_labels``); an
output the example has no value for counts ``FIELD_TOKENS``, and a ChainOfThought's ``reasoning`` as
long as the rationales in the program's demos (a compiled program's, bootstrapped from the model's
own answers), else the model's measured length (the embedded model's), else ``REASONING_TOKENS``. Never the request's ``max_tokens``: that is the upper bound,
said beside the estimate.

Both are corrected by the cache's own answers as the estimate meets them (``Reckoner``): the prompt
by the ratio of the tokens the endpoint counted to the rule's count, the answer by how much longer
the cached answers were than their labels, per prompt layout (a signature's system message), so a
ChainOfThought's rationale is the length this program's cached rationales had.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CacheMissError

__all__ = ["EstimatedCall", "Expected", "Reckoner", "count", "counting", "current_expected", "current_labels", "expecting", "labelled"]

#: tokens of a ChainOfThought rationale when neither the cache nor the demos hold one of this program's:
#: a two-sentence rationale ("The customer asks about a charge, a payment matter. Payment questions go
#: to billing." is ~25); Gemma 3 270M writes ~12 on the bench's triage, hosted chat models often more
REASONING_TOKENS = 32
#: a model whose rationales were measured: the embedded Gemma 3 270M's are ~12 tokens (its adapter stops
#: a field at the line's end; ``bench/estimate_tokens.py embedded-cot``, from a half-full cache)
_MODEL_REASONING = {"gemma-3-270m": 12}
#: tokens of an output field the example has no value for (not a rationale)
FIELD_TOKENS = 12
#: tokens of an answer when nothing says what it holds (a program whose calls the labels do not describe)
ANSWER_TOKENS = 24

_CHARS_PER_TOKEN = 4.0
#: a short answer's tokens: its words, numbers (up to 3 digits) and punctuation runs, as a BPE
#: tokenizer splits text before merging (GPT-2's rule; a common word is then one token)
_PIECES = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+")
_PER_MESSAGE = 4  # role and separators (OpenAI: 3 a message, 3 to prime the reply)
_LOCAL_MODEL = "gemma-3-270m"  # lm.local.embedded.LOCAL_MODEL_NAME
_FAKE_MODEL = "fake-model"  # testing.fake_server's default model name


class EstimatedCall(CacheMissError):
    """A call an estimate counted instead of making: the predictor that asked goes on with the answer
    the example's labels make (``Predict``), so a program's later calls are counted too."""


@dataclass(frozen=True, slots=True)
class Expected:
    """The answer a call should get, as its adapter writes it: ``text`` holds the fields the example
    has values for; ``reasoning`` (a rationale) and ``unknown`` (other fields) are those it has none for."""

    text: str
    reasoning: bool = False
    unknown: int = 0
    #: rationales the program's demos hold (a compiled ChainOfThought's): a rationale's length is theirs
    rationales: tuple[str, ...] = ()


_labels: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("dspex_estimate_labels", default=None)
_expected: contextvars.ContextVar[Expected | None] = contextvars.ContextVar("dspex_estimate_expected", default=None)


@contextlib.contextmanager
def labelled(labels: Mapping[str, Any]) -> Iterator[None]:
    """Run a program on an example whose output values are ``labels`` (set by the evaluation)."""
    token = _labels.set(labels)
    try:
        yield
    finally:
        _labels.reset(token)


def current_labels() -> Mapping[str, Any] | None:
    return _labels.get()


@contextlib.contextmanager
def expecting(expected: Expected) -> Iterator[None]:
    """An LM call made inside expects this answer (set by a predictor in an estimate)."""
    token = _expected.set(expected)
    try:
        yield
    finally:
        _expected.reset(token)


def current_expected() -> Expected | None:
    """The answer a call should get: the predictor's (``expecting``), else — a call no predictor made, e.g.
    a plain function's through the loopback endpoint — the example's labels as an answer (``from_labels``)."""
    expected = _expected.get()
    if expected is None and (labels := _labels.get()):
        return from_labels(labels)
    return expected


def from_labels(labels: Mapping[str, Any]) -> Expected | None:
    """The answer a call made by code that is not a predictor should get: one output field's value as its
    text (a function returning a string: ``outputs=["team"]``), several as a JSON object of them."""
    values = {k: v for k, v in labels.items() if v is not None}
    if not values:
        return None
    if len(values) == 1:
        (value,) = values.values()
        return Expected(text=value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return Expected(text=json.dumps(values, ensure_ascii=False, default=str))


def counting(model: str) -> str:
    """How ``count`` counts ``model``'s tokens, in words for the estimate's output."""
    if model == _LOCAL_MODEL:
        return "the embedded model's tokenizer" if _gemma() is not None else "~4 characters a token"
    if model == _FAKE_MODEL:
        return "a word a token (the fake server's count)"
    return "~4 characters a token"


def count(model: str, messages: list[dict[str, Any]] | None = None, answer: str | None = None) -> int:
    """Tokens of a prompt (``messages``) or of an ``answer``, by ``model``'s rule (module docstring)."""
    if model == _FAKE_MODEL:
        if messages is not None:
            return sum(len(str(m.get("content", "")).split()) for m in messages)
        return len((answer or "").split())
    vocab = _gemma() if model == _LOCAL_MODEL else None
    if vocab is not None:
        if messages is not None:
            return _gemma_prompt(vocab, messages)
        return len(vocab.tokenize((answer or "").encode(), add_bos=False, special=False))
    if messages is not None:
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        return round(chars / _CHARS_PER_TOKEN) + _PER_MESSAGE * len(messages) + 3
    return len(_PIECES.findall(answer or ""))


def _gemma_prompt(vocab: Any, messages: list[dict[str, Any]]) -> int:
    """The embedded server's prompt: the messages' contents joined by blank lines, after a BOS token
    (its ``dspex-plain`` chat format: the base model continues the text, no turn markers)."""
    text = "\n\n".join(c for c in (str(m.get("content") or "") for m in messages) if c)
    return len(vocab.tokenize(text.encode(), add_bos=True, special=False))


@functools.lru_cache(maxsize=1)
def _gemma() -> Any:
    """The embedded model's vocabulary (llama.cpp, ``vocab_only``), or None when it is not installed."""
    try:
        import llama_cpp

        from .local.embedded import model_path

        return llama_cpp.Llama(model_path=str(model_path()), vocab_only=True, verbose=False)
    except Exception:  # not installed, not built: the character rule
        return None


class Reckoner:
    """One estimate's reckoning: the rule's counts, corrected by the cached answers it has met."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.rule_prompt = self.real_prompt = 0  # cached answers' prompts: the rule's count, the endpoint's
        self.answers = self.answer_tokens = 0  # cached answers, and their tokens
        self.excess: dict[str, list[int]] = {}  # a prompt layout -> [answers, tokens beyond the expected]
        self.carry = [0.0, 0.0]  # the fractions of a token the last calls' prompt and answer left over

    def learn(self, body: Mapping[str, Any], data: Mapping[str, Any], expected: Expected | None) -> None:
        usage = data.get("usage") or {}
        prompt, answer = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        if prompt:
            self.rule_prompt += count(self.model, list(body.get("messages") or ()))
            self.real_prompt += prompt
        if answer:
            self.answers += 1
            self.answer_tokens += answer
            if expected is not None:
                seen = self.excess.setdefault(_layout(body), [0, 0])
                seen[0] += 1
                seen[1] += answer - count(self.model, answer=expected.text)

    def reckon(self, body: Mapping[str, Any], expected: Expected | None) -> tuple[int, int]:
        """(prompt tokens, completion tokens) a call with this body would take. The fractions carry over
        to the next call, so the estimate's totals keep them (an answer of 1.4 tokens on average)."""
        prompt: float = count(self.model, list(body.get("messages") or ()))
        if self.rule_prompt and self.real_prompt:
            prompt *= self.real_prompt / self.rule_prompt
        answer: float
        if expected is None:
            answer = self.answer_tokens / self.answers if self.answers else ANSWER_TOKENS
        else:
            answer = count(self.model, answer=expected.text)
            seen = self.excess.get(_layout(body))
            if seen is not None:
                answer += seen[1] / seen[0]  # this layout's cached answers: their rationale, their habits
            else:
                answer += self._rationale(expected) + FIELD_TOKENS * expected.unknown
        return self._whole(0, prompt), self._whole(1, max(1.0, answer))

    def _whole(self, which: int, value: float) -> int:
        value += self.carry[which]
        whole = max(0, round(value))
        self.carry[which] = value - whole
        return whole


    def _rationale(self, expected: Expected) -> int:
        """A rationale's tokens: as long as the demos' (the model's own, bootstrapped), else the constant."""
        if not expected.reasoning:
            return 0
        if expected.rationales:
            return round(sum(count(self.model, answer=r) for r in expected.rationales) / len(expected.rationales))
        return _MODEL_REASONING.get(self.model, REASONING_TOKENS)


def _layout(body: Mapping[str, Any]) -> str:
    """A prompt's layout: its first message (the signature's system message), hashed."""
    messages = body.get("messages") or ()
    first = str(messages[0].get("content") or "") if messages else ""
    return hashlib.blake2b(first.encode("utf-8", "backslashreplace"), digest_size=8).hexdigest()
