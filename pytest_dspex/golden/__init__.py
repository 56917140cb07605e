"""The golden file: its schema, record building, reading and staleness, the store (``file``); loading
it into a program in production (``production``); golden files no test uses (``orphans``).

May import: ``evaluation``, ``programs``, ``lm``, ``observe``, ``_support``, ``errors``.
"""

from typing import Any

__all__ = ["from_dspy_state", "to_dspy_state"]


def __getattr__(name: str) -> Any:
    # DSPy's layout, converted both ways (``pytest_dspex.golden.to_dspy_state``): loaded on first use
    if name in __all__:
        from . import file

        return getattr(file, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
