"""Reading one program row of the JSON report, shared by the HTML, markdown and JUnit renderers.

The report's shape is fixed by the team contract (``--dspex-report``); the readers here also accept
the first release's flat rows (``passed``/``reason`` beside ``score`` instead of a ``verdict`` object,
``usage.tokens`` instead of prompt and completion tokens), so an old report still renders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..evaluation.records import ANSWER_ERROR_KINDS, split_expected

__all__ = [
    "Outcome",
    "ProgramView",
    "clean_url",
    "endpoint_text",
    "fields_text",
    "fmt_ci",
    "fmt_delta",
    "fmt_interval",
    "fmt_num",
    "fmt_p",
    "fmt_score",
    "miss_lines",
    "outcome",
    "record_json",
    "split_expected",
    "value_text",
]

Outcome = str  # "pass" | "miss" | "error"

#: Error kinds that are the model's answer, not a failure to get one: scored 0 and shown as a miss.
_MISS_KINDS = ANSWER_ERROR_KINDS
_SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "token", "access_token", "secret", "password", "sig", "signature"})


def outcome(record: Mapping[str, Any]) -> Outcome:
    """``"pass"``, ``"miss"`` (scored below 1, or an answer that did not parse) or ``"error"``.

    An error is anything that kept the example from being scored on its merits: the LM could not be
    reached or timed out, the budget ran out, the program or the metric raised.
    """
    kind = record.get("error_kind")
    if kind and kind not in _MISS_KINDS:
        return "error"
    if kind or float(record.get("score") or 0.0) < 1.0:
        return "miss"
    return "pass"


def record_json(record: Any) -> dict[str, Any]:
    """An ``ExampleRecord`` (or its JSON form) as its JSON form."""
    if isinstance(record, Mapping):
        return dict(record)
    to_json = getattr(record, "to_json", None)
    if callable(to_json):
        data = to_json()
        if isinstance(data, dict):
            return data
    raise TypeError(f"expected an ExampleRecord or its JSON form, got {type(record).__name__}")


def miss_lines(record: Mapping[str, Any], width: int = 200) -> list[str]:
    """What a reviewer needs to see of a miss: its key, inputs, expected vs got, and the parse error."""

    def cut(text: str) -> str:
        text = text.replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    outs, meta = split_expected(record)
    key = str(record.get("key") or record.get("index", ""))
    extra = {k: v for k, v in meta.items() if value_text(v) != key}  # the key is often the id itself
    lines = [f"example {key}" + (f" ({', '.join(f'{k}={value_text(v)}' for k, v in extra.items())})" if extra else "")]
    for name, value in (record.get("inputs") or {}).items():
        lines.append(cut(f"  input    {name}: {value_text(value)}"))
    predicted = record.get("prediction") or {}
    for name, value in outs.items():
        got = value_text(predicted[name]) if name in predicted else "-" + (" (no such field in the prediction)" if predicted else "")
        lines.append(cut(f"  expected {name}: {value_text(value)}"))
        lines.append(cut(f"  got      {name}: {got}"))
    if not outs and predicted:
        lines.append(cut(f"  got      {fields_text(predicted)}"))
    elif predicted and any(name not in predicted for name in outs):
        # an expected field the prediction lacks (an output renamed, the dataset not): show what it has
        for name, value in predicted.items():
            if name not in outs:
                lines.append(cut(f"  got      {name}: {value_text(value)}"))
    if record.get("error_kind"):
        lines.append(cut(f"  {record['error_kind']} error: {record.get('error') or ''}"))
    lines.append(f"  score    {fmt_num(record.get('score'))}")
    return lines


def endpoint_text(url: Any) -> str:
    """An endpoint for a footer or metadata: ``at <url>`` for a URL, the word alone otherwise (``embedded``)."""
    text = clean_url(url)
    if not text:
        return ""
    return f"at {text}" if "://" in text else f"({text})"


def clean_url(url: Any) -> str:
    """An endpoint as safe to show: no user or password, no secret-looking query parameters."""
    if not url:
        return ""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in _SECRET_PARAMS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def value_text(value: Any) -> str:
    """A field value as one would read it: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def fields_text(values: Mapping[str, Any] | None) -> str:
    """``field: value`` lines (one field: just the value)."""
    if not values:
        return ""
    if len(values) == 1:
        return value_text(next(iter(values.values())))
    return "\n".join(f"{k}: {value_text(v)}" for k, v in values.items())


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "-"
    return f"{number:.{digits}f}"


def fmt_ci(ci: Any, digits: int = 2) -> str:
    if not ci or len(ci) != 2:
        return ""
    return f"{fmt_num(ci[0], digits)}–{fmt_num(ci[1], digits)}"


