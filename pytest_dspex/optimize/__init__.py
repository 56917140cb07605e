"""Optimizers behind one protocol, and the names ``--dspex-optimizer`` knows them by.

* ``protocol``   what an optimizer is to the compile flow: ``from_settings``, ``compile`` → ``CompileResult``, ``describe``
* ``registry``   name → optimizer (``random-search``, ``bootstrap``, ``labeled``): a new optimizer is one module and one line there
* ``search``     ``BootstrapFewShotWithRandomSearch``: candidates raced on the selection set (the default)
* ``single``     one-program optimizers: plain ``BootstrapFewShot`` and ``LabeledFewShot``
* ``bootstrap``  ``BootstrapFewShot`` and ``LabeledFewShot`` themselves (DSPy's API: ``compile`` returns the program)
* ``selection``  scoring a candidate on the selection set (without its own demo, the error budget)
* ``coverage``, ``review``  demos spread over a classifier's labels; the demo review a golden records
"""

from typing import TYPE_CHECKING

from .._support.lazy import lazy_attributes

# Names load on first use (PEP 562): the plugin's option check reads ``registry`` alone, and a pytest
# run that does not compile should not pay for the optimizers.
_LAZY: dict[str, str] = {
    **dict.fromkeys(["BootstrapFewShot", "BootstrapReport", "LabeledFewShot"], ".bootstrap"),
    **dict.fromkeys(["Candidate", "CompileResult", "Optimizer", "OptimizerSettings"], ".protocol"),
    **dict.fromkeys(["OPTIMIZERS", "make_optimizer"], ".registry"),
    **dict.fromkeys(["BootstrapFewShotWithRandomSearch"], ".search"),
}

__getattr__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from .bootstrap import BootstrapFewShot, BootstrapReport, LabeledFewShot
    from .protocol import Candidate, CompileResult, Optimizer, OptimizerSettings
    from .registry import OPTIMIZERS, make_optimizer
    from .search import BootstrapFewShotWithRandomSearch

__all__ = [
    "OPTIMIZERS",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "BootstrapReport",
    "Candidate",
    "CompileResult",
    "LabeledFewShot",
    "Optimizer",
    "OptimizerSettings",
    "make_optimizer",
]
