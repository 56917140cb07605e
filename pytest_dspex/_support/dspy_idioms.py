"""DSPy spellings, answered: keyword arguments a DSPy 3.4.1 user writes, and what to write here.

Aliases that mean the same thing are accepted where they are read (``LM(api_base=...)``,
``Evaluate(num_threads=...)``); everything else unknown is a ``TypeError`` that names the
pytest-dspex equivalent, so a typo or a DSPy-only option never goes silently into a request body.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["HINTS", "dspy_kind", "dspy_program_message", "reject_unknown"]

_USAGE = "usage is always counted: EvaluationResult has calls, tokens and cost, and `with dspex.track_usage() as usage:` counts any block"
_ERRORS = (
    "never stops early: every example ends scored or with its error, errors score 0 and are listed "
    "(result.errors_by_kind); the gate's error budget is --dspex-max-error-rate"
)

#: per callable: DSPy keyword -> what to use here
HINTS: dict[str, dict[str, str]] = {
    "LM": {
        "model_type": "not needed: every model is spoken to through /v1/chat/completions",
        "callbacks": "subscribe to pytest_dspex.observe.events",
        "rollout_id": "pass rollout_id per call (Predict(..., rollout_id=...)); --dspex-repeats gives each repeat its own",
        "provider": "not needed: give base_url (and api_key) of any OpenAI-compatible endpoint",
        "num_threads": "LM(concurrency=...)",
        "finetuning_model": "not supported",
        "train_kwargs": "not supported",
    },
    "Predict": {
        "n": (
            "one completion per call here: for several draws gate with --dspex-repeats N (each repeat its own "
            "rollout id), or call the program N times with Predict(..., rollout_id=i, temperature=1.0)"
        ),
        "callbacks": "subscribe to pytest_dspex.observe.events",
        "rationale_field": "ChainOfThought(..., rationale_desc='...') (the field is always `reasoning`)",
        "rationale_field_type": "ChainOfThought's reasoning is text",
        "num_retries": "LM(retries=...)",
        "cache": "LM(cache_mode=...) or --dspex-cache",
    },
    "Evaluate": {
        "max_errors": _ERRORS,
        "display_table": "print(result.summary()); per-example rows are result.records",
        "return_all_scores": "result.records (one ExampleRecord per example, with its score)",
        "return_outputs": "result.records (each with its prediction)",
        "provide_traceback": "each failed example's error is in result.records[i].error",
        "failure_score": "an example that fails scores 0 and is listed with its error",
        "save_as_csv": "pytest --dspex-report=PATH (JSON) or --dspex-html",
        "save_as_json": "pytest --dspex-report=PATH",
        "callback_metadata": "subscribe to pytest_dspex.observe.events",
    },
    "configure": {
        "track_usage": _USAGE,
        "max_errors": _ERRORS,
        "num_threads": "Evaluate(concurrency=...) / LM(concurrency=...) / --dspex-concurrency",
        "async_max_workers": "LM(concurrency=...)",
        "callbacks": "subscribe to pytest_dspex.observe.events",
        "cache": "LM(cache_mode=...) or --dspex-cache",
        "experimental": "nothing to switch on",
        "rm": "retrieval is your program's own code",
        "trace": "with dspex.trace_scope() as steps:",
        "bypass_assert": "not needed",
        "provide_traceback": "each failed example's error is in result.records[i].error",
    },
    "BootstrapFewShot": {
        "teacher_settings": "BootstrapFewShot(teacher_lm=LM(...)) or --dspex-teacher-model",
        "max_errors": _ERRORS,
    },
}


def reject_unknown(where: str, unknown: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise a ``TypeError`` for ``unknown`` keyword arguments of ``where``, each with its equivalent."""
    if not unknown:
        return
    import difflib

    hints = HINTS.get(where, {})
    known = sorted(known)
    parts = []
    for name in unknown:
        hint = hints.get(name)
        close = difflib.get_close_matches(name, known, n=1)
        if hint:
            parts.append(f"{name!r} (pytest-dspex: {hint})")
        elif close:
            parts.append(f"{name!r} (did you mean {close[0]!r}?)")
        else:
            parts.append(repr(name))
    plural = "s" if len(unknown) > 1 else ""
    raise TypeError(
        f"{where}() got unexpected keyword argument{plural} {', '.join(parts)}; it takes {', '.join(known)}"
    )


def dspy_kind(obj: Any) -> str | None:
    """``"dspy.Predict"`` for an instance of a DSPy class (or of a subclass of one), else None."""
    for cls in type(obj).__mro__:
        module = getattr(cls, "__module__", "") or ""
        if module == "dspy" or module.startswith("dspy."):
            return f"dspy.{type(obj).__name__}" if cls is type(obj) else f"{type(obj).__name__} (a dspy.{cls.__name__})"
    return None


def dspy_program_message(kind: str) -> str:
    """What a ``dspex_program`` marker given a DSPy module says (one line, no repr of the module)."""
    return (
        f"program is a DSPy module, {kind}; pytest-dspex runs its own programs: build it with "
        "`import pytest_dspex as dspex` — dspex.Predict / dspex.ChainOfThought / dspex.Module, the signature "
        "a dspex.Signature with dspex.InputField/OutputField (the same names as DSPy's) — and bring a DSPy save "
        "over with `python -m pytest_dspex import SAVED.json --test <this test>`"
    )
