"""An xdist worker makes the first dspex test's one-time imports (the LM client's aiohttp, the golden
store) while it waits for its tests, not inside its first test; a run without a dspex test does not.
The golden files' reader (pydantic) only where a test has goldens: a worker without any never imports it."""

from __future__ import annotations

import json

import pytest

from .conftest import PER_EXAMPLE, triage_examples

# records, at each process's first test, which of the heavy modules were already imported
CONFTEST = '''
import json, os, sys

_seen = []

def pytest_runtest_setup(item):
    if not _seen:
        _seen.append(1)
        worker = getattr(item.config, "workerinput", {}).get("workerid", "main")
        found = {m: m in sys.modules for m in ("aiohttp", "pytest_dspex.golden.store", "pytest_dspex.lm.client",
                                               "pytest_dspex.golden.file", "pydantic")}
        with open(os.path.join(str(item.config.rootpath), f"first-{worker}.json"), "w") as f:
            json.dump(found, f)
'''


def _first_tests(pytester: pytest.Pytester) -> dict[str, dict[str, bool]]:
    return {p.stem: json.loads(p.read_text()) for p in pytester.path.glob("first-*.json")}


LM_CLIENT = ("aiohttp", "pytest_dspex.golden.store", "pytest_dspex.lm.client")
GOLDEN_READER = ("pytest_dspex.golden.file", "pydantic")


@pytest.mark.parametrize("goldens", [False, True], ids=["no-goldens", "goldens-folder"])
def test_a_worker_imports_the_lm_client_before_its_first_test(pytester, server_factory, monkeypatch, goldens):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.0)
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(4)) + "\n"})
    pytester.makepyfile(test_each=PER_EXAMPLE)
    pytester.makeconftest(CONFTEST)
    if goldens:  # a folder of goldens beside the test (another program's: this one runs zero-shot)
        (pytester.path / "__dspex__").mkdir()
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-missing-golden=zero-shot", "-n", "2",
    )  # fmt: skip
    result.assert_outcomes(passed=4)
    seen = _first_tests(pytester)
    assert seen and all(k.startswith("first-gw") for k in seen), seen
    assert all(all(found[m] for m in LM_CLIENT) for found in seen.values()), seen
    # the golden reader (its pydantic schema) where goldens are; a plain-text program without any never needs it
    assert all(all(found[m] == goldens for m in GOLDEN_READER) for found in seen.values()), seen


def test_a_run_without_dspex_tests_imports_none_of_it(pytester):
    pytester.makepyfile(test_plain="def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=2)
    seen = _first_tests(pytester)
    assert seen and not any(any(found.values()) for found in seen.values()), seen


# records, at each process's first test, how many objects the garbage collector no longer scans
FROZEN_CONFTEST = '''
import gc, os

_seen = []

def pytest_runtest_setup(item):
    if not _seen:
        _seen.append(1)
        worker = getattr(item.config, "workerinput", {}).get("workerid", "main")
        with open(os.path.join(str(item.config.rootpath), f"frozen-{worker}.txt"), "w") as f:
            f.write(str(gc.get_freeze_count()))
'''


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist-2", "no-xdist"])
def test_a_worker_freezes_what_it_made_before_its_first_test(pytester, server_factory, monkeypatch, mode):
    """What a worker holds for the whole run (modules, the collected items) is out of the collector's full
    scans from its first test on (``warmup.freeze_startup``); one process without xdist is left as it was."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.0)
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(40)) + "\n"})
    pytester.makepyfile(test_each=PER_EXAMPLE)
    pytester.makeconftest(FROZEN_CONFTEST)
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-missing-golden=zero-shot", *mode,
    )  # fmt: skip
    result.assert_outcomes(passed=40)
    frozen = {p.stem: int(p.read_text()) for p in pytester.path.glob("frozen-*.txt")}
    if mode[0] == "-n":
        assert frozen and all(k.startswith("frozen-gw") for k in frozen), frozen  # the workers that ran tests
        assert all(count > 20_000 for count in frozen.values()), frozen  # pytest, aiohttp, the items
    else:
        assert frozen == {"frozen-main": 0}, frozen
