"""Keep-better on a tie (trial2 F2): a recompile that does not improve on the golden's baseline leaves
the committed file byte-identical and says so in one line; ``--dspex-force`` still replaces it."""

from __future__ import annotations

import pytest

from .test_import import OPTIMIZED, lm_args, run_import, user_project  # noqa: F401 (fixture)
from .test_plugin import make_responder


@pytest.mark.parametrize("mode", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "n2"])
def test_a_recompile_that_ties_the_golden_leaves_the_file_untouched(user_project, server_factory, mode):  # noqa: F811
    server = server_factory(make_responder())  # every answer right, with or without the imported instructions
    assert run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage").ret == 0
    path = user_project.path / "__dspex__/test_triage/triage.json"
    before = path.read_bytes()
    compiled = user_project.runpytest_subprocess(*lm_args(server), *mode, "-p", "no:cacheprovider", "--dspex-compile")
    assert compiled.ret == 0, compiled.stdout.str()
    out = compiled.stdout.str()
    assert path.read_bytes() == before  # no equal-score churn in review
    kept = [line for line in out.splitlines() if line.startswith("golden kept:")]
    assert len(kept) == 1, out
    assert "kept: this run's baseline 1.000 does not improve on the golden's 1.000" in kept[0]
    assert "left untouched" in kept[0] and "--dspex-force" in kept[0]
    assert "at least the golden's" not in out and "golden updated" not in out
    # the run after the compile gates the program the golden holds (the imported instructions)
    assert OPTIMIZED in path.read_text(encoding="utf-8")

    forced = user_project.runpytest_subprocess(
        *lm_args(server), *mode, "-p", "no:cacheprovider", "--dspex-compile", "--dspex-force"
    )
    assert forced.ret == 0, forced.stdout.str()
    forced.stdout.fnmatch_lines(["*golden updated: *triage.json*replaced (forced)*"])
    assert path.read_bytes() != before