def fmt_interval(ci: Any, digits: int = 3) -> str:
    """``[-0.070, +0.020]``: an interval of signed values (a delta's CI)."""
    if not ci or len(ci) != 2:
        return ""
    return f"[{fmt_delta(ci[0], digits)}, {fmt_delta(ci[1], digits)}]"


def fmt_score(score: Any, ci: Any) -> str:
    text = fmt_num(score)
    interval = fmt_ci(ci)
    return f"{text} ({interval})" if interval else text


def fmt_delta(delta: Any, digits: int = 3) -> str:
    if delta is None:
        return "-"
    return f"{float(delta) + 0.0:+.{digits}f}"


def fmt_p(p: Any) -> str:
    if p is None:
        return "-"
    p = float(p)
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: Any) -> str:
    """``p<0.001`` / ``p=0.012`` (not ``p=<0.001``)."""
    shown = fmt_p(p)
    return f"p{shown}" if shown.startswith("<") else f"p={shown}"


@dataclass(frozen=True)
class ProgramView:
    """One program row of the report, read the same way by every renderer."""

    row: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.row.get("program", "?"))

    @property
    def mode(self) -> str:
        return str(self.row.get("mode") or "dataset")

    @property
    def verdict(self) -> dict[str, Any]:
        v = self.row.get("verdict")
        if isinstance(v, Mapping):
            return dict(v)
        return {"passed": bool(self.row.get("passed")), "reason": self.row.get("reason") or "", "kind": self.row.get("kind")}

    @property
    def passed(self) -> bool:
        return bool(self.verdict.get("passed"))

    @property
    def incomplete(self) -> bool:
        """Not all of its examples ran (``-x``, an interruption, ``-k``): no gate verdict at all."""
        return self.verdict.get("kind") == "incomplete"

    @property
    def deferred(self) -> bool:
        """A shard job's share (``--dspex-shard``): not judged here, ``combine`` gives the verdict. Its
        ``passed`` is only "did not fail the job": no view may show it as a pass."""
        return self.verdict.get("kind") == "deferred"

    @property
    def verdict_text(self) -> str:
        v = self.verdict
        if self.deferred:  # "shard 2/3: 11 of 30 examples; gate deferred to `python -m pytest_dspex combine`"
            return str(v.get("reason") or "deferred")
        if v.get("passed"):
            return "pass"
        if self.incomplete:
            return str(v.get("reason") or "incomplete")
        reason = str(v.get("reason") or v.get("kind") or "")
        return f"FAIL: {reason}" if reason else "FAIL"

    @property
    def test_short(self) -> str:
        """The test, without its directory: ``test_triage.py::test_each``."""
        test = str(self.row.get("test") or "")
        path, sep, rest = test.partition("::")
        return (path.rsplit("/", 1)[-1] + sep + rest) if sep else test

    @property
    def baseline(self) -> float | None:
        """The golden's score to compare with: on the examples both share when a paired comparison
        ran (the dev set may have changed since compiling), else the golden's recorded score."""
        return self._against[0]

    @property
    def _against(self) -> tuple[float | None, float | None, str]:
        """``(golden, delta, why_not)``, computed as the failure sentence computes it (``against_golden``)."""
        from ..evaluation.gates import PROGRAM_ERRORS, against_golden

        if self.verdict.get("kind") == PROGRAM_ERRORS:  # the program raised: nothing measured to compare
            return None, None, "program raised"
        if self.row.get("golden_written"):  # a compile or re-baseline run: its golden is this run's own baseline
            return None, None, "golden written"
        return against_golden(self.row.get("score"), self.row.get("golden_score"), self.comparison, incomplete=self.incomplete)

    @property
    def failed_checks(self) -> list[str]:
        """Every check that failed, in words (a run below its threshold may also have regressed)."""
        from ..evaluation.gates import threshold_cause, threshold_cause_words, tolerance_regression, tolerance_words

        v = self.verdict
        if v.get("passed"):
            return []
        kind = v.get("kind")
        if kind in ("lm_errors", "program_errors", "metric_errors", "no_examples", "deferred") or kind is None:
            return [str(v.get("reason") or kind or "failed")]
        row, c = self.row, self.comparison
        out: list[str] = []
        score, threshold = row.get("score"), row.get("threshold")
        if threshold is not None and score is not None and float(score) < float(threshold):
            raw = row.get("golden_score")  # the golden's own baseline below it too, or the endpoint's noise: said
            golden = None if raw is None else float(raw)
            cause = threshold_cause(float(threshold), golden, c)
            out.append(f"below threshold ({fmt_num(score)} < {fmt_num(threshold, 2)})" + threshold_cause_words(cause, c, golden))
        if c is not None and c.get("verdict") == "regressed":
            out.append(f"regressed: {len(c.get('regressions') or [])} of {c.get('shared')} shared examples worse ({p_text(c.get('p_value'))})")
        elif kind == "regression" or tolerance_regression(c):  # by the tolerance, with a failed threshold too
            tolerance = row.get("tolerance")
            base = self.baseline
            text = "regression: below the golden"
            if base is not None:
                text += f" {fmt_num(base)}"
            if c is not None and c.get("noise_sd"):  # a noisy baseline: the noise allowance as well
                text += f" − {tolerance_words(c)}"
            elif tolerance is not None:
                text += f" − tolerance {fmt_num(tolerance, 2)}"
            if c is not None and c.get("underpowered"):
                text += " (the paired test is underpowered, so the tolerance decides)"
            out.append(text)
        return out or [str(v.get("reason") or kind)]

    @property
    def verdict_words(self) -> str:
        """``pass``, or ``FAIL: `` and every failed check in words (no example keys: those are listed apart)."""
        if self.incomplete or self.deferred:  # "incomplete: 3 of 40 examples ran (...); no gate verdict"
            return str(self.verdict.get("reason") or self.verdict.get("kind"))
        return "pass" if self.passed else "FAIL: " + "; ".join(self.failed_checks)

    @property
    def verdict_short(self) -> str:
        """``pass`` or ``FAIL: <kind>`` (the reason when the verdict names no kind)."""
        v = self.verdict
        if self.deferred:
            return "deferred"
        if v.get("passed"):
            return "pass"
        if self.incomplete:
            return "incomplete"
        return f"FAIL: {v['kind']}" if v.get("kind") else self.verdict_text

    @property
    def comparison(self) -> dict[str, Any] | None:
        c = self.row.get("comparison")
        return dict(c) if isinstance(c, Mapping) else None

    @property
    def redrawn_text(self) -> str:
        """``"7 examples re-asked (7 extra calls) against the golden's noisy baseline"`` when the run re-asked
        examples whose first answer disagreed with a noisy baseline (``--dspex-redraws``), else empty."""
        c = self.comparison or {}
        if c.get("test") != "paired-redrawn":
            return ""
        from ..evaluation.comparison import Comparison

        return Comparison.from_json(c).redrawn_note() + " against the golden's noisy baseline"

    @property
    def nothing_shared(self) -> bool:
        """A paired comparison ran but no example was shared with the golden: nothing was compared."""
        c = self.comparison
        return c is not None and not c.get("shared")

    @property
    def not_compared(self) -> str:
        """Why there is no golden score to compare with (``""``: there is one, or no golden at all):
        a paired comparison that shared no example, or an incomplete run (only some examples ran)."""
        return self._against[2]

    @property
    def golden_text(self) -> str:
        """The golden column: its score to compare with, or ``n/a`` when nothing was compared."""
        return "n/a" if self.not_compared else fmt_num(self.baseline)  # why: in the delta column

    @property
    def delta(self) -> float | None:
        return self._against[1]

    @property
    def delta_text(self) -> str:
        """``-0.025 [-0.070, +0.020] p=0.031`` with the paired comparison, else just the delta."""
        c = self.comparison
        if self.nothing_shared:
            from ..evaluation.comparison import nothing_compared

            c = c or {}
            return f"n/a ({nothing_compared(int(c.get('lost') or 0), metric_errors=int(c.get('metric_errors') or 0))})"
        if self.not_compared:  # incomplete: the examples that ran are not the golden's whole set
            return "n/a (incomplete: not all examples ran)" if self.incomplete else f"n/a ({self.not_compared})"
        text = fmt_delta(self.delta)
        if c is None:
            return text
        if c.get("delta_ci95"):
            text += " " + fmt_interval(c["delta_ci95"])
        if c.get("p_value") is not None:
            text += f" {p_text(c['p_value'])}"
        return text

    @property
    def usage(self) -> dict[str, float]:
        u = self.row.get("usage") or {}
        tokens = u.get("tokens")
        if tokens is None:
            tokens = float(u.get("prompt_tokens") or 0) + float(u.get("completion_tokens") or 0)
        return {
            "calls": float(u.get("calls") or 0),
            "cache_hits": float(u.get("cache_hits") or 0),
            "tokens": float(tokens or 0),
            "cost": float(u.get("cost") or 0.0),
        }

    @property
    def errors(self) -> int:
        return int(self.row.get("errors") or 0)

    @property
    def errors_text(self) -> str:
        by_kind = self.row.get("errors_by_kind") or {}
        if not by_kind:
            return str(self.errors)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items()))
        return f"{self.errors} ({kinds})"

    @property
    def records(self) -> list[dict[str, Any]]:
        return [record_json(r) for r in self.row.get("records") or []]

    def keys(self, which: str) -> list[str]:
        """``regressions`` or ``fixes`` of the paired comparison (empty without one)."""
        c = self.comparison or {}
        return [str(k) for k in c.get(which) or []]
