"""Which examples a shard evaluates: stable, a partition, configured from the option or CI variables."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_dspex.errors import ConfigError
from pytest_dspex.evaluation.sharding import (
    Shard,
    ci_parallel_variables,
    ci_run_id,
    in_shard,
    parse_shard,
    resolve_shard,
    shard_from_ci,
    shard_from_env,
    shard_of,
)

KEYS = [f"ex-{i}" for i in range(1000)] + [f"h:{i:016x}" for i in range(1000)]


def test_every_example_goes_to_exactly_one_shard_and_shards_are_balanced() -> None:
    for n in (1, 2, 3, 7):
        shards = [Shard(k, n) for k in range(1, n + 1)]
        picked = [set(s.select(KEYS)) for s in shards]
        assert sorted(i for p in picked for i in p) == list(range(len(KEYS)))  # a partition
        for p in picked:
            assert abs(len(p) - len(KEYS) / n) < 0.15 * len(KEYS) / n + 20


def test_assignment_is_a_stable_hash_not_pythons_hash() -> None:
    # fixed vectors: changing the function would split old shards' reports differently
    assert [shard_of(k, 3) for k in ("ex-0", "ex-1", "ex-17", "h:00000000000000ff")] == [3, 1, 2, 1]
    code = "from pytest_dspex.evaluation.sharding import shard_of; print([shard_of(f'ex-{i}', 5) for i in range(200)])"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert outs == {str([shard_of(f"ex-{i}", 5) for i in range(200)]) + "\n"}


def test_known_assignments() -> None:
    import hashlib

    for key in ("ex-17", "h:0123456789abcdef", "ünïcode"):
        expected = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 4 + 1
        assert shard_of(key, 4) == expected
        assert in_shard(key, expected, 4)
        assert key in Shard(expected, 4)


@pytest.mark.parametrize(("text", "shard"), [("1/3", (1, 3)), (" 3 / 3 ", (3, 3)), ("1/1", (1, 1))])
def test_parse(text: str, shard: tuple[int, int]) -> None:
    s = parse_shard(text)
    assert (s.index, s.count) == shard
    assert str(s) == f"{shard[0]}/{shard[1]}" and s.to_json() == {"index": shard[0], "count": shard[1]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/3", "numbered from 1"),
        ("4/3", "between 1 and 3"),
        ("1/0", "at least 1"),
        ("2", "expected K/N"),
        ("a/b", "expected K/N"),
        ("-1/3", "expected K/N"),
        ("1/3/4", "expected K/N"),
    ],
)
def test_bad_shards_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_shard(text)


def test_option_wins_over_dspex_shard_and_off_ignores_it() -> None:
    env = {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "4", "DSPEX_SHARD": "3/5"}
    assert resolve_shard("1/2", env) == Shard(1, 2)
    assert resolve_shard("off", env) is None
    assert resolve_shard(None, env) == Shard(3, 5, "DSPEX_SHARD")
    assert resolve_shard("", {}) is None


def test_ci_variables_shard_only_when_asked_for() -> None:
    """Issue 19: GitLab's ``parallel:`` (used by many teams only to split their unit tests) set
    CI_NODE_INDEX/CI_NODE_TOTAL, and the LM gate of every job was silently deferred to a combine
    job nobody wrote. The CI's variables now shard only with ``ci`` (option, ini or DSPEX_SHARD)."""
    env = {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "4"}
    assert resolve_shard(None, env) is None
    assert resolve_shard("off", env) is None
    assert resolve_shard("ci", env) == Shard(2, 4, "GitLab CI (CI_NODE_INDEX=2, CI_NODE_TOTAL=4)")
    assert resolve_shard(None, {**env, "DSPEX_SHARD": "ci"}) == Shard(2, 4, "GitLab CI (CI_NODE_INDEX=2, CI_NODE_TOTAL=4)")
    assert resolve_shard("ci", {}) is None  # not a parallel job: nothing to split
    assert resolve_shard("3/4", env) == Shard(3, 4)  # --dspex-shard=K/N stays explicit
    assert ci_parallel_variables(env) == "CI_NODE_INDEX=2, CI_NODE_TOTAL=4"
    assert ci_parallel_variables({"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "1"}) is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "3"}, (1, 3)),  # GitLab: 1-based
        ({"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "3"}, (3, 3)),
        ({"CI_NODE_TOTAL": "1"}, None),  # GitLab sets the total to 1 for a job that is not parallel
        ({"CIRCLE_NODE_INDEX": "0", "CIRCLE_NODE_TOTAL": "4"}, (1, 4)),  # CircleCI: 0-based
        ({"CIRCLE_NODE_INDEX": "3", "CIRCLE_NODE_TOTAL": "4"}, (4, 4)),
        ({"CIRCLE_NODE_INDEX": "0", "CIRCLE_NODE_TOTAL": "1"}, None),
        ({"BUILDKITE_PARALLEL_JOB": "0", "BUILDKITE_PARALLEL_JOB_COUNT": "2"}, (1, 2)),  # Buildkite: 0-based
        ({"BUILDKITE_PARALLEL_JOB": "1", "BUILDKITE_PARALLEL_JOB_COUNT": "2"}, (2, 2)),
        ({"GITHUB_ACTIONS": "true"}, None),
        ({}, None),
    ],
)
def test_ci_variables(env: dict[str, str], expected: tuple[int, int] | None) -> None:
    s = shard_from_ci(env)
    assert (None if s is None else (s.index, s.count)) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CIRCLE_NODE_INDEX": "4", "CIRCLE_NODE_TOTAL": "4"}, r"CircleCI .*between 1 and 4"),
        ({"CI_NODE_INDEX": "0", "CI_NODE_TOTAL": "2"}, r"GitLab CI .*numbered from 1"),
        ({"BUILDKITE_PARALLEL_JOB": "x", "BUILDKITE_PARALLEL_JOB_COUNT": "2"}, "BUILDKITE_PARALLEL_JOB='x'"),
        ({"DSPEX_SHARD": "3of4"}, "DSPEX_SHARD='3of4'"),
    ],
)
def test_bad_ci_variables_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        shard_from_env({**env, "DSPEX_SHARD": env.get("DSPEX_SHARD", "ci")})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DSPEX_SHARD": "2/3"}, (2, 3)),
        ({"DSPEX_SHARD": "off", "CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"}, None),
        ({"DSPEX_SHARD": "ci", "CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"}, (1, 2)),
        ({"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"}, None),
    ],
)
def test_dspex_shard_variable(env: dict[str, str], expected: tuple[int, int] | None) -> None:
    s = shard_from_env(env)
    assert (None if s is None else (s.index, s.count)) == expected


def test_the_ci_build_names_the_run_its_shards_share():
    """All parallel jobs of one CI build see the same build id: it names the run (its shards' one budget)."""
    assert ci_run_id({"GITHUB_RUN_ID": "123", "GITHUB_RUN_ATTEMPT": "2"}) == "GITHUB_RUN_ID=123-2"
    assert ci_run_id({"CI_PIPELINE_ID": "77", "CI_NODE_INDEX": "1"}) == "CI_PIPELINE_ID=77"
    assert ci_run_id({"CIRCLE_WORKFLOW_ID": "w-1"}) == "CIRCLE_WORKFLOW_ID=w-1"
    assert ci_run_id({"BUILDKITE_BUILD_ID": "b"}) == "BUILDKITE_BUILD_ID=b"
    assert ci_run_id({"HOME": "/root"}) is None
