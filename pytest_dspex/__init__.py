"""pytest-dspex: LM programs as tested, optimized artifacts.

The core (this package minus ``pytest_dspex.plugin``) never imports pytest::

    import pytest_dspex as dspex

    lm = dspex.LM("gemma-3-270m", base_url="http://127.0.0.1:8080/v1")
    dspex.configure(lm=lm)
    qa = dspex.ChainOfThought("question -> answer")
    print(qa(question="What is 2 + 2?").answer)
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._support.lazy import lazy_attributes as _lazy_attributes
from ._support.version import __version__

# Names are imported on first use (PEP 562), so the pytest plugin, which is loaded in every
# pytest run of a project that installs pytest-dspex, costs almost nothing when it is unused.
_LAZY: dict[str, str] = {
    "events": ".observe.events", "metrics": ".evaluation.metrics",
    **dict.fromkeys(
        ["AdapterParseError", "BudgetExceededError", "CacheMissError", "CircuitOpenError", "CompileStoppedError", "ConfigError",
         "DatasetError", "DspexError", "GoldenFileError", "GoldenStaleError", "LMError", "LMHTTPError", "LMResponseError",
         "LMTimeoutError", "LMUnavailableError", "MetricError", "ModelRefusedError", "SignatureError"],
        ".errors",
    ),
    **dict.fromkeys(["ChatAdapter", "CompactAdapter", "JSONAdapter"], ".programs.adapters"),
    **dict.fromkeys(["Comparison", "compare"], ".evaluation.comparison"),
    **dict.fromkeys(["example_key", "load_dataset", "split"], ".evaluation.datasets"),
    **dict.fromkeys(["Evaluate", "EvaluationResult", "evaluate"], ".evaluation.evaluate"),
    **dict.fromkeys(["ExampleRecord"], ".evaluation.records"),
    **dict.fromkeys(["FunctionProgram", "program"], ".programs.function"),
    "LoopbackEndpoint": ".programs.loopback",
    **dict.fromkeys(["LM", "Budget", "ResponseCache", "Usage", "track_usage"], ".lm"),
    **dict.fromkeys(["BootstrapFewShot", "BootstrapFewShotWithRandomSearch", "LabeledFewShot"], ".optimize"),
    **dict.fromkeys(["Example", "Prediction"], ".programs.primitives"),
    **dict.fromkeys(["load_golden"], ".golden.production"),
    "embedded_lm": ".programs.settings",
    **dict.fromkeys(["ChainOfThought", "Module", "Predict", "trace_scope"], ".programs.modules"),
    **dict.fromkeys(["configure", "context"], ".programs.settings"),
    **dict.fromkeys(["InputField", "OutputField", "Signature", "make_signature"], ".programs.signatures"),
}  # fmt: skip


#: names above that are modules, not attributes of one
_MODULES = frozenset({"events", "metrics"})

__getattr__ = _lazy_attributes(__name__, _LAZY, _MODULES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if _TYPE_CHECKING:
    from .errors import (
        AdapterParseError,
        BudgetExceededError,
        CacheMissError,
        CircuitOpenError,
        CompileStoppedError,
        ConfigError,
        DatasetError,
        DspexError,
        GoldenFileError,
        GoldenStaleError,
        LMError,
        LMHTTPError,
        LMResponseError,
        LMTimeoutError,
        LMUnavailableError,
        MetricError,
        ModelRefusedError,
        SignatureError,
    )
    from .evaluation import metrics
    from .evaluation.comparison import Comparison, compare
    from .evaluation.datasets import example_key, load_dataset, split
    from .evaluation.evaluate import Evaluate, EvaluationResult, evaluate
    from .evaluation.records import ExampleRecord
    from .golden.production import load_golden
    from .lm import LM, Budget, ResponseCache, Usage, track_usage
    from .observe import events
    from .optimize import BootstrapFewShot, BootstrapFewShotWithRandomSearch, LabeledFewShot
    from .programs.adapters import ChatAdapter, CompactAdapter, JSONAdapter
    from .programs.function import FunctionProgram, program
    from .programs.loopback import LoopbackEndpoint
    from .programs.modules import ChainOfThought, Module, Predict, trace_scope
    from .programs.primitives import Example, Prediction
    from .programs.settings import configure, context, embedded_lm
    from .programs.signatures import InputField, OutputField, Signature, make_signature

__all__ = [
    "LM",
    "AdapterParseError",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "Budget",
    "BudgetExceededError",
    "CacheMissError",
    "ChainOfThought",
    "ChatAdapter",
    "CircuitOpenError",
    "CompactAdapter",
    "Comparison",
    "CompileStoppedError",
    "ConfigError",
    "DatasetError",
    "DspexError",
    "Evaluate",
    "EvaluationResult",
    "Example",
    "ExampleRecord",
    "FunctionProgram",
    "GoldenFileError",
    "GoldenStaleError",
    "InputField",
    "JSONAdapter",
    "LMError",
    "LMHTTPError",
    "LMResponseError",
    "LMTimeoutError",
    "LMUnavailableError",
    "LabeledFewShot",
    "LoopbackEndpoint",
    "MetricError",
    "ModelRefusedError",
    "Module",
    "OutputField",
    "Predict",
    "Prediction",
    "ResponseCache",
    "Signature",
    "SignatureError",
    "Usage",
    "__version__",
    "compare",
    "configure",
    "context",
    "embedded_lm",
    "evaluate",
    "events",
    "example_key",
    "load_dataset",
    "load_golden",
    "make_signature",
    "metrics",
    "program",
    "split",
    "trace_scope",
    "track_usage",
]
