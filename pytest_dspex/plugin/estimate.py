"""``--dspex-estimate``: what a run would cost, said per program from the rows the tests produced.

In an estimate the session LM answers from the response cache only (``LM(estimate=True)``): a request
the cache cannot answer is counted as a call a run would make, and the test is skipped. Its tokens
(``lm.estimates``): the prompt the adapter formatted, counted by the model's rule, and the answer the
example's labels make as the adapter writes one, both corrected by the cached answers met; the
answers' token limits give the upper bound. The controller then prints this table instead of the gate's.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["estimate_lines"]


#: the most LM calls a compile plan says it makes (``DspexSession._compile_plan``)
_PLAN_CALLS = re.compile(r"at most ([\d,]+) LM calls before the cache")


def estimate_lines(rows: list[dict[str, Any]], *, priced: bool, max_calls: int | None, max_cost: float | None,
                   counting: str = "") -> list[tuple[str, dict[str, bool]]]:  # fmt: skip
    """``(text, markup)`` lines: a table per program, the total, and the budget when the estimate exceeds it.

    ``cached`` counts the answers the cache holds now; ``repeated`` the requests another row (or an
    earlier example) asks first, which a run answers from the cache that first asking fills: neither
    is a call, and an empty cache never reads as cached. With ``--dspex-compile`` the total says the
    compile plans' calls apart and with them (a plan is an upper bound, the rows an estimate)."""
    out: list[tuple[str, dict[str, bool]]] = []
    header = ("program", "mode", "examples", "cached", "repeated", "calls", "est. tokens", "est. cost")
    table = [header]
    calls = tokens = prompt = limit = repeated = 0
    cost = 0.0
    for r in rows:
        u = r.get("usage") or {}
        would = int(u.get("estimated", 0))
        again = int(u.get("repeated", 0))
        t = int(u.get("prompt_tokens", 0)) + int(u.get("completion_tokens", 0))
        calls, tokens, cost, repeated = calls + would, tokens + t, cost + float(u.get("cost", 0.0)), repeated + again
        prompt, limit = prompt + int(u.get("prompt_tokens", 0)), limit + int(u.get("estimated_limit", 0))
        table.append((str(r["program"]), str(r.get("mode", "dataset")), str(r.get("n", 0)), str(int(u.get("cache_hits", 0)) - again),
                      str(again), str(would), f"{t:,}", f"${float(u.get('cost', 0.0)):.4f}" if priced else "-"))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        out.append(("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), {}))
    plans = dict.fromkeys(f"{r['program']}: {part}" for r in rows for part in str(r.get("note") or "").split("; ") if part.startswith("compile plan"))
    planned = sum(int(m.group(1).replace(",", "")) for plan in plans if (m := _PLAN_CALLS.search(plan)))
    total = f"a run would make {calls} LM calls, about {tokens:,} tokens" + (f", ${cost:.4f}" if priced else "")
    if plans:
        total += f" for its tests, and its compile{'s' if len(plans) > 1 else ''} at most {planned:,} more (at most {calls + planned:,} in all)"
    out.append((total + " (no LM call was made)", {"bold": True}))
    if calls:
        how = f"; counted as {counting}" if counting else ""
        out.append((f"  {prompt:,} prompt + {tokens - prompt:,} completion tokens, at most {max(limit, tokens):,} "
                    f"(each answer at its token limit){how}", {}))  # fmt: skip
    if repeated:
        out.append((f"  repeated: {repeated} request(s) asked again (a program gated in both modes asks each question twice, and programs that send the same request ask it once each); "
                    "a run answers them from the cache their first asking fills: not calls, not cached yet", {}))  # fmt: skip
    redrawn = [(str(r["program"]), r["redraw_estimate"]) for r in rows if (r.get("redraw_estimate") or {}).get("at_most")]
    if redrawn:  # against a noisy golden a run asks again the examples whose first answer disagrees with it
        about = round(sum(float(e["about"]) for _, e in redrawn))
        most = sum(int(e["at_most"]) for _, e in redrawn)
        names = ", ".join(dict.fromkeys(name for name, _ in redrawn))
        out.append((f"  redraws: about {about} more LM call(s), at most {most}, not in the total: {names} "
                    f"{'has a golden' if len(redrawn) == 1 else 'have goldens'} whose baseline draws disagree (a noisy endpoint), "
                    "and a run asks again each example whose first answer disagrees with them (--dspex-redraws; 0 turns it off)", {}))  # fmt: skip
        if max_calls is not None and calls <= max_calls < calls + most:
            out.append((f"the redraws may go over the budget: {calls} calls estimated and about {about} more "
                        f"(at most {calls + most}), --dspex-max-calls={max_calls}", {"yellow": True}))  # fmt: skip
    if not priced:
        out.append(("no price known for this model: set --dspex-price=INPUT,OUTPUT (dollars per 1M tokens) to estimate cost", {"yellow": True}))
    out += [(plan, {}) for plan in plans]
    if max_calls is not None and calls > max_calls:
        out.append((f"over the budget: {calls} calls estimated, --dspex-max-calls={max_calls}: the run would stop "
                    f"after {max_calls} and the rest would be LM errors", {"red": True, "bold": True}))  # fmt: skip
    elif max_calls is not None and plans and calls + planned > max_calls:
        out.append((f"the compile{'s' if len(plans) > 1 else ''} may go over the budget: at most {calls + planned:,} calls "
                    f"with {'them' if len(plans) > 1 else 'it'}, --dspex-max-calls={max_calls}", {"yellow": True}))  # fmt: skip
    if max_cost is not None and priced and cost > max_cost:
        out.append((f"over the budget: ${cost:.4f} estimated, --dspex-max-cost={max_cost:g}", {"red": True, "bold": True}))
    return out
