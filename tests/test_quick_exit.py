"""A pytest process that ran dspex tests ends without the interpreter's last full garbage collections
over everything it holds (``_support.quick_exit``): every xdist worker and the controller freeze the
collector at exit, after the run — while every atexit handler still runs."""

from __future__ import annotations

import json

import pytest

from .conftest import PER_EXAMPLE, triage_examples

# registered at import, before the plugin's: runs after it at exit, and records what it left
CONFTEST = '''
import atexit, gc, os

def _record():
    name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.path.dirname(__file__), f"exit-{name}.txt"), "w") as f:
        f.write(str(gc.get_freeze_count()))

atexit.register(_record)
'''


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist-2", "no-xdist"])
def test_each_process_freezes_what_it_holds_at_exit_and_its_handlers_still_run(pytester, server_factory, monkeypatch, mode):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.0)
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(6)) + "\n"})
    pytester.makepyfile(test_each=PER_EXAMPLE)
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-missing-golden=zero-shot", *mode,
    )  # fmt: skip
    result.assert_outcomes(passed=6)
    frozen = {p.stem: int(p.read_text()) for p in pytester.path.glob("exit-*.txt")}
    expected = {"exit-main", "exit-gw0", "exit-gw1"} if mode[0] == "-n" else {"exit-main"}
    assert set(frozen) == expected, frozen  # the user's atexit handler ran in every process
    assert all(count > 1000 for count in frozen.values()), frozen  # the run's objects, not scanned again
