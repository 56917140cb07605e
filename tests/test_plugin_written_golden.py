"""A compile or re-baseline run does not compare its gate with the golden it has just written (trial F9).

The table showed ``golden (delta) 1.000 (+0.000)`` and a line ``vs golden: no change`` against the
baseline this very run measured: a comparison of the run with itself, which reads as a check that
passed. The golden column says ``written`` and no "vs golden" line is said; the compile summary
compares the new baseline with the one it replaced.
"""

from __future__ import annotations

import re

from .test_plugin_baseline import COMPILE, mode, model, project, run, server, write_test  # noqa: F401


def golden_cells(out: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^triage\s+(?:dataset|per-example)\s+\S+ \(\S+\)\s+\S+\s+(\S+(?: \S+)?)\s+\d+\s", out, re.M)]


def test_a_compile_and_a_rebaseline_say_golden_written_not_a_comparison_with_themselves(pytester, server, mode):  # noqa: F811
    project(pytester, 20)
    compiled = run(pytester, server, mode, *COMPILE, "--dspex-markdown=m.md")
    assert compiled.ret == 0, compiled.stdout.str()
    out = compiled.stdout.str()
    assert golden_cells(out) == ["written", "written"], out
    assert "vs golden" not in out and "(+0.000)" not in out
    markdown = (pytester.path / "m.md").read_text(encoding="utf-8")  # alike in every view
    assert markdown.count("| n/a | n/a (golden written) |") == 2 and "+0.000" not in markdown, markdown
    compiled.stdout.fnmatch_lines(["*golden created: __dspex__/test_triage/triage.json*"])

    write_test(pytester, "Route the message to one team.")  # an instructions edit, then its baseline recorded
    rebaselined = run(pytester, server, mode, "--dspex-rebaseline=triage")
    assert rebaselined.ret == 0, rebaselined.stdout.str()
    out = rebaselined.stdout.str()
    assert golden_cells(out) == ["written", "written"], out
    assert "[dataset] vs golden" not in out and "[per-example] vs golden" not in out
    rebaselined.stdout.fnmatch_lines(["*golden rebaselined*", "*new baseline vs the golden's baseline*"], consecutive=False)

    again = run(pytester, server, mode)  # a normal run compares with it as before
    assert golden_cells(again.stdout.str()) == ["1.000 (+0.000)", "1.000 (+0.000)"], again.stdout.str()
    again.stdout.fnmatch_lines(["*triage [[]dataset] vs golden: no change*"])
