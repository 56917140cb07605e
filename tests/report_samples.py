"""Reports shaped like ``--dspex-report`` output, for the renderer tests (HTML, markdown, JUnit, CLI)."""

from __future__ import annotations

from typing import Any

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">&amp; | **bold** `tick`'

MESSAGES = [
    ("I was charged twice for my subscription", "billing"),
    ("The app crashes when I open settings", "technical"),
    ("Please change the email on my account", "account"),
    ("Do you have a student discount?", "other"),
    ("My invoice shows the wrong VAT number", "billing"),
    ("Export to CSV times out after a minute", "technical"),
]


def record(i: int, *, outcome: str = "pass", message: str | None = None, key: str | None = None) -> dict[str, Any]:
    text, team = MESSAGES[i % len(MESSAGES)]
    wrong = "technical" if team != "technical" else "billing"
    rec: dict[str, Any] = {
        "index": i,
        "key": key or f"ex-{i}",
        "inputs": {"message": message if message is not None else f"{text} (#{i})"},
        "expected": {"team": team},
        "prediction": {"team": team},
        "score": 1.0,
        "repeats": None,
        "error_kind": None,
        "error": None,
        "latency_s": 0.05 + (i % 7) / 100,
        "usage": {"calls": 1, "cache_hits": i % 2, "prompt_tokens": 120, "completion_tokens": 3, "cost": 0.0},
    }
    if outcome == "miss":
        rec.update(prediction={"team": wrong}, score=0.0)
    elif outcome == "parse":
        rec.update(prediction=None, score=0.0, error_kind="parse", error="AdapterParseError: answer has no Team")
    elif outcome == "error":
        rec.update(prediction=None, score=0.0, error_kind="lm_timeout", error="LMTimeoutError: no answer within 30 s")
    return rec


def program_row(
    name: str = "triage",
    n: int = 40,
    *,
    misses: int = 6,
    errors: int = 2,
    regressions: int = 3,
    fixes: int = 1,
    passed: bool = True,
    evil: bool = False,
) -> dict[str, Any]:
    records = []
    for i in range(n):
        outcome = "miss" if i < misses else "error" if i < misses + errors else "pass"
        records.append(record(i, outcome=outcome, message=EVIL if evil and i == 0 else None))
    score = sum(r["score"] for r in records) / n
    regressed = [r["key"] for r in records if r["score"] < 1][:regressions]
    fixed = [r["key"] for r in records if r["score"] == 1][:fixes]
    return {
        "program": name,
        "mode": "dataset",
        "dataset": "tests/data/triage.jsonl",
        "test": f"tests/test_{name}.py::test_{name}",
        "metric": "team_matches",
        "threshold": 0.7,
        "tolerance": 0.05,
        "score": score,
        "n": n,
        "ci95": [max(0.0, score - 0.1), min(1.0, score + 0.08)],
        "errors": errors,
        "errors_by_kind": {"lm_timeout": errors} if errors else {},
        "usage": {"calls": n + 3, "cache_hits": n // 2, "prompt_tokens": 120 * n, "completion_tokens": 3 * n, "cost": 0.0123},
        "golden": f"tests/__dspex__/test_{name}/{name}.json",
        "golden_score": score + 0.025,
        "verdict": {"passed": passed, "reason": "" if passed else "regressed: 3 examples flipped (p=0.031)", "kind": None if passed else "regressed"},
        "comparison": {
            "delta": -0.025, "delta_ci95": [-0.07, 0.02], "p_value": 0.031, "verdict": "regressed" if not passed else "no change",
            "regressions": regressed, "fixes": fixed, "shared": n, "underpowered": False, "needed_n": None,
            "test": "mcnemar-exact",
        },
        "flaky": [],
        "prompts": {"self": [
            {"role": "system", "content": "Route a customer message to the team that should handle it.\nAnswer with: Team (one of: billing, technical, account, other)."},
            {"role": "user", "content": "Message: I was charged twice\nTeam: billing\n\nMessage: {message}\nTeam:"},
        ]},
        "records": records,
    }  # fmt: skip


def report(*programs: dict[str, Any], evil_meta: bool = False) -> dict[str, Any]:
    rows = list(programs) or [program_row()]
    return {
        "plugin_version": "0.1.0",
        "created": "2026-11-26T01:30:00+00:00",
        "rootdir": ".",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "model": {
            "model": EVIL if evil_meta else "gemma-3-270m",
            "base_url": "http://user:sk-secret@127.0.0.1:8080/v1?api_key=sk-secret&x=1",
        },
        "passed": all(r["verdict"]["passed"] for r in rows),
        "shard": None,
        "programs": rows,
        "goldens": {},
        "unused_goldens": ["tests/__dspex__/test_old/old.json"],
    }
