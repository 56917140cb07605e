"""Demo selection that covers the labels.

A classifier (an output field typed ``Literal``, ``bool`` or an ``Enum``) learns little about a label
it never sees in a demo: drawing 8 demos at random from 12 examples of 6 intents leaves some intent
without a demo about 9% of the time per intent (measured in bench/cases_local.py). So where the
program's outputs have a closed set of values, demos are drawn round-robin over the labels: one per
label (in a seeded random order) before any label gets a second, and the demos alternate labels
rather than running in blocks (a small model copies the last demo's label).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from ..programs.constrained import choices_of
from ..programs.modules import Module

__all__ = ["cover_sample", "label_function", "spread"]

T = TypeVar("T")
LabelOf = Callable[[Any], Hashable]


def label_function(program: Module) -> LabelOf | None:
    """How to read an example's label for ``program``: its closed-set output values, or None.

    Only for programs with one predictor (where an example's outputs are that predictor's); a
    pipeline's intermediate outputs are not in the examples.
    """
    predictors = program.predictors()
    if len(predictors) != 1:
        return None
    names = [n for n in choices_of(predictors[0].signature) if n != "reasoning"]
    if not names:
        return None

    def label_of(example: Any) -> Hashable:
        values = []
        for n in names:
            try:
                value = example[n]
            except (KeyError, TypeError):
                value = None
            values.append(str(getattr(value, "value", value)))
        return tuple(values)

    return label_of


def cover_sample(items: Sequence[T], k: int, rng: random.Random, label_of: LabelOf | None) -> list[T]:
    """``k`` items drawn with ``rng``; with ``label_of``, every label before any label twice."""
    k = min(k, len(items))
    if label_of is None:
        return rng.sample(list(items), k)
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(label_of(item), []).append(item)
    order = list(groups)
    rng.shuffle(order)
    for label in order:
        rng.shuffle(groups[label])
    picked: list[T] = []
    depth = 0
    while len(picked) < k:
        for label in order:
            group = groups[label]
            if depth < len(group) and len(picked) < k:
                picked.append(group[depth])
        depth += 1
    return picked


def spread(first: Sequence[T], pool: Sequence[T], k: int, label_of: LabelOf | None) -> list[T]:
    """``first`` then items of ``pool`` up to ``k`` in all, labels ``first`` lacks taken first.

    Keeps ``pool``'s order otherwise (it is already shuffled by the caller).
    """
    room = max(0, k - len(first))
    if label_of is None or room == 0:
        return [*first, *list(pool)[:room]]
    seen = {label_of(x) for x in first}
    chosen: list[T] = []
    rest: list[T] = []
    for item in pool:
        label = label_of(item)
        if label not in seen and len(chosen) < room:
            seen.add(label)
            chosen.append(item)
        else:
            rest.append(item)
    chosen.extend(rest[: room - len(chosen)])
    return [*first, *chosen]


def covered(items: Sequence[Any], label_of: LabelOf | None) -> int:
    """How many distinct labels ``items`` show (0 without a label function)."""
    return len({label_of(x) for x in items}) if label_of is not None else 0
