"""The three markers, validated at collection with errors that name the test and the argument.

    @pytest.mark.dspex_program(program, name="triage", trainset="data/train.jsonl", valset=None, input_keys=None,
                               select=None, optimizer=None)  # select="in-sample": choose on the gate's own dataset
    @pytest.mark.dspex_program(function, outputs=["team"])  # a plain function (programs/function)
    @pytest.mark.dspex_metric(metric, threshold=0.8, tolerance=None, metric_threshold=None)
    @pytest.mark.dspex_dataset("data/dev.jsonl", limit=None)
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["MARKERS", "MetricSpec", "ProgramSpec", "dataset_path", "metric_spec", "missing_file", "program_spec"]

MARKERS = [
    "dspex_program(program, name=None, trainset=None, valset=None, input_keys=None, select=None, outputs=None, "
    "optimizer=None): the LM program under test, or a plain function (outputs= names its output fields; "
    "select='in-sample' chooses among compile candidates on the gate's own dataset; optimizer= names the optimizer "
    "--dspex-compile runs, as --dspex-optimizer)",
    "dspex_metric(metric, threshold=None, tolerance=None, metric_threshold=None, repeats=None, repeat_reduction=None): "
    "how predictions are scored and the gate; metric_threshold: the score a bootstrapped run needs to become demos "
    "(default full credit); repeats / repeat_reduction: this test's --dspex-repeats / --dspex-repeat-reduction",
    "dspex_dataset(path, limit=None): one test item per example of this dataset (per-example mode)",
]


@dataclass(frozen=True)
class ProgramSpec:
    program: Any
    name: str
    trainset: Path | None
    valset: Path | None
    input_keys: tuple[str, ...]
    select: str | None = None  # "in-sample" / "held-out" (None: the --dspex-select option decides)
    optimizer: str | None = None  # a name in optimize.registry (None: the --dspex-optimizer option decides)


@dataclass(frozen=True)
class MetricSpec:
    metric: Callable[..., Any]
    threshold: float | None
    tolerance: float | None
    #: the metric value a bootstrapped run needs for its trace to become demos (None: full credit)
    metric_threshold: float | None = None
    #: this test's ``--dspex-repeats`` / ``--dspex-repeat-reduction`` (None: the options decide)
    repeats: int | None = None
    repeat_reduction: str | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.metric, "__name__", None) or type(self.metric).__name__)


def _where(node: Any) -> str:
    return str(getattr(node, "nodeid", None) or getattr(node, "name", "?"))


def _bad(node: Any, marker: str, message: str) -> None:
    pytest.fail(f"{_where(node)}: @pytest.mark.{marker}: {message}", pytrace=False)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _default_name(program: Any) -> str:
    from ..programs.function import FunctionProgram
    from ..programs.modules import ChainOfThought, Predict

    if isinstance(program, FunctionProgram):
        return program.name

    if isinstance(program, Predict | ChainOfThought):
        sig = program.signature
        return _snake(sig.__name__) if sig.__name__ != "StringSignature" else "predict"
    return _snake(type(program).__name__)


def _input_keys(program: Any) -> tuple[str, ...]:
    from ..programs.function import FunctionProgram
    from ..programs.modules import ChainOfThought, Predict

    if isinstance(program, FunctionProgram):
        return program.input_keys

    if isinstance(program, Predict | ChainOfThought):
        return tuple(program.signature.input_fields())
    for meth in ("aforward", "forward"):
        fn = getattr(type(program), meth, None)
        if fn is not None and fn.__qualname__.split(".")[0] != "Module":
            params = [
                p.name
                for p in inspect.signature(fn).parameters.values()
                if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            return tuple(params)
    return ()


def _shown(node: Any, path: Path) -> str:
    """``path`` relative to the rootdir when under it (as users see paths in the report)."""
    root = getattr(getattr(node, "config", None), "rootpath", None)
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def _path(node: Any, marker: str, arg: str, value: Any, base: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | Path):
        if isinstance(value, list | tuple):  # DSPy's habit: trainset=[dspy.Example(...), ...]
            got = (f"got a list of {len(value)} item(s): a marker reads its examples from a file (one JSON object "
                   "a line; in Python, BootstrapFewShot(...).compile(program, trainset=examples) takes a list)")  # fmt: skip
        else:
            shown = repr(value)
            got = f"got {shown if len(shown) <= 80 else shown[:77] + '...'}"
        _bad(node, marker, f"{arg}= must be a path to a .jsonl/.json/.csv file, {got}")
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not p.exists():
        _bad(node, marker, f"{arg}={str(value)!r}: file not found ({_shown(node, p)})")
    return p


def _function_program(node: Any, fn: Any, outputs: Any, inputs: Any) -> Any:
    from ..errors import ConfigError
    from ..programs.function import FunctionProgram

    try:
        return FunctionProgram(fn, outputs=outputs, inputs=inputs)
    except ConfigError as exc:
        _bad(node, "dspex_program", str(exc))


def missing_file(node: Any, base: Path) -> str | None:
    """The first marker path (dataset, trainset, valset) naming no file: the message the test fails with.

    Checked at collection so that a missing file is not a collection error (which would stop the
    whole run, and be printed by every xdist worker): the affected test fails with it instead.
    """
    marks = [("dspex_dataset", "path", m.args[0]) for m in [node.get_closest_marker("dspex_dataset")] if m and m.args]
    program = node.get_closest_marker("dspex_program")
    if program is not None:
        marks += [("dspex_program", arg, program.kwargs.get(arg)) for arg in ("trainset", "valset")]
    for marker, arg, value in marks:
        if isinstance(value, str | Path):
            p = Path(value) if Path(value).is_absolute() else base / value
            if not p.exists():
                return f"{_where(node)}: @pytest.mark.{marker}: {arg}={str(value)!r}: file not found ({_shown(node, p)})"
    return None


#: marker -> what it parsed to, per marker object (its weak reference tells a reused id apart)
_parsed: dict[tuple[str, int, str], tuple[weakref.ref[Any], Any]] = {}


def _remembered(marker: str, node: Any, base: Path | None, parse: Callable[[], Any]) -> Any:
    """``parse()`` once per marker object: every per-example item of a test carries the same markers,
    and parsing them again for each item (twice, by the fixtures) was a tenth of a millisecond an
    item. A marker that fails to parse is not remembered: each item fails with its own message."""
    mark = node.get_closest_marker(marker)
    if mark is None:
        return None
    key = (marker, id(mark), str(base))
    hit = _parsed.get(key)
    if hit is not None and hit[0]() is mark:
        return hit[1]
    spec = parse()
    _parsed[key] = (weakref.ref(mark), spec)
    return spec


def program_spec(node: Any, base: Path) -> ProgramSpec | None:
    return _remembered("dspex_program", node, base, lambda: _program_spec(node, base))  # type: ignore[no-any-return]


def _program_spec(node: Any, base: Path) -> ProgramSpec | None:
    mark = node.get_closest_marker("dspex_program")
    if mark is None:
        return None
    from ..programs.modules import Module, Predict
    from ..programs.signatures import Signature

    known = {"name", "trainset", "valset", "input_keys", "program", "select", "outputs", "optimizer"}
    unknown = set(mark.kwargs) - known
    if unknown:
        _bad(node, "dspex_program", f"unknown argument(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    if len(mark.args) > 1:
        _bad(node, "dspex_program", "takes one positional argument, the program")
    program = mark.args[0] if mark.args else mark.kwargs.get("program")
    if isinstance(program, str) or (isinstance(program, type) and issubclass(program, Signature)):
        try:
            program = Predict(program)
        except Exception as exc:
            _bad(node, "dspex_program", f"program: {exc}")
    outputs = mark.kwargs.get("outputs")
    if not isinstance(program, Module):
        from .._support.dspy_idioms import dspy_kind, dspy_program_message

        kind = dspy_kind(program)
        if kind is not None:
            _bad(node, "dspex_program", dspy_program_message(kind))
        if callable(program) and not isinstance(program, type):  # a plain function (programs/function)
            program = _function_program(node, program, outputs, mark.kwargs.get("input_keys"))
    elif outputs is not None:
        _bad(node, "dspex_program", "outputs= names the output fields of a plain function; this program has its own")
    if not isinstance(program, Module):
        shown = repr(program)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        _bad(
            node,
            "dspex_program",
            f"program must be a Predict, ChainOfThought or Module instance, or a function, got {shown} ({type(program).__name__})",
        )
    name = mark.kwargs.get("name") or _default_name(program)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        _bad(node, "dspex_program", f"name={name!r} must be letters, digits, '_', '.' or '-' (it names the golden file)")
    keys = mark.kwargs.get("input_keys")
    if keys is not None and (isinstance(keys, str) or not all(isinstance(k, str) for k in keys)):
        _bad(node, "dspex_program", f"input_keys={keys!r} must be a list of field names")
    input_keys = tuple(keys) if keys is not None else _input_keys(program)
    if not input_keys:
        _bad(node, "dspex_program", "cannot tell the program's input fields; pass input_keys=[...]")
    select = mark.kwargs.get("select")
    if select is not None and select not in ("in-sample", "held-out"):
        _bad(node, "dspex_program", f"select={select!r} must be 'in-sample' or 'held-out'")
    optimizer = mark.kwargs.get("optimizer")
    if optimizer is not None:
        from ..optimize.registry import unknown_optimizer

        if (problem := unknown_optimizer(optimizer)) is not None:
            _bad(node, "dspex_program", f"optimizer={optimizer!r}: {problem}")
    return ProgramSpec(
        select=select,
        optimizer=optimizer,
        program=program,
        name=name,
        trainset=_path(node, "dspex_program", "trainset", mark.kwargs.get("trainset"), base),
        valset=_path(node, "dspex_program", "valset", mark.kwargs.get("valset"), base),
        input_keys=input_keys,
    )


def metric_spec(node: Any) -> MetricSpec | None:
    return _remembered("dspex_metric", node, None, lambda: _metric_spec(node))  # type: ignore[no-any-return]


def _metric_spec(node: Any) -> MetricSpec | None:
    mark = node.get_closest_marker("dspex_metric")
    if mark is None:
        return None
    known = {"threshold", "tolerance", "metric", "metric_threshold", "repeats", "repeat_reduction"}
    unknown = set(mark.kwargs) - known
    if unknown:
        _bad(node, "dspex_metric", f"unknown argument(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    metric = mark.args[0] if mark.args else mark.kwargs.get("metric")
    if not callable(metric):
        _bad(node, "dspex_metric", f"metric must be a function (example, prediction, trace=None) -> bool | float, got {metric!r}")
    threshold = mark.kwargs.get("threshold")
    tolerance = mark.kwargs.get("tolerance")
    demo_bar = mark.kwargs.get("metric_threshold")
    for arg, value in (("threshold", threshold), ("tolerance", tolerance), ("metric_threshold", demo_bar)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
            _bad(node, "dspex_metric", f"{arg}={value!r} must be a number between 0 and 1")

    repeats = mark.kwargs.get("repeats")
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        _bad(node, "dspex_metric", f"repeats={repeats!r} must be a whole number >= 1")
    reduction = mark.kwargs.get("repeat_reduction")
    if reduction is not None and reduction not in ("mean", "all", "any"):
        _bad(node, "dspex_metric", f"repeat_reduction={reduction!r} must be 'mean', 'all' (pass^k) or 'any' (pass@k)")

    def number(value: Any) -> float | None:
        return None if value is None else float(value)

    return MetricSpec(metric, number(threshold), number(tolerance), number(demo_bar), repeats, reduction)


def dataset_path(node: Any, base: Path) -> tuple[Path, int | None] | None:
    return _remembered("dspex_dataset", node, base, lambda: _dataset_path(node, base))  # type: ignore[no-any-return]


def _dataset_path(node: Any, base: Path) -> tuple[Path, int | None] | None:
    mark = node.get_closest_marker("dspex_dataset")
    if mark is None:
        return None
    if len(mark.args) != 1:
        _bad(node, "dspex_dataset", "takes exactly one positional argument, the dataset path")
    unknown = set(mark.kwargs) - {"limit"}
    if unknown:
        _bad(node, "dspex_dataset", f"unknown argument(s) {', '.join(sorted(unknown))} (known: limit)")
    limit = mark.kwargs.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        _bad(node, "dspex_dataset", f"limit={limit!r} must be a positive integer")
    path = _path(node, "dspex_dataset", "path", mark.args[0], base)
    assert path is not None
    return path, limit


def require(node: Any, spec: Any, marker: str, fixture: str) -> Any:
    if spec is None:
        pytest.fail(f"{_where(node)}: the {fixture} fixture needs @pytest.mark.{marker}(...) on the test", pytrace=False)
    return spec
