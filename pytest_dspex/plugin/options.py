"""Command-line options (group ``dspex``), their ini twins, and the resolved settings object.

Every option ``--dspex-foo-bar`` has the ini key ``dspex_foo_bar``; the command line wins over
the ini file, which wins over environment variables (``OPENAI_BASE_URL``, ``DSPEX_MODEL``), which
win over the defaults below. This module imports only pytest so an unused plugin costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..errors import ConfigError
from ..evaluation.sharding import Shard, ci_run_id, resolve_shard
from ..lm.secrets import base_url_problem
from ..optimize.registry import DEFAULT_OPTIMIZER, OPTIMIZERS, unknown_optimizer
from ..reports.formats import FORMATS

__all__ = ["OPTIONS", "DspexOptions", "add_options", "resolve"]

#: ``--dspex-concurrency`` unset: examples a process evaluates at once, and where the LM's limit starts
DEFAULT_CONCURRENCY = 16
#: ... and the most the LM's run-wide limit grows to while a remote endpoint answers without a 429
GROWS_TO = 64

# (name, type, default, help). ``None`` defaults mean "not set".
OPTIONS: list[tuple[str, str, Any, str]] = [
    ("model", "str", None, "model name; 'local' (the default when no endpoint is set) starts the embedded llama.cpp model"),
    ("base-url", "str", None, "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 (env: OPENAI_BASE_URL)"),
    ("api-key-env", "str", "OPENAI_API_KEY", "name of the environment variable holding the API key"),
    ("temperature", "float", 0.0, "sampling temperature"),
    ("max-tokens", "int", 256, "max tokens per LM answer"),
    (
        "concurrency",
        "int",
        None,
        "LM requests in flight per endpoint for the whole run (xdist workers share it); default: from 16, "
        "growing up to 64 while a remote endpoint answers without 429 (the first 429 above 16 fixes it there); "
        "a number is a fixed limit (and the examples one process evaluates at once)",
    ),
    ("timeout", "float", 120.0, "seconds to wait for one LM answer (servers that queue need more)"),
    ("retries", "int", 3, "retries on 5xx/timeouts/transport errors/garbled bodies (a 429 has its own 10, after its Retry-After)"),
    (
        "rate-limit-patience",
        "float",
        60.0,
        "seconds an endpoint may answer nothing but HTTP 429 (at least 5 requests in a row) before the run stops "
        "waiting: the breaker opens and calls fail fast as 'rate limited' (a spent quota)",
    ),
    ("cache-dir", "str", ".dspex_cache", "LM response cache directory (relative to rootdir)"),
    ("cache", "choice:on,off,read-only,replay", "on", "cache mode; 'replay' fails on a miss (offline CI)"),
    ("teacher-model", "str", None, "model used as the teacher while compiling (same endpoint)"),
    (
        "optimizer",
        "str",
        DEFAULT_OPTIMIZER,
        f"how --dspex-compile optimizes: {', '.join(sorted(OPTIMIZERS))} ('random-search' races candidate programs; "
        "'bootstrap' is BootstrapFewShot, 'labeled' LabeledFewShot: k demos from the trainset, no teacher calls); "
        "a marker's optimizer= wins",
    ),
    ("demos", "int", 4, "max bootstrapped demos per predictor"),
    ("labeled-demos", "int", 16, "max labeled demos per predictor"),
    ("rounds", "int", 1, "bootstrap rounds per training example"),
    ("candidates", "int", 4, "shuffled candidate programs tried by --dspex-compile"),
    ("seed", "int", 0, "optimizer seed"),
    (
        "metric-threshold",
        "float",
        None,
        "metric value a bootstrapped run needs for its trace to become demos (default: full credit, "
        "True or 1.0; set e.g. 0.8 for a graded metric); a marker's metric_threshold= wins",
    ),
    (
        "calibrate",
        "choice:on,off",
        "on",
        "calibrate the compiled classifier's label bias out when the endpoint returns logprobs and it "
        "scores no worse (pytest_dspex.programs.calibration)",
    ),
    (
        "select",
        "choice:held-out,in-sample",
        "held-out",
        "where --dspex-compile chooses among candidates: 'held-out' = the marker's valset, else the trainset "
        "(no answer from its own demo: each candidate on the examples that are none of its demos with 24+ "
        "of them, else each example without its own demo); 'in-sample' = the gate's own dataset (every view then says so)",
    ),
    (
        "baseline-draws",
        "int",
        0,
        "fresh passes over the gate dataset that make a golden's baseline after the choice (two that agree "
        "on every example end it: a repeatable endpoint); 0 = auto: 1 on the embedded model at temperature 0 "
        "(deterministic), else up to 8 (draws that disagree: a noisy endpoint; the paired gate's power grows with them)",
    ),
    ("tolerance", "float", 0.05, "allowed drop below the golden's recorded score before a regression fails"),
    (
        "alpha",
        "float",
        0.05,
        "significance level of the paired regression gate: the run regressed when the one-sided p-value of "
        "its per-example comparison with the golden is below it",
    ),
    (
        "repeats",
        "int",
        1,
        "evaluate each example N times (each repeat its own rollout id in the cache key); the example's score "
        "reduces them (--dspex-repeat-reduction), examples whose repeats disagree are listed as flaky",
    ),
    (
        "redraws",
        "int",
        1,
        "against a noisy golden baseline (its draws disagree: a sampled or hosted model), ask each example whose "
        "first answer disagrees with its baseline up to N more times with fresh draws: an answer lost for good "
        "stays wrong, a noise flip is redrawn, so the paired gate catches real drops with fewer false alarms. "
        "0 = never; a repeatable endpoint makes no extra call",
    ),
    (
        "repeat-reduction",
        "choice:mean,all,any",
        "mean",
        "an example's score from its repeats: mean; all = pass^k (it passes only if every draw passes: the "
        "worst draw); any = pass@k (the best draw). The gate, flaky list and reports use it",
    ),
    # --dspex-report (json), --dspex-html, --dspex-markdown: one per output format the plugin writes
    *((f.option, "str", None, f.help) for f in FORMATS.values() if f.plugin),
    (
        "max-cost",
        "float",
        None,
        "the run's budget in dollars, shared by xdist workers: past it no new LM calls are made (needs the model's price: --dspex-price)",
    ),
    (
        "price",
        "str",
        None,
        "the model's price in dollars per 1M input and output tokens, INPUT,OUTPUT (e.g. 0.15,0.60): "
        "the cost column and --dspex-max-cost count with it",
    ),
    ("max-calls", "int", None, "the run's budget in LM calls, shared by xdist workers"),
    ("missing-golden", "choice:fail,zero-shot", "fail", "what a normal run does when a program has no golden file"),
    (
        "max-error-rate",
        "float",
        0.05,
        "error budget: share of examples that may fail with LM errors (unreachable, timeouts, HTTP errors, "
        "spent budget) before the verdict is 'LM errors' instead of a score",
    ),
    (
        "shard",
        "str",
        None,
        "run shard K of N (K/N, numbered from 1) of every dataset, examples assigned by their stable key; "
        "'python -m pytest_dspex combine' merges the shards' --dspex-report files into one verdict. 'ci' takes "
        "K/N from the CI's parallel-job variables (GitLab CI_NODE_INDEX/CI_NODE_TOTAL, CircleCI, Buildkite), "
        "which are never read otherwise. Default: DSPEX_SHARD (K/N, ci or off), else not sharded",
    ),
    (
        "cache-url",
        "str",
        None,
        "shared response cache, redis://HOST:PORT/DB (pytest-dspex[redis]); same keys and modes as the disk cache",
    ),
    (
        "run-id",
        "str",
        None,
        "names the run across the shards of a CI job: with --dspex-cache-url (Redis), shards with the same run id "
        "share one --dspex-max-calls / --dspex-max-cost (without it each shard counts its own). Default: DSPEX_RUN_ID, "
        "else, in a sharded run, the CI's build id (GITHUB_RUN_ID and GITHUB_RUN_ATTEMPT, CI_PIPELINE_ID, "
        "CIRCLE_WORKFLOW_ID, BUILDKITE_BUILD_ID)",
    ),
    (
        "example-timeout",
        "float",
        None,
        "seconds one example (program and metric) may take before it is cancelled and recorded as 'timeout' "
        "(default: no limit beyond the LM timeout and retries)",
    ),
]


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("dspex", "pytest-dspex: LM programs as tested, optimized artifacts")
    group.addoption(
        "--dspex-compile",
        dest="dspex_compile",
        nargs="?",
        const="*",
        default=None,
        metavar="NAMES",
        help="optimize programs (all, or the comma-separated NAMES) and write their golden files",
    )
    group.addoption(
        "--dspex-force",
        dest="dspex_force",
        action="store_true",
        default=False,
        help="with --dspex-compile: replace goldens even when their recorded score is higher",
    )
    group.addoption(
        "--dspex-estimate",
        dest="dspex_estimate",
        action="store_true",
        default=False,
        help="make no LM call: run the tests against the response cache and print, per program, the examples, "
        "cached answers, the calls a run would make and their estimated tokens and cost (with --dspex-compile: "
        "the compile's plan); exit 0",
    )
    group.addoption(
        "--dspex-rebaseline",
        dest="dspex_rebaseline",
        nargs="?",
        const="*",
        default=None,
        metavar="NAMES",
        help="measure a fresh baseline for the goldens of all programs (or the comma-separated NAMES) without "
        "re-optimizing: the golden's demos, the program's instructions and the model as they are now "
        "(after an accepted prompt edit or a model upgrade); reports the comparison with the baseline it replaces",
    )
    parser.addini("dspex_compile", "programs to compile (like --dspex-compile)", default=None)
    for name, kind, default, help_text in OPTIONS:
        dest = "dspex_" + name.replace("-", "_")
        kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": f"{help_text} (default: {default})"}
        if kind.startswith("choice:"):
            kwargs["choices"] = kind.split(":", 1)[1].split(",")
        group.addoption(f"--dspex-{name}", **kwargs)
        parser.addini(dest, help_text, default=None)


@dataclass(frozen=True)
class DspexOptions:
    model: str | None
    base_url: str | None
    api_key_env: str
    temperature: float
    max_tokens: int
    concurrency: int
    timeout: float
    retries: int
    cache_dir: Path
    cache: str
    teacher_model: str | None
    demos: int
    labeled_demos: int
    rounds: int
    candidates: int
    seed: int
    tolerance: float
    max_cost: float | None
    max_calls: int | None
    missing_golden: str
    max_error_rate: float
    example_timeout: float | None
    alpha: float
    repeats: int
    compile: frozenset[str] | None  # None = normal run; {"*"} = all programs
    force: bool
    rebaseline: frozenset[str] | None = None  # --dspex-rebaseline: None = no; {"*"} = all programs
    shard: Shard | None = None  # --dspex-shard / DSPEX_SHARD / CI parallel-job variables
    repeat_reduction: str = "mean"  # --dspex-repeat-reduction: mean, all (pass^k), any (pass@k)
    estimate: bool = False  # --dspex-estimate: no LM call; what a run would cost
    cache_url: str | None = None  # --dspex-cache-url: Redis instead of the cache directory
    run_id: str | None = None  # --dspex-run-id / DSPEX_RUN_ID / the CI's build id when sharded: the shards' one budget
    #: report files by format name (``reports.formats``), relative to the invocation directory
    outputs: dict[str, Path] = field(default_factory=dict)
    calibrate: str = "on"  # --dspex-calibrate: on / off
    #: --dspex-price: dollars per 1M (input, output) tokens; None = not known (costs show as $0)
    price: tuple[float, float] | None = None
    metric_threshold: float | None = None  # --dspex-metric-threshold (None: full credit)
    select: str = "held-out"  # --dspex-select: held-out / in-sample
    baseline_draws: int = 0  # --dspex-baseline-draws (0 = auto, see baseline_draws_for)
    redraws: int = 1  # --dspex-redraws: re-asks of an example whose first answer disagrees with a noisy baseline
    optimizer: str = DEFAULT_OPTIMIZER  # --dspex-optimizer: a name in optimize.registry
    rate_limit_patience: float = 60.0  # --dspex-rate-limit-patience: seconds of nothing but 429 before failing fast
    #: without --dspex-concurrency: the LM's run-wide in-flight limit starts at ``concurrency`` and grows up
    #: to this while the endpoint accepts (None: ``concurrency`` is the user's fixed limit, or the embedded model)
    concurrency_grows_to: int | None = None

    @property
    def local(self) -> bool:
        return self.model in (None, "local") and not self.base_url

    @property
    def chunk_size(self) -> int:
        """Per-example items are evaluated in chunks of this many examples, concurrently; under
        xdist each chunk goes to one worker. Four rounds of ``concurrency`` requests per chunk keep
        the pipe full while leaving enough chunks to balance the workers."""
        return self.concurrency * 4

    def compiles(self, program: str) -> bool:
        return self.compile is not None and ("*" in self.compile or program in self.compile)

    def rebaselines(self, program: str) -> bool:
        return self.rebaseline is not None and ("*" in self.rebaseline or program in self.rebaseline)


def _convert(name: str, kind: str, raw: Any) -> Any:
    if raw is None:
        return None
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise pytest.UsageError(f"--dspex-{name} / dspex_{name.replace('-', '_')}: {raw!r} is not {what}") from None
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split(",")
        if raw not in choices:
            raise pytest.UsageError(f"dspex_{name.replace('-', '_')} = {raw!r}: choose one of {', '.join(choices)}")
    return str(raw)


def resolve(config: pytest.Config) -> DspexOptions:
    values: dict[str, Any] = {}
    for name, kind, default, _ in OPTIONS:
        dest = "dspex_" + name.replace("-", "_")
        raw = config.getoption(dest)
        if raw is None:
            raw = config.getini(dest) or None
        value = _convert(name, kind, raw)
        values[name.replace("-", "_")] = default if value is None else value
    base_url_source = "--dspex-base-url / dspex_base_url"
    from .early_env import original_environ

    # --dspex-openai-env may already have pointed OPENAI_BASE_URL at the run's endpoint: the run's own value
    env_base_url = original_environ(config).get("OPENAI_BASE_URL")
    if values["base_url"] is None and env_base_url:
        values["base_url"] = env_base_url
        base_url_source = "OPENAI_BASE_URL"
    if values["base_url"] is not None and (problem := base_url_problem(values["base_url"])):
        raise pytest.UsageError(f"{base_url_source}: {problem}")
    if values["model"] is None and os.environ.get("DSPEX_MODEL"):
        values["model"] = os.environ["DSPEX_MODEL"]
    compile_raw = config.getoption("dspex_compile") or (config.getini("dspex_compile") or None)
    compile_names: frozenset[str] | None = None
    if compile_raw is not None:
        if compile_raw != "*" and ("/" in compile_raw or compile_raw.endswith(".py") or os.path.exists(compile_raw)):
            raise pytest.UsageError(
                f"--dspex-compile took {compile_raw!r} as a program name; write --dspex-compile=NAMES, "
                "or put --dspex-compile after the test paths"
            )
        compile_names = frozenset(n.strip() for n in compile_raw.split(",") if n.strip())
    rebaseline_raw = config.getoption("dspex_rebaseline")
    rebaseline_names: frozenset[str] | None = None
    if rebaseline_raw is not None:
        if rebaseline_raw != "*" and ("/" in rebaseline_raw or rebaseline_raw.endswith(".py") or os.path.exists(rebaseline_raw)):
            raise pytest.UsageError(
                f"--dspex-rebaseline took {rebaseline_raw!r} as a program name; write --dspex-rebaseline=NAMES, "
                "or put --dspex-rebaseline after the test paths"
            )
        rebaseline_names = frozenset(n.strip() for n in rebaseline_raw.split(",") if n.strip())
        if compile_names is not None:
            raise pytest.UsageError(
                "--dspex-rebaseline keeps the goldens' demos, --dspex-compile re-optimizes them (and measures its own "
                "baseline): use one of them"
            )
    force = bool(config.getoption("dspex_force"))
    values["price"] = _price(values["price"])
    if values["concurrency"] is None:  # the default: 16 examples a process; the LM's limit probes up to 64
        values["concurrency"] = DEFAULT_CONCURRENCY
        local = values["model"] in (None, "local") and not values["base_url"]
        values["concurrency_grows_to"] = None if local else GROWS_TO  # the embedded server queues: no probing
    _check(values, compile_names, force, rebaseline_names is not None)
    try:
        values["shard"] = resolve_shard(values["shard"])
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    values["run_id"] = values["run_id"] or os.environ.get("DSPEX_RUN_ID", "").strip() or (ci_run_id() if values["shard"] else None)
    if values["shard"] is not None and rebaseline_names is not None:
        raise pytest.UsageError(
            f"--dspex-rebaseline is not sharded (one writer per golden file), but this run is shard {values['shard']} "
            f"(from {values['shard'].source}); re-baseline in one job, or pass --dspex-shard=off"
        )
    if values["shard"] is not None and compile_names is not None:
        raise pytest.UsageError(
            f"--dspex-compile is not sharded (one writer per golden file), but this run is shard "
            f"{values['shard']} (from {values['shard'].source}); compile in one job, or pass --dspex-shard=off"
        )
    cache_dir = Path(values.pop("cache_dir"))
    outputs = {f.name: Path(path) for f in FORMATS.values() if f.plugin and (path := values.pop(f.option.replace("-", "_")))}
    estimate = bool(config.getoption("dspex_estimate", False))
    if estimate:
        values["missing_golden"] = "zero-shot"  # an estimate counts the calls of a program without its golden too
    return DspexOptions(
        **values,
        estimate=estimate,
        cache_dir=cache_dir if cache_dir.is_absolute() else Path(config.rootpath) / cache_dir,
        outputs=outputs,
        compile=compile_names,
        force=force,
        rebaseline=rebaseline_names,
    )


def _price(raw: str | None) -> tuple[float, float] | None:
    """``--dspex-price=INPUT,OUTPUT`` (dollars per 1M tokens) as a pair, or a usage error saying the form."""
    if raw is None or not raw.strip():
        return None
    parts = [p.strip().lstrip("$") for p in raw.replace("/", ",").split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        price = (float(parts[0]), float(parts[1]))
    except ValueError:
        raise pytest.UsageError(
            f"--dspex-price / dspex_price: {raw!r} is not a price; write INPUT,OUTPUT in dollars per 1M tokens, "
            "e.g. --dspex-price=0.15,0.60"
        ) from None
    if min(price) < 0 or price[0] != price[0] or price[1] != price[1]:
        raise pytest.UsageError(f"--dspex-price: prices must be >= 0, got {raw!r}")
    return price


def _check_budget(values: dict[str, Any]) -> None:
    """``--dspex-max-cost`` without a price to count with would never stop anything: a usage error."""
    if values["max_cost"] is None:
        return
    price = values["price"]
    if price is not None and max(price) > 0:
        return
    local = values["model"] in (None, "local") and not values["base_url"]
    model = "the embedded model" if local else f"model {values['model']!r}"
    why = (
        "the embedded model costs nothing"
        if local and price is None
        else f"no price is known for {model}"
        if price is None
        else f"--dspex-price gives {model} a price of 0"
    )
    raise pytest.UsageError(
        f"--dspex-max-cost={values['max_cost']:g}: {why}, so the budget could never be reached. Set the "
        "price in dollars per 1M input and output tokens with --dspex-price=INPUT,OUTPUT (e.g. "
        "--dspex-price=0.15,0.60; ini dspex_price) — in Python, LM(..., price_per_1m_input=..., "
        "price_per_1m_output=...) — or limit the calls with --dspex-max-calls"
    )


def _check(
    values: dict[str, Any], compile_names: frozenset[str] | None, force: bool, rebaselining: bool = False
) -> None:
    if force and compile_names is None and not rebaselining:
        raise pytest.UsageError("--dspex-force only makes sense with --dspex-compile or --dspex-rebaseline")
    if values["model"] == "local" and values["base_url"]:
        raise pytest.UsageError(
            "--dspex-model=local starts the embedded model; it conflicts with --dspex-base-url "
            f"({values['base_url']}). Drop one of them."
        )
    for name in ("concurrency", "max_tokens", "demos", "rounds"):
        if values[name] < 1:
            raise pytest.UsageError(f"--dspex-{name.replace('_', '-')} must be >= 1, got {values[name]}")
    for name in ("labeled_demos", "candidates", "retries"):
        if values[name] < 0:
            raise pytest.UsageError(f"--dspex-{name.replace('_', '-')} must be >= 0, got {values[name]}")
    if values["timeout"] <= 0:
        raise pytest.UsageError(f"--dspex-timeout must be > 0, got {values['timeout']}")
    if values["rate_limit_patience"] < 0:
        raise pytest.UsageError(f"--dspex-rate-limit-patience must be >= 0, got {values['rate_limit_patience']}")
    if not 0 <= values["tolerance"] <= 1:
        raise pytest.UsageError(f"--dspex-tolerance must be between 0 and 1, got {values['tolerance']}")
    if values["max_calls"] is not None and values["max_calls"] < 0:  # -3 behaved as 0: every example an LM error
        raise pytest.UsageError(f"--dspex-max-calls must be >= 0, got {values['max_calls']}")
    if values["max_cost"] is not None and values["max_cost"] < 0:
        raise pytest.UsageError(f"--dspex-max-cost must be >= 0, got {values['max_cost']}")
    _check_budget(values)
    if not 0 <= values["max_error_rate"] <= 1:
        raise pytest.UsageError(f"--dspex-max-error-rate must be between 0 and 1, got {values['max_error_rate']}")
    if not 0 < values["alpha"] < 1:
        raise pytest.UsageError(f"--dspex-alpha must be between 0 and 1 (exclusive), got {values['alpha']}")
    if values["baseline_draws"] < 0:
        raise pytest.UsageError(f"--dspex-baseline-draws must be >= 1 (or 0 for auto), got {values['baseline_draws']}")
    if values["redraws"] < 0:
        raise pytest.UsageError(f"--dspex-redraws must be >= 0 (0: never re-ask), got {values['redraws']}")
    if values["repeats"] < 1:
        raise pytest.UsageError(f"--dspex-repeats must be >= 1, got {values['repeats']}")
    if values["metric_threshold"] is not None and not 0 <= values["metric_threshold"] <= 1:
        raise pytest.UsageError(f"--dspex-metric-threshold must be between 0 and 1, got {values['metric_threshold']}")
    if (problem := unknown_optimizer(values["optimizer"])) is not None:
        raise pytest.UsageError(f"--dspex-optimizer / dspex_optimizer: {problem}")
    if values["example_timeout"] is not None and values["example_timeout"] <= 0:
        raise pytest.UsageError(f"--dspex-example-timeout must be > 0, got {values['example_timeout']}")
