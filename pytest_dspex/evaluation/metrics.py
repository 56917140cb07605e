"""Ready-made metrics. A metric is any ``(example, prediction, trace=None) -> bool | float``, sync or async.

    answer_exact = exact_match("answer")            # compares example.answer and prediction.answer
    answer_f1 = f1("answer")
"""

from __future__ import annotations

import re
import string
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..errors import MetricError

__all__ = ["contains", "exact_match", "f1", "metric_fingerprint", "normalize_text", "normalized_match", "to_score"]

Metric = Callable[..., Any]

#: the ready-made metrics: pure and quick, so evaluation runs them inline on the loop (``is_inline``)
_inline: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


def is_inline(metric: Any) -> bool:
    """Is ``metric`` one of the ready-made metrics (pure and quick: no thread needed)?"""
    try:
        return metric in _inline
    except TypeError:  # not weakly referenceable: not one of ours
        return False
_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: Any) -> str:
    """Lowercase, drop punctuation and articles, squeeze spaces (SQuAD-style)."""
    s = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _named(fn: Metric, name: str) -> Metric:
    fn.__name__ = name
    fn.__qualname__ = name
    _inline.add(fn)  # pure and quick: evaluation runs it on the loop
    return fn


def exact_match(field: str = "answer") -> Metric:
    def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return bool(example[field] == prediction[field])

    return _named(metric, f"exact_match({field})")


def normalized_match(field: str = "answer") -> Metric:
    def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return normalize_text(example[field]) == normalize_text(prediction[field])

    return _named(metric, f"normalized_match({field})")


def f1(field: str = "answer") -> Metric:
    def metric(example: Any, prediction: Any, trace: Any = None) -> float:
        gold = normalize_text(example[field]).split()
        pred = normalize_text(prediction[field]).split()
        if not gold or not pred:
            return float(gold == pred)
        common = sum((Counter(gold) & Counter(pred)).values())
        if common == 0:
            return 0.0
        p, r = common / len(pred), common / len(gold)
        return 2 * p * r / (p + r)

    return _named(metric, f"f1({field})")


def contains(field: str = "answer") -> Metric:
    def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return normalize_text(example[field]) in normalize_text(prediction[field])

    return _named(metric, f"contains({field})")


def to_score(value: Any, metric_name: str) -> float:
    """A metric's return value as a score in [0, 1]; anything else is a ``MetricError``.

    Any real number or bool-like value is a score: ``bool``, ``int``, ``float``, ``Fraction``,
    ``Decimal``, NumPy's integer, floating and bool scalars (and 0-d arrays) — what a metric built
    on NumPy or pandas returns. Its value must be in [0, 1].
    """
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    v = float(value) if type(value) is float or type(value) is int else _real(value, metric_name)
    if v != v or not 0.0 <= v <= 1.0:
        raise MetricError(f"metric {metric_name} returned {value!r}; a score must be in [0, 1]")
    return v


def _real(value: Any, metric_name: str) -> float:
    """A bool-like or real number that is not a plain ``bool``/``int``/``float``, as a float."""
    import numbers
    from decimal import Decimal

    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(value, "shape", None) == () and getattr(dtype, "kind", "") in "biuf":
        item = value.item()  # a NumPy scalar or 0-d array (np.bool_, np.int64, np.float32 …)
        return float(item)
    if isinstance(value, numbers.Real | Decimal):  # Fraction, Decimal, other registered reals
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            pass
    raise MetricError(
        f"metric {metric_name} returned {value!r} ({type(value).__name__}); return a bool or a number in [0, 1]"
    )


def metric_name(metric: Metric) -> str:
    return getattr(metric, "__name__", None) or type(metric).__name__


def metric_fingerprint(metric: Any) -> str | None:
    """A short hash of what ``metric`` computes, recorded with a golden's baseline so a later run can
    tell "the metric changed" from "the program regressed" (None: its source cannot be read).

    The hash covers the metric's source tokens without comments or blank lines (the same on every
    Python version, unlike bytecode) and the plain values its closure holds (``exact_match("team")``
    and ``exact_match("answer")`` share their source). A ``functools.partial`` is its function and
    arguments; a callable object, its class's source.
    """
    import functools
    import hashlib
    import inspect
    import io
    import textwrap
    import tokenize

    parts: list[str] = []
    target: Any = metric
    while isinstance(target, functools.partial):
        parts.append(repr((target.args, sorted(target.keywords.items()))))
        target = target.func
    target = inspect.unwrap(target) if callable(target) else target
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = type(target)
    try:
        source = textwrap.dedent(inspect.getsource(target))
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
        parts.append(" ".join(t.string for t in tokens if t.type not in skip))
    except (OSError, TypeError, tokenize.TokenError, IndentationError, SyntaxError):
        return None
    for cell in getattr(getattr(target, "__func__", target), "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, str | int | float | bool | tuple | type(None)):
            parts.append(repr(value))
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
