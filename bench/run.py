"""Benchmarks: every figure in bench/RESULTS.md and in the README's "Measured" table, from one run.

    python bench/run.py              # the full run (44 min on a busy 2-core machine; RESULTS.md says how long)
    python bench/run.py --fast       # smaller N, one repeat, long sections skipped (~5 min); writes
                                     # bench/RESULTS-fast.md and leaves RESULTS.md and the README alone
    python bench/run.py --only ci_path,gate_power   # some sections (written to RESULTS-partial.md)
    python bench/run.py --no-dspy    # without the DSPy side

DSPy 3.4.1 runs in its own venv: ``bench/.dspy-venv`` (made on first use, or a link to one;
``DSPEX_BENCH_DSPY_VENV`` names another). Each case runs in a fresh process against
``pytest_dspex.testing.fake_server`` (an OpenAI-compatible server with a fixed latency) in its own process.

**Adding a section is one line in SECTIONS**: a title and ``"module:function"`` in bench/, the function
taking the run's ``Context`` and returning the section's markdown lines; it records its targets with
``ctx.target(...)`` (they go to the summary table, and to the README's table on a full run, a missed
one marked **missed**). Sections that run a script as it is (``script_section``) put its output in
the results verbatim. Nothing in RESULTS.md is written by hand.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import dspy_python  # noqa: E402

# (key, title, "module:function"); the function: (Context) -> list of markdown lines
SECTIONS: list[tuple[str, str, str]] = [
    ("vs_dspy", "pytest-dspex and DSPy 3.4.1, measured alike", "sections:vs_dspy"),
    ("ci_path", "The CI path: replay from disk, start-up, 100k examples (issue 28)", "sections:ci_path"),
    ("faults", "Faults (DESIGN §9)", "cases_faults:section"),
    ("gate_power", "The paired gate's power (DESIGN §5b)", "cases_gates:power_section"),
    ("gate_stability", "Gate stability after a compile (issue 18)", "cases_baseline:section"),
    ("noisy_gate", "The paired gate against a noisy baseline, simulated (issue 18)", "sim_noisy_gate:section"),
    ("small_noisy_gate", "Small gate sets against a noisy baseline: the tolerance rule's false alarms, simulated", "sim_small_noisy_gate:section"),
    ("example_compile", "The example project's compile: the embedded server's work (issue 18)", "example_compile:section"),
    ("extract", "The embedded model on an extraction task with a number (issue 26)", "cases_extract:section"),
    ("batched", "The embedded server's batch engine: 48 find_product requests, serial vs batched (issues 18, 26)", "embedded_replay:section"),
    ("generalisation", "Gate-set scores beside unseen examples, by selection rule (issue 18)", "generalisation:section"),
    ("html", "HTML report (issue 12)", "sections:html_report"),
    ("redis", "Redis cache (issue 14)", "sections:redis"),
    ("shards", "Shards and combine (issue 14)", "sections:shards"),
    ("remote", "Remote workers in network namespaces (issue 14)", "sections:remote"),
    ("embedded", "Embedded model: compile on Gemma 3 270M (issue 13)", "sections:embedded"),
    ("bootstrap_calls", "BootstrapFewShot: calls and demos vs DSPy at four accuracies (issues 24, 25)", "bootstrap_calls:section"),
    ("optimizers", "Each --dspex-optimizer: one compile's LM calls by kind (issue 20)", "optimizers:section"),
    ("demo_quality", "Demos complete and earned: issue 24's reproductions", "demo_quality:section"),
    ("dspy_migration", "DSPy users at home: saves imported (issue 25)", "sections:dspy_migration"),
    ("estimate", "--dspex-estimate against the run that follows: calls and tokens (issue 21)", "estimate_tokens:section"),
    ("loopback", "Any LM code under the gate: the loopback endpoint (issue 22)", "cases_loopback:section"),
    ("run_limits", "Run-wide LM limits under xdist (issue 21)", "cases_limits:section"),
    ("xdist_cpu", "Where an xdist worker's CPU goes, by phase (issue 21)", "cases_xdist_cpu:section"),
    ("layers", "The package's structure drawn from its imports (issue 20)", "layers:section"),
]


@dataclass
class Target:
    section: str
    what: str
    figure: str
    target: str
    met: bool | None  # None: a figure without a target


@dataclass
class Context:
    fast: bool
    py: str
    dpy: str | None
    section: str = ""
    targets: list[Target] = field(default_factory=list)

    def target(self, what: str, figure: str, target: str, met: bool | None) -> None:
        self.targets.append(Target(self.section, what, figure, target, met))


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, load average {load:.1f} at the start")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fast", action="store_true", help="smaller N, one repeat, long sections skipped")
    ap.add_argument("--only", help="comma-separated section keys: " + ", ".join(k for k, _, _ in SECTIONS))
    ap.add_argument("--no-dspy", action="store_true")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    ctx = Context(fast=args.fast, py=sys.executable, dpy=None if args.no_dspy else dspy_python())
    started, t0 = datetime.now(UTC), time.perf_counter()
    header_machine = machine()
    chosen = [(k, title, where) for k, title, where in SECTIONS if only is None or k in only]
    out = HERE / ("RESULTS-fast.md" if args.fast else "RESULTS-partial.md" if only else "RESULTS.md")
    cmd = "python bench/run.py" + (" --fast" if args.fast else "") + (f" --only {args.only}" if args.only else "")
    body: list[str] = []
    for done, (_key, title, where) in enumerate(chosen, 1):
        module, func = where.split(":")
        fn: Callable[[Context], list[str]] = getattr(importlib.import_module(module), func)
        ctx.section = title
        s0 = time.perf_counter()
        print(f"== {title}", flush=True)
        try:
            lines = fn(ctx)
        except Exception as exc:  # a broken case is said in the results, never left out silently
            lines = ["**This section failed:**", "", "```", *traceback.format_exception(exc)[-12:], "```"]
            ctx.target(title, "the section failed", "runs", False)
        took = time.perf_counter() - s0
        body += [f"## {title}", "", *lines, "", f"_Section took {took:.0f} s._", ""]
        print("\n".join(lines), flush=True)
        # written after every section (atomically), so an interrupted run still shows what it measured
        status = "" if done == len(chosen) else f" — **incomplete: {done} of {len(chosen)} sections so far**"
        write(out, cmd, args.fast, started, time.perf_counter() - t0, header_machine, ctx.targets, body, status)
    print(f"wrote {out} ({(time.perf_counter() - t0) / 60:.1f} min)")
    if not args.fast and only is None:
        update_readme(ctx.targets, started, header_machine)


def write(out: Path, cmd: str, fast: bool, started: datetime, total: float, where: str, targets: list[Target],
          body: list[str], status: str) -> None:  # fmt: skip
    mode = "fast mode" if fast else ("some sections" if "--only" in cmd else "full run")
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{cmd}` ({mode}) on {started.strftime('%Y-%m-%d %H:%M UTC')}, {total / 60:.1f} min{status} — {where}.",
        *busy_note(),
        "Client and servers on the same machine (loopback). Every line below comes from this run; regenerate",
        "with `python bench/run.py` (full run; `--fast` for a quick check that writes RESULTS-fast.md).",
        "",
        "## Targets",
        "",
        *target_table(targets),
        "",
        *body,
    ]
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)


def busy_note() -> list[str]:
    """Said when the machine was busier than its cores: wall-clock figures are then upper bounds."""
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1):
        return ["**The machine was busy (load average above its core count): wall-clock figures are upper bounds;",
                "CPU times, peak RSS and counts hold.**"]  # fmt: skip
    return []


def verdict(t: Target) -> str:
    return "" if t.met is None else "met" if t.met else "**missed**"


def target_table(targets: list[Target]) -> list[str]:
    rows = ["| what | measured | target | |", "|---|---|---|---|"]
    rows += [f"| {t.what} | {t.figure} | {t.target} | {verdict(t)} |" for t in targets]
    return rows


README_START = "<!-- bench/run.py: targets start -->"
README_END = "<!-- bench/run.py: targets end -->"


def update_readme(targets: list[Target], started: datetime, where: str) -> None:
    """The README's table of measured figures, replaced by this run's (between the two markers)."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        print("README.md has no bench markers; its table was not updated")
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    table = [
        README_START,
        f"From `python bench/run.py`, {started.strftime('%Y-%m-%d')} ({where}); details in bench/RESULTS.md.",
        *busy_note(),
        "",
        *target_table([t for t in targets if t.met is not None]),
        README_END,
    ]
    readme.write_text(head + "\n".join(table) + tail)
    print("README.md: table updated")


if __name__ == "__main__":
    main()

