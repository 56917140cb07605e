"""Optimizers: BootstrapFewShot and a concurrent candidate search over it."""

from .bootstrap import BootstrapFewShot, BootstrapReport, LabeledFewShot
from .search import BootstrapFewShotWithRandomSearch, Candidate, CompileResult

__all__ = [
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "BootstrapReport",
    "Candidate",
    "CompileResult",
    "LabeledFewShot",
]
