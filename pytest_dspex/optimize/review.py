"""What a reviewer should know about a compiled program's demos, per predictor.

    review = review_program(compiled, trainset)
    review["write"] == {"labeled": 0, "bootstrapped": 4, "unlabeled_fields": ["reply"], "flags": []}
    summary_lines(review) -> ["write: 0 labeled, 4 bootstrapped (no training example gives reply: ...)", ...]

A golden file's demos are the program, reviewed like code. Flags name a demo (1-based, in prompt
order) that misses one of its predictor's fields, or a bootstrapped demo whose output disagrees
with the label of the training example it was run on (a metric that does not check every output,
or a ``metric_threshold`` below full credit, lets such a demo in). ``review_golden`` does the same
from a golden file's data alone (no trainset: missing fields only, plus the flags the compile
recorded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..programs.modules import Module
from .bootstrap import GENERATED_FIELDS, _unlabeled_fields, missing_fields

__all__ = ["review_golden", "review_program", "summary_lines"]


def _norm(value: Any) -> str:
    return str(getattr(value, "value", value)).strip().lower()


def _example_for(demo: Mapping[str, Any], trainset: Sequence[Any]) -> Any:
    for ex in trainset:
        keys = ex.input_keys or ()
        if keys and all(k in demo and demo[k] == ex.get(k) for k in keys):
            return ex
    return None


def review_program(program: Module, trainset: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per predictor path: ``labeled`` and ``bootstrapped`` demo counts, ``unlabeled_fields``, ``flags``."""
    out: dict[str, dict[str, Any]] = {}
    for path, predictor in program.named_predictors():
        outputs = [n for n in predictor.signature.output_fields() if n not in GENERATED_FIELDS]
        flags = []
        for i, demo in enumerate(predictor.demos, 1):
            missing = missing_fields(predictor, demo)
            if missing:
                flags.append(f"demo {i}: no {', '.join(missing)}")
            if not demo.get("augmented"):
                continue
            example = _example_for(demo, trainset)
            if example is None:
                continue
            for name in outputs:
                label = example.get(name)
                if label is not None and name in demo and _norm(demo[name]) != _norm(label):
                    flags.append(f"demo {i}: {name} = {_short(demo[name])}, its example says {_short(label)}")
        entry: dict[str, Any] = {
            "labeled": sum(1 for d in predictor.demos if not d.get("augmented")),
            "bootstrapped": sum(1 for d in predictor.demos if d.get("augmented")),
            "flags": flags,
        }
        unlabeled = _unlabeled_fields(predictor, trainset)
        if unlabeled:
            entry["unlabeled_fields"] = unlabeled
        out[path] = entry
    return out


def review_golden(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``review_program``'s figures from a golden file's data: counts and missing fields from its
    demos, and the flags (labels disagreed with) its compile recorded under ``optimizer.demos``."""
    recorded = (data.get("optimizer") or {}).get("demos") or {}
    out: dict[str, dict[str, Any]] = {}
    for path, entry in (data.get("predictors") or {}).items():
        fields = [f["name"] for f in (entry.get("signature") or {}).get("fields", []) if f.get("name") not in GENERATED_FIELDS]
        demos = entry.get("demos") or []
        flags = []
        for i, demo in enumerate(demos, 1):
            values = {**(demo.get("inputs") or {}), **(demo.get("outputs") or {})}
            missing = [n for n in fields if values.get(n) is None]
            if missing:
                flags.append(f"demo {i}: no {', '.join(missing)}")
        mine = set(flags)
        flags += [f for f in (recorded.get(path) or {}).get("flags", []) if f not in mine]
        review: dict[str, Any] = {
            "labeled": sum(1 for d in demos if not d.get("bootstrapped")),
            "bootstrapped": sum(1 for d in demos if d.get("bootstrapped")),
            "flags": flags,
        }
        unlabeled = (recorded.get(path) or {}).get("unlabeled_fields")
        if unlabeled:
            review["unlabeled_fields"] = list(unlabeled)
        out[path] = review
    return out


def summary_lines(review: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per predictor, then one per flag: what the compile summary and ``prompt`` print."""
    lines = []
    for path, r in review.items():
        line = f"{path}: {r['labeled']} labeled, {r['bootstrapped']} bootstrapped demos"
        unlabeled = r.get("unlabeled_fields")
        if unlabeled:
            fields = _join(unlabeled)
            if r["bootstrapped"]:
                line += f" (no training example gives {fields}: its demos come only from the teacher's runs)"
            else:
                # the chosen candidate has none (others may have: zero-shot may simply have won)
                line += f" (no training example gives {fields}, and the chosen candidate has no demo from a teacher run: no demos)"
        lines.append(line)
        lines += [f"  ! {flag}" for flag in r.get("flags", ())]
    return lines


def _join(names: Iterable[str]) -> str:
    return ", ".join(names)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(getattr(value, "value", value))
    return text if len(text) <= limit else text[: limit - 1] + "…"
