"""Hooks other plugins and conftests can implement to observe pytest-dspex.

``pytest_dspex_lm_call`` and ``pytest_dspex_example_result`` are called from pytest-dspex's
background event-loop thread: keep implementations quick and thread-safe.
"""

from __future__ import annotations

from typing import Any


def pytest_dspex_lm_call(event: Any) -> None:
    """Called after every LM call with an ``events.LMCallEvent`` (model, latency, tokens, cache hit, ...)."""


def pytest_dspex_example_result(event: Any) -> None:
    """Called after every evaluated example with an ``events.ExampleEvent``."""


def pytest_dspex_compile_result(program: str, result: Any, outcome: str, path: Any) -> None:
    """Called after ``--dspex-compile`` optimized ``program``: the ``CompileResult`` and what happened
    to its golden file (``created``, ``updated`` or ``kept``)."""


def pytest_dspex_gate(program: str, verdict: Any, result: Any) -> None:
    """Called with every gate ``Verdict`` and its ``EvaluationResult``: whole-dataset ones in the
    test's process, per-example ones on the controller (built from the items' records).
    ``verdict.comparison`` is the paired comparison with the golden's per-example outcomes (a
    ``comparison.Comparison``: delta, CI, p, regressions, fixes), or None without one. Not called in a
    shard job (``--dspex-shard``): its gate is deferred to ``python -m pytest_dspex combine``."""
