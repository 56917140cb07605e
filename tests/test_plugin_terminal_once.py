"""Each thing under the dspex table is said once per run (or per program), and only where informative."""

from __future__ import annotations

from .test_plugin import TEST_FILE, fake, make_responder, mode, project, run

__all__ = ["fake", "mode", "project"]  # fixtures

DOC = "Route a customer message to the team that should handle it."


def test_a_failed_gate_sentence_is_said_once_under_failures(pytester, project, server_factory, mode):
    server = server_factory(make_responder(zero_shot_ok=True, wrong={1, 2, 3}))
    result = run(pytester, server, mode, "--dspex-missing-golden=zero-shot")
    assert result.ret == 1
    out = result.stdout.str().split("short test summary info")[0]  # pytest's own one-line summary aside
    assert out.count("dspex gate FAILED for 'triage'") == 1, out  # the whole-dataset test's
    assert out.count("dspex gate FAILED for 'triage on data/dev.jsonl'") == 1, out  # the per-example test's
    assert out.count("triage: no golden: zero-shot") == 1, out  # a program's note: once, not per test
    assert out.index("dspex gate FAILED") < out.index("= dspex =")
    tail = out.split("= dspex =", 1)[1]
    assert "FAIL" in tail and "dspex gate FAILED" not in tail
    # --tb=no hides FAILURES: then the table is where it is said
    quiet = run(pytester, server, mode, "--dspex-missing-golden=zero-shot", "--tb=no").stdout.str()
    assert "FAILED for 'triage on data/dev.jsonl'" in quiet.split("= dspex =", 1)[1], quiet


def test_green_runs_say_cache_only_once_and_no_provenance(pytester, project, fake, mode):
    compiled = run(pytester, fake, mode, "--dspex-compile", "--dspex-cache=on")
    assert compiled.ret == 0, compiled.stdout.str()
    out = compiled.stdout.str()
    assert "every answer came from the LM cache" not in out  # the compile asked the endpoint
    assert out.count("chosen on the trainset") == 1  # under "golden created", not per program x test
    again = run(pytester, fake, mode, "--dspex-cache=on")
    assert again.ret == 0
    out = again.stdout.str()
    assert out.count("every answer came from the LM cache") == 1, out
    again.stdout.fnmatch_lines(["triage ?dataset?, triage ?per-example?: every answer came from the LM cache (20 cached, 0 requests)*"])
    assert "chosen on the trainset" not in out  # a held-out choice, a fresh baseline: nothing to warn about


def test_changed_instructions_diff_is_shown_once_per_program(pytester, project, fake, mode):
    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    project(source=TEST_FILE.replace(DOC, "Route a customer message to the right team."))
    result = run(pytester, fake, mode)
    out = result.stdout.str()
    assert out.count("triage: the instructions differ from the golden's") == 1, out
    assert out.count("+Route a customer message to the right team.") == 1, out


def test_underpowered_is_said_once_for_the_run(pytester, project, fake, mode):
    """Trial2 F9: "; underpowered: needs n >= 100 to detect a drop of 0.05" ended every program's and
    mode's "vs golden" line (7 times in the example project); one line says it for the run."""
    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    result = run(pytester, fake, mode)
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    compared = [line for line in result.stdout.lines if " vs golden: " in line]
    assert len(compared) == 2, out  # triage [dataset] and triage [per-example]
    assert not any("underpowered" in line for line in compared), out
    assert out.count("underpowered: ") == 1, out
    result.stdout.fnmatch_lines(["underpowered: both gate sets compared with a golden have fewer than * shared examples: "
                                 "a drop of 0.05 needs n >= * to be detected"])  # fmt: skip


def test_a_recompile_answered_from_the_cache_says_so_as_a_run_does(pytester, project, fake, mode):
    """Trial12 T12-5 said ``pytest -n 2 --dspex-compile=triage`` answered from the cache (0 requests) lacked the
    line ``-p no:xdist`` printed. Not reproduced on fcf8df4 (here, and 6 runs on the trial's own project copy:
    the line each time); this keeps both modes saying it once, a compile's cached spend included."""
    assert run(pytester, fake, mode, "--dspex-compile", "--dspex-cache=on").ret == 0
    sent = fake.requests
    again = run(pytester, fake, mode, "--dspex-compile=triage", "--dspex-force", "--dspex-cache=on")
    assert again.ret == 0, again.stdout.str()
    assert fake.requests == sent  # every answer, the compile's and the gates', from the cache
    out = again.stdout.str()
    assert out.count("every answer came from the LM cache") == 1, out
