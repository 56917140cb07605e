"""A shard job (``--dspex-shard=K/N``) does not judge its partial share.

A gate on a third of the examples would fail near the threshold by chance (and the paired
comparison would be underpowered): the shard job evaluates its examples, writes their records with
``--dspex-report`` and defers the gate to ``python -m pytest_dspex combine``, which judges the merged
records exactly as one unsharded run would. The shard's verdict says so; it passes, so a shard job
exits 0 unless its tests fail for other reasons (a program exception in a per-example item still
fails that item).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..evaluation.gates import Verdict
    from ..evaluation.sharding import Shard

__all__ = ["DEFERRED", "defer"]

#: ``Verdict.kind`` of a shard job's program
DEFERRED = "deferred"


def defer(verdict: Verdict, shard: Shard, n: int, dataset_size: int | None) -> Verdict:
    """The shard's verdict: passed, kind ``deferred``, the reason naming its share and ``combine``."""
    share = f"{n} of {dataset_size}" if dataset_size is not None else str(n)
    reason = f"shard {shard}: {share} examples; gate deferred to `python -m pytest_dspex combine`"
    return replace(verdict, passed=True, kind=DEFERRED, reason=reason, details=[], comparison=None)
