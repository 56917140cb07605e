"""A predictor's saved state in DSPy's ``program.save()`` layout, both ways.

``Module.save`` / ``load`` / ``dump_state`` / ``load_state`` and the golden's DSPy export go through
here, so a program saved by either library loads in the other. Demos are flat field dicts (see
``demos``); a predictor is taken by shape (``Predict``: ``signature``, ``declared_signature``,
``demos``, ``calibration``, ``set_wording``), since ``modules`` imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .demos import jsonable
from .signatures import FieldSpec, Signature

__all__ = ["dspy_metadata", "dump", "field_prefix", "load"]


def dspy_metadata() -> dict[str, Any]:
    """The ``metadata`` of a state DSPy's ``program.load()`` reads (``save`` and golden exports).

    DSPy 3.4.1's ``BaseModule.load`` looks every key of ``dependency_versions`` up in its own
    ``get_dependency_versions()`` (python, dspy, cloudpickle; any other key is a KeyError), so only
    the python version goes there (no version of DSPy was involved) and pytest-dspex's beside it."""
    import sys

    from .._support.version import __version__

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {"dependency_versions": {"python": python}, "pytest_dspex": {"version": __version__}}


def dump(pred: Any) -> dict[str, Any]:
    """A predictor's state in DSPy's ``program.save()`` layout (demos, signature wording, calibration)."""
    sig = pred.signature
    return {
        "demos": [jsonable(dict(d)) for d in pred.demos],
        "signature": {
            "instructions": sig.instructions,
            "fields": [{"prefix": field_prefix(f), "description": f.desc or f"${{{f.name}}}"} for f in sig.ordered_fields()],
        },
        "lm": None,
        "traces": [],
        "train": [],
        **({"calibration": dict(pred.calibration)} if pred.calibration else {}),
    }

def load(pred: Any, state: Mapping[str, Any], path: str) -> None:
    """Set a predictor's demos, calibration and wording from a saved state (ours or DSPy's); a state
    made for another signature is a ``ConfigError`` naming the predictor ``path``."""
    demos = state.get("demos")
    if not isinstance(demos, list):
        raise ConfigError(f"saved state for predictor {path!r} has no 'demos' list")
    sig = pred.declared_signature
    inputs, outputs = list(sig.input_fields()), list(sig.output_fields())
    loaded = []
    for i, demo in enumerate(demos):
        if not isinstance(demo, dict):
            raise ConfigError(f"predictor {path!r}, demo {i}: expected an object, got {type(demo).__name__}")
        # other keys (a labeled demo's "id", "source"...) are kept as the demo's metadata: the
        # adapters show signature fields only, golden files keep the rest under "metadata"
        missing = [n for n in inputs if n not in demo]
        if missing or not any(n in demo for n in outputs):
            lacks = ", ".join(missing) if missing else "every output field (" + ", ".join(outputs) + ")"
            raise ConfigError(
                f"predictor {path!r}, demo {i} lacks {lacks}: it has {', '.join(sorted(demo)) or 'no fields'}, "
                f"the signature is ({sig.signature_string()}); the saved program was made for another signature"
            )
        loaded.append(dict(demo))
    pred.demos = loaded
    pred.calibration = _load_calibration(state.get("calibration"), path)
    pred.set_wording(**_saved_wording(sig, state.get("signature"), path))


def field_prefix(spec: FieldSpec) -> str:
    """A field's prefix as DSPy saves it: the one given, else its label and a colon."""
    return spec.prefix or spec.label + ":"


def _saved_wording(sig: type[Signature], saved: Any, path: str) -> dict[str, Any]:
    """The instructions and field wording of a saved state (``program.save`` here or in DSPy), as
    ``set_wording`` arguments. DSPy lists fields inputs first, each ``{"prefix", "description"}``,
    with ``${name}`` as the description of a field that has none."""
    if saved is None:
        return {}
    if not isinstance(saved, Mapping):
        raise ConfigError(f"saved state for predictor {path!r}: 'signature' must be an object")
    instructions = saved.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ConfigError(f"saved state for predictor {path!r}: signature 'instructions' must be text")
    fields: dict[str, dict[str, str | None]] = {}
    for spec, entry in zip(sig.ordered_fields(), saved.get("fields") or [], strict=False):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"saved state for predictor {path!r}: each signature field must be an object")
        desc, prefix = entry.get("description"), entry.get("prefix")
        change: dict[str, str | None] = {}
        if isinstance(desc, str):
            change["desc"] = "" if desc == f"${{{spec.name}}}" else desc
        if isinstance(prefix, str) and prefix.strip():
            change["prefix"] = prefix
        fields[spec.name] = change
    return {"instructions": instructions, "fields": fields}


def _load_calibration(raw: Any, path: str) -> dict[str, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, (int, float)) for v in raw.values()):
        raise ConfigError(f"saved state for predictor {path!r}: 'calibration' must map labels to numbers")
    return {str(k): float(v) for k, v in raw.items()}
