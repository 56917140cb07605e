"""Golden files: the compiled demos of a program, reviewed in PRs and gated on in CI.

* ``schema``      the format (pydantic models, ``SCHEMA_VERSION``) and ``validate``
* ``record``      building a record: ``golden_record``, ``baseline_entry``, the placeholder prompts
* ``file``        reading: ``read_golden`` (the one reader) and ``GoldenFile`` (staleness, applying demos)
* ``store``       writing: ``GoldenStore`` (atomic, locked, keep-better)
* ``dspy_state``  DSPy's ``program.save()`` layout, both ways (``pytest_dspex.golden.to_dspy_state``)
* ``production``  ``load_golden`` and the requests a golden sends, outside pytest
* ``orphans``     golden files no test uses

May import: ``evaluation``, ``programs``, ``lm``, ``observe``, ``_support``, ``errors``.
"""

from typing import Any

__all__ = ["from_dspy_state", "to_dspy_state"]


def __getattr__(name: str) -> Any:
    # DSPy's layout, converted both ways: loaded on first use
    if name in __all__:
        from . import dspy_state

        return getattr(dspy_state, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
