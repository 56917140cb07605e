"""``--dspex-compile`` on a program with nothing to optimize: its baseline, and a golden to pair with.

A plain function (``programs/function``) or a ``Module`` that calls no ``Predict`` has no demos or
instructions an optimizer could choose. Its compile says so, measures the program as it is on the
gate dataset (``measure_baseline``: fresh draws, own rollout ids) and writes a golden holding that
baseline only — so later runs get the paired gate (regressed / improved / no change) like any
program. The golden's lock, the once-per-run marker, keep-better and the error budget are the
compile's own (``compile``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..evaluation.metrics import metric_fingerprint
from ..evaluation.scoring import example_timeout
from ..lm.usage import track_usage
from ..programs.modules import Module
from .compile import (
    CompileOutcome,
    CompileSettings,
    _compare_baselines,
    compiled_elsewhere,
    mark_compiled,
    measure_baseline,
    previous_golden,
    written_elsewhere,
)

__all__ = ["NOTHING_TO_OPTIMIZE", "record_baseline_only"]

NOTHING_TO_OPTIMIZE = "nothing to optimize (no predictors: it runs as written)"


def record_baseline_only(
    program: Module,
    *,
    name: str,
    metric: Callable[..., Any],
    gateset: Path | Sequence[Any],
    input_keys: Sequence[str],
    path: Path,
    settings: CompileSettings,
    run_id: str = "",
    progress: Callable[[str], None] | None = None,
    defer_write: bool = False,
    state_dir: Path | None = None,
) -> CompileOutcome:
    """Measure ``program``'s baseline on ``gateset`` and write its golden (no optimizing).

    ``outcome`` is the store's (``created`` / ``updated`` / ``kept`` / ``unchanged``) or
    ``compiled elsewhere``; ``reason`` starts with ``NOTHING_TO_OPTIMIZE``. Raises
    ``GoldenFileError`` for a golden that may not be replaced (corrupted, without force) or a
    baseline over the error budget (``GoldenStore.write``).
    """
    from ..evaluation.datasets import fingerprint, label_hashes, load_dataset
    from ..evaluation.metrics import metric_name
    from ..golden.file import GoldenFile, read_golden
    from ..golden.record import baseline_entry, golden_record
    from ..golden.store import GoldenStore
    from ..programs.fields import dataset_fields
    from ..programs.primitives import as_examples

    store = GoldenStore(path.parent.parent, state_dir=state_dir)
    say = progress or (lambda _text: None)
    with store.lock(path):
        elsewhere = compiled_elsewhere(path, run_id, state_dir)
        if elsewhere is not None:
            return CompileOutcome(name, path, program, elsewhere, "compiled elsewhere",
                                  written_elsewhere=written_elsewhere(path, run_id, state_dir))  # fmt: skip
        previous = previous_golden(path, settings.force)
        gate = load_dataset(gateset, input_keys, fields=dataset_fields(program)) if isinstance(gateset, Path) else as_examples(list(gateset), input_keys)
        say(f"compiling {name}: {NOTHING_TO_OPTIMIZE}; measuring its baseline on {len(gate)} gate examples")
        with track_usage() as spent, example_timeout(settings.example_timeout):
            draws, error_rate = measure_baseline(
                program, gate, metric, draws=settings.baseline_draws, concurrency=settings.concurrency,
                # one pass (a deterministic endpoint) under the gate's own cache key, as a compiled
                # program's: the compile run's gate then reads these answers instead of asking again
                shared_first=settings.baseline_draws == 1, max_error_rate=settings.max_error_rate,
            )
        baseline = baseline_entry(
            draws, dataset=fingerprint(gate), labels=label_hashes(gate), metric_fingerprint=metric_fingerprint(metric)
        )
        replaced = _compare_baselines(previous, baseline)
        score, n = float(baseline["score"]), int(baseline["n"])
        record = golden_record(
            program,
            name=name,
            metric=metric_name(metric),
            validation=(score, n),
            model=settings.model_info,
            optimizer={"name": "none", "reason": NOTHING_TO_OPTIMIZE},
            datasets={"validation": fingerprint(gate)},
            records=draws[0],
            adapter=settings.adapter,
            selection={"set": "none", "dataset": fingerprint(gate), "n": n, "score": round(score, 6), "chosen": "as written"},
            baseline=baseline,
        )
        written = store.write(
            path, record, force=settings.force, error_rate=error_rate, max_error_rate=settings.max_error_rate,
            dry_run=defer_write, improved=None if replaced is None else replaced.verdict == "improved",
        )  # fmt: skip
        outcome = written.outcome
        to_write = json.loads(json.dumps(record)) if defer_write and outcome in ("created", "updated") else None
        mark_compiled(path, run_id, state_dir, to_write)
    golden = GoldenFile(path, to_write) if to_write is not None else read_golden(path)
    reason = f"{NOTHING_TO_OPTIMIZE}; baseline {score:.3f} on {n} gate examples" + (f" ({written.reason})" if written.reason else "")
    return CompileOutcome(name, path, program, golden, outcome, reason, None, record=to_write, replaced=replaced, usage=spent)
