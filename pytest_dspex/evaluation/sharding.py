"""Sharded runs: which examples this job evaluates (``--dspex-shard=K/N``).

Every example goes to exactly one of N shards, chosen by a stable hash of its example key
(``datasets.example_key``: the row's ``id``, else a hash of its inputs) — SHA-256, not Python's
``hash()``, so every process, machine and Python version agrees. N jobs each evaluate about 1/N of
every dataset, write their records with ``--dspex-report``, and ``python -m pytest_dspex combine``
merges the reports into the verdict one unsharded run would give. Shards are numbered 1..N.

Where the shard comes from — always something the user wrote for pytest-dspex:

1. the option ``--dspex-shard=K/N`` (ini ``dspex_shard``); ``off`` (the default) is not sharded;
2. ``DSPEX_SHARD=K/N`` (set it from a matrix on GitHub Actions, which has no built-in variable:
   ``DSPEX_SHARD: ${{ matrix.shard }}/3``);
3. only with ``--dspex-shard=ci`` (or ``DSPEX_SHARD=ci``, ini ``dspex_shard = ci``), the CI's
   parallel-job variables:

   * GitLab CI ``parallel:``: ``CI_NODE_INDEX`` (1-based) / ``CI_NODE_TOTAL``;
   * CircleCI ``parallelism:``: ``CIRCLE_NODE_INDEX`` (0-based) / ``CIRCLE_NODE_TOTAL``;
   * Buildkite ``parallelism:``: ``BUILDKITE_PARALLEL_JOB`` (0-based) / ``BUILDKITE_PARALLEL_JOB_COUNT``.

The CI variables are not read otherwise: many teams use ``parallel:`` only to split their unit tests,
and a job that silently judged a third of the examples and deferred its gate to a ``combine`` job
they never wrote would have no LM gate at all. A CI total of 1 means "not parallel" (no shard). A
malformed value is a ``ConfigError`` naming the variable — never a silent run of everything or nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = [
    "CI",
    "CI_VARIABLES",
    "Shard",
    "ci_parallel_variables",
    "ci_run_id",
    "in_shard",
    "parse_shard",
    "resolve_shard",
    "shard_from_ci",
    "shard_from_env",
    "shard_of",
]

#: (CI system, index variable, total variable, first index)
CI_VARIABLES: tuple[tuple[str, str, str, int], ...] = (
    ("GitLab CI", "CI_NODE_INDEX", "CI_NODE_TOTAL", 1),
    ("CircleCI", "CIRCLE_NODE_INDEX", "CIRCLE_NODE_TOTAL", 0),
    ("Buildkite", "BUILDKITE_PARALLEL_JOB", "BUILDKITE_PARALLEL_JOB_COUNT", 0),
)
OFF = ("off", "none", "no", "false", "0")
#: ``--dspex-shard=ci``: take the shard from the CI's parallel-job variables
CI = "ci"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def shard_of(key: str, count: int) -> int:
    """The shard (1..count) that owns the example with this key."""
    if count < 1:
        raise ConfigError(f"shard count must be >= 1, got {count}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def in_shard(key: str, index: int, count: int) -> bool:
    """Whether the example with this key belongs to shard ``index`` of ``count`` (1-based)."""
    _check(index, count, f"{index}/{count}")
    return shard_of(key, count) == index


def _check(index: int, count: int, text: str, source: str = "--dspex-shard") -> None:
    if count < 1:
        raise ConfigError(f"{source}={text!r}: the shard count must be at least 1")
    if not 1 <= index <= count:
        raise ConfigError(
            f"{source}={text!r}: the shard index must be between 1 and {count} (shards are numbered from 1)"
        )


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based); ``source`` says where it was configured."""

    index: int
    count: int
    source: str = "--dspex-shard"

    def __post_init__(self) -> None:
        _check(self.index, self.count, f"{self.index}/{self.count}", self.source)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and shard_of(key, self.count) == self.index

    def select(self, keys: Iterable[str]) -> list[int]:
        """Positions (in ``keys``' order) of the examples this shard evaluates."""
        return [i for i, key in enumerate(keys) if shard_of(key, self.count) == self.index]

    def to_json(self) -> dict[str, int]:
        """The report's ``shard`` field."""
        return {"index": self.index, "count": self.count}

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, *, source: str = "--dspex-shard") -> Shard:
    """``"K/N"`` → ``Shard(K, N)``; anything else is a ``ConfigError`` naming ``source``."""
    m = _SPEC.match(text)
    if m is None:
        raise ConfigError(f"{source}={text!r} is not a shard: expected K/N, e.g. 2/3 (shard 2 of 3, numbered from 1)")
    return Shard(int(m.group(1)), int(m.group(2)), source)


def _ci_int(env: Mapping[str, str], name: str) -> int:
    raw = env[name].strip()
    if not raw.isdigit():
        raise ConfigError(f"{name}={env[name]!r} is not a non-negative integer")
    return int(raw)


def shard_from_ci(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard the CI's parallel-job variables say (see the module doc), or None when not parallel."""
    env = os.environ if env is None else env
    for system, index_var, total_var, first in CI_VARIABLES:
        if index_var not in env or total_var not in env:
            continue
        total = _ci_int(env, total_var)
        index = _ci_int(env, index_var)
        if total <= 1:
            return None
        return Shard(index - first + 1, total, f"{system} ({index_var}={env[index_var]}, {total_var}={env[total_var]})")
    return None


#: (CI system, the variables naming one build or pipeline run: all its parallel jobs see the same values)
CI_RUN_VARIABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GitHub Actions", ("GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT")),
    ("GitLab CI", ("CI_PIPELINE_ID",)),
    ("CircleCI", ("CIRCLE_WORKFLOW_ID",)),
    ("Buildkite", ("BUILDKITE_BUILD_ID",)),
)


def ci_run_id(env: Mapping[str, str] | None = None) -> str | None:
    """The CI build that every shard of one run shares (``"GITHUB_RUN_ID=123-1"``), or None outside CI.

    Only read for a sharded run: its shards then share one budget (``--dspex-run-id``)."""
    env = os.environ if env is None else env
    for _system, names in CI_RUN_VARIABLES:
        if env.get(names[0], "").strip():
            return names[0] + "=" + "-".join(env.get(n, "").strip() for n in names)
    return None


def ci_parallel_variables(env: Mapping[str, str] | None = None) -> str | None:
    """``"CI_NODE_INDEX=1, CI_NODE_TOTAL=2"`` when a parallel CI job's variables are set (total > 1), else None:
    the note a run that ignores them shows."""
    env = os.environ if env is None else env
    for _system, index_var, total_var, _first in CI_VARIABLES:
        if index_var in env and total_var in env and env[total_var].strip() not in ("", "0", "1"):
            return f"{index_var}={env[index_var]}, {total_var}={env[total_var]}"
    return None


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard ``DSPEX_SHARD`` asks for (``K/N``, ``off``, or ``ci``: the CI's variables), or None."""
    env = os.environ if env is None else env
    spec = env.get("DSPEX_SHARD", "").strip()
    if not spec or spec.lower() in OFF:
        return None
    if spec.lower() == CI:
        return shard_from_ci(env)
    return parse_shard(spec, source="DSPEX_SHARD")


def resolve_shard(option: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """The option if given (``off`` = not sharded, ``ci`` = the CI's parallel-job variables), else
    ``DSPEX_SHARD``. The CI's variables alone never shard a run."""
    if option is not None and option.strip():
        text = option.strip()
        if text.lower() in OFF:
            return None
        if text.lower() == CI:
            return shard_from_ci(env)
        return parse_shard(text)
    return shard_from_env(env)
