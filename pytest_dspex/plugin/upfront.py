"""The budget said up front: with ``--dspex-max-calls``/``--dspex-max-cost`` set, a run whose estimate
exceeds the budget says so once, after collection and before any LM call.

The estimate is ``--dspex-estimate``'s: each selected dspex test's program runs on its examples
(a ``dspex_dataset`` marker's, or the literal path of the test's ``dspex_evaluate("data/dev.jsonl")`` call)
against the response cache only (``LM(estimate=True)``: a request the cache cannot answer is
counted, never sent), a compiled program counts its compile plan's calls before the cache; a
program with a predictor holding an LM of its own is left out (that LM would be called), and so is a
plain function (it would be run, and its calls made through the session's endpoint for real). Only
done when a budget is set (and not for the embedded model, which costs nothing). Under xdist the
controller does not collect: worker ``gw0`` works it out and leaves the line for the controller
(``xdist.write_budget_notice``), which prints it as that worker's collection arrives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .fixtures import test_key
from .markers import dataset_path, metric_spec, program_spec
from .session import DspexSession

__all__ = ["budget_notice"]


def budget_notice(session: pytest.Session, dspex: DspexSession) -> str | None:
    """The line to say, or None (no budget, within it, or nothing to estimate)."""
    o = dspex.options
    if o.estimate or o.local or (o.max_calls is None and o.max_cost is None) or session.testsfailed:
        return None
    tests: dict[str, tuple[Any, list[int] | None]] = {}  # test key → (a node, the selected example indices)
    for item in session.items:
        if item.get_closest_marker("dspex_program") is None:
            continue
        key = test_key(item)
        if key in tests:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("dspex_example"), int):
            tests[key] = (item, sorted(dspex.selected.get(key, ())))
        elif "dspex_evaluate" in getattr(item, "fixturenames", ()):
            tests[key] = (item, None)
    if not tests:
        return None
    try:
        calls, cost = _estimate(dspex, tests)
    except (Exception, pytest.fail.Exception):  # no endpoint configured, …: the tests say what is wrong
        return None
    over = []
    if o.max_calls is not None and calls > o.max_calls:
        over.append(f"--dspex-max-calls={o.max_calls}")
    if o.max_cost is not None and dspex.lms.priced() and cost > o.max_cost:
        over.append(f"--dspex-max-cost={o.max_cost:g} (about ${cost:.4f} estimated)")
    if not over:
        return None
    return (f"dspex: over the budget: this run is estimated to make about {calls} LM calls (from the response cache, "
            f"no LM call made) and the budget is {' and '.join(over)}; the examples beyond it will not be answered: "
            "infrastructure errors of kind 'budget' in the verdict (LM errors), not failures of the program")  # fmt: skip


def _estimate(dspex: DspexSession, tests: dict[str, tuple[Any, list[int] | None]]) -> tuple[int, float]:
    from ..evaluation.evaluate import Evaluate
    from ..lm.usage import track_usage
    from ..programs import settings
    from ..programs.function import FunctionProgram

    o = dspex.options
    lm = dspex.lms.lm.copy(estimate=True, budget=None, limits=None, shared_limits=None)
    calls, cost = 0, 0.0
    try:
        with track_usage() as usage, settings.context(lm=lm):
            for node, indices in tests.values():
                base = Path(node.path).parent
                try:
                    spec = program_spec(node, base)
                    marked = dataset_path(node, base) or _evaluated_path(node, base)
                    if spec is None or marked is None:
                        continue
                    if o.compiles(spec.name):
                        plan = dspex.compile_size(spec, metric_spec(node), marked[0])
                        calls += plan["calls"] if plan else 0
                        continue
                    if isinstance(spec.program, FunctionProgram):
                        continue  # a plain function's calls are known only by running it: not estimated up front
                    path = dspex.golden_path(Path(node.path), spec.name)
                    program = dspex._load(spec, path).program
                    if any(getattr(p, "lm", None) is not None for _, p in program.named_predictors()):
                        continue  # an LM of its own would be called: not estimated up front
                    examples = dspex.dataset(marked[0], spec.input_keys, marked[1], spec.program).examples
                except (pytest.fail.Exception, Exception):  # the test itself says what is wrong
                    continue
                if indices is not None:
                    examples = [examples[i] for i in indices if i < len(examples)]
                elif o.shard is not None:
                    from ..evaluation.datasets import example_key

                    examples = [examples[i] for i in o.shard.select([example_key(ex) for ex in examples])]
                Evaluate(examples, _no_score, concurrency=o.concurrency, repeats=o.repeats)(program)
        calls += usage.estimated
        cost += usage.cost
    finally:
        lm.close()
    return calls, cost


def _evaluated_path(node: Any, base: Path) -> tuple[Path, int | None] | None:
    """The dataset a ``dspex_evaluate("data/dev.jsonl", limit=N)`` test evaluates, read from the test
    function's source (its first such call with a literal path; the path is the call's, not a marker's),
    or None (no such call, a path computed at run time: that test is not estimated up front)."""
    import ast
    import inspect
    import textwrap

    function = getattr(node, "function", None)
    if function is None or "dspex_evaluate" not in getattr(node, "fixturenames", ()):
        return None
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "dspex_evaluate"):
            continue
        first = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "dataset"), None)
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            return None
        limit = next((k.value for k in call.keywords if k.arg == "limit"), None)
        n = limit.value if isinstance(limit, ast.Constant) and isinstance(limit.value, int) else None
        path = Path(first.value)
        return (path if path.is_absolute() else base / path), n
    return None


def _no_score(example: Any, prediction: Any, trace: Any = None) -> float:
    return 0.0
