"""The commands the plugin's messages suggest work when pasted (new-user trial)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .test_plugin import make_responder, rows
from .test_plugin_said_once import EACH, compiled, fake, mode, project, run

__all__ = ["fake", "mode", "project"]  # fixtures


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_mv_hint_for_a_moved_test_file_creates_the_missing_folder_and_works(pytester, project, fake, mode):
    compiled(pytester, project, fake)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=pytester.path, check=True)
    (pytester.path / "tests/test_triage.py").unlink()
    project(where="tests/unit/test_triage.py", source=EACH.replace("data/", "../data/"))
    result = run(pytester, fake, *mode)
    assert result.ret == 1
    found = re.search(r"move it: (.+? && git mv \S+ \S+)$", result.stdout.str(), re.M)
    assert found, result.stdout.str()
    assert found.group(1).startswith("mkdir -p tests/unit/__dspex__/test_triage && git mv ")
    subprocess.run(found.group(1), shell=True, cwd=pytester.path, check=True)  # the hint, pasted
    assert run(pytester, fake, *mode).ret == 0


def test_git_mv_hint_without_mkdir_when_the_folder_exists(pytester, project, fake):
    compiled(pytester, project, fake)
    project(name="triage_v2")
    out = run(pytester, fake, "-p", "no:xdist").stdout.str()
    assert "move it: git mv tests/__dspex__/test_triage/triage.json tests/__dspex__/test_triage/triage_v2.json" in out
    assert "mkdir -p" not in out


def test_replay_miss_says_once_what_to_do(pytester, project, fake, mode):
    project()
    (pytester.path / ".dspex_cache").mkdir()  # a recording folder without these answers (a missing one: below)
    opts = ["--dspex-model=fake-model", "--dspex-cache=replay", "--dspex-missing-golden=zero-shot", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*opts, f"--dspex-base-url={fake.base_url}", *mode, timeout=120)
    assert result.ret == 1
    out = result.stdout.str()
    said = (
        "no recorded answer for 60 example(s) in replay mode: record them with a run in cache mode 'on' (the default), "
        "or check the model/settings match the recording and the requests are the recorded ones (an edited prompt, "
        "instructions, demos or function's messages are new requests) — the endpoint URL (--dspex-base-url) is part "
        "of the cache key, so a recording made at another URL does not replay"
    )
    assert said in out, out
    assert fake.requests == 0


def test_replay_from_a_cache_folder_that_does_not_exist_names_it_and_how_to_record(pytester, project, fake, mode):
    # trial: a typo in --dspex-cache-dir gave 60 cache misses and the hint about the endpoint URL in the
    # key, with no word that the folder does not exist
    project()
    opts = ["--dspex-model=fake-model", "--dspex-cache=replay", "--dspex-missing-golden=zero-shot", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*opts, "--dspex-cache-dir=emptycache", f"--dspex-base-url={fake.base_url}", *mode, timeout=120)
    assert result.ret == 1
    out = result.stdout.str()
    said = (
        "no recorded answer for 60 example(s) in replay mode: the answer cache folder emptycache does not exist, so nothing "
        "can be replayed from it: record the answers there with a run in cache mode 'on' (--dspex-cache=on "
        "--dspex-cache-dir=emptycache), or point --dspex-cache-dir at the folder that holds the recording"
    )
    assert said in out, out
    assert "is part of the cache key" not in out  # not the hint for a recording made elsewhere
    assert fake.requests == 0 and not (pytester.path / "emptycache").exists()


def test_a_replay_miss_within_the_error_budget_fails_the_gate(pytester, project, server_factory, mode):
    # trial3 T2: one row added since the recording (1 of 61: within the 5% error budget) passed a replay
    # run green, the new example never evaluated, and nothing said so (only -rA showed its cache_miss)
    fake = server_factory(make_responder(zero_shot_ok=True))
    project()
    opts = ["--dspex-model=fake-model", "--dspex-missing-golden=zero-shot", "-p", "no:cacheprovider"]
    recorded = pytester.runpytest_subprocess(*opts, f"--dspex-base-url={fake.base_url}", "-p", "no:xdist", timeout=120)
    assert recorded.ret == 0, recorded.stdout.str()
    sent = fake.requests
    pytester.makefile(".jsonl", **{"tests/data/dev": rows(61, ids=True)})
    result = pytester.runpytest_subprocess(*opts, "--dspex-cache=replay", f"--dspex-base-url={fake.base_url}", *mode, timeout=120)
    out = result.stdout.str()
    assert result.ret == 1 and fake.requests == sent, out
    assert result.parseoutcomes().get("lm_error") == 1, out
    assert "LM errors: 1 of 61 examples could not be answered (cache_miss: 1); no recorded answer for 1 example(s) in replay mode" in out
    assert "a replay run fails on any miss (within the error budget of 5%)" in out, out
    result.stdout.fnmatch_lines(["FAILED tests/test_triage.py::test_each - dspex gate FAILED*"])
