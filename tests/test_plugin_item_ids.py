"""Per-example item ids follow the example, not its row (trial F17).

The ids began with the row index (``test_triage_each[0-The-invoice-shows-the-wr]``): inserting one
row at the top renamed every item, so ``--lf``, CI test history and flaky-test tools lost track of
every example. An item's id is now the example's stable key: its ``id``, else a slug of its first
input and a short hash of its inputs (the key the gate pairs examples by).
"""

from __future__ import annotations

import json
import re

import pytest

import pytest_dspex as dspex
from pytest_dspex.plugin.collection import example_ids

from .test_plugin import TEST_FILE, make_responder, rows

# the program raises on case 3 (an "I was charged twice, case 3" row): one failed item to follow
SOURCE = TEST_FILE.replace("THRESHOLD", "0.5").replace(
    "triage = dspex.Predict(Triage)",
    "class Broken(dspex.Module):\n"
    "    def __init__(self):\n        self.p = dspex.Predict(Triage)\n"
    "    def forward(self, message):\n"
    "        if message.endswith('case 3'):\n            raise ValueError('boom on case 3')\n"
    "        return self.p(message=message)\n"
    "triage = Broken()",
)

MODES = {"xdist": ["-n", "2"], "no-xdist": ["-p", "no:xdist"]}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def run(pytester: pytest.Pytester, server, mode: list[str], *args: str) -> pytest.RunResult:
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=0"]
    opts += ["--dspex-missing-golden=zero-shot", "--dspex-max-error-rate=0.2", "-rA", "-k", "each"]
    return pytester.runpytest_subprocess(*opts, *mode, *args, timeout=120)


def item_ids(result: pytest.RunResult, outcome: str = r"\w+") -> set[str]:
    return set(re.findall(rf"^{outcome} test_triage\.py::test_triage_each\[([^\]]+)\]", result.stdout.str(), re.M))


def test_inserting_a_row_keeps_every_other_items_id_and_lf_follows_the_example(pytester, server_factory, mode, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-CANARY-ids")
    pytester.makefile(".jsonl", **{"data/train": rows(10, 100), "data/dev": rows(10)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=SOURCE)
    server = server_factory(make_responder(zero_shot_ok=True))
    first = run(pytester, server, mode)
    before = item_ids(first)
    # the five "I was charged twice, case N" rows look alike up to the slug's 24 characters: unique all the same
    assert len(before) == 10, first.stdout.str()
    assert all(not re.match(r"\d+-", i) for i in before)  # no row index in an id
    assert len([i for i in before if i.startswith("I-was-charged-twice-case-")]) == 5
    (failed,) = item_ids(first, "FAILED")
    assert failed.startswith("I-was-charged-twice-case-")

    dev = pytester.path / "data" / "dev.jsonl"
    dev.write_text(json.dumps({"message": "Where is your head office, case 50?", "team": "technical"}) + "\n" + dev.read_text())
    second = run(pytester, server, mode)
    after = item_ids(second)
    assert before < after and len(after - before) == 1, second.stdout.str()
    assert item_ids(second, "FAILED") == {failed}  # the same example fails under the same name

    again = run(pytester, server, mode, "--lf")  # follows the example, not its row
    assert item_ids(again) == {failed}, again.stdout.str()
    again.assert_outcomes(failed=1)
    assert "boom on case 3" in again.stdout.str()


def test_an_id_column_is_the_item_id():
    examples = [dspex.Example(id="dev0", message="a").with_inputs("message"), dspex.Example(id=7, message="b").with_inputs("message")]
    assert example_ids(examples) == ["dev0", "7"]


def test_ids_that_still_meet_get_the_whole_key():
    plain = dspex.Example(message="hello there", team="x").with_inputs("message")
    (short,) = example_ids([plain])
    assert re.fullmatch(r"hello-there-[0-9a-f]{6}", short)
    # a row whose own id looks like the other's: the hashed one takes the whole key, both stay unique
    lookalike = dspex.Example(id=short, message="other", team="y").with_inputs("message")
    ids = example_ids([plain, lookalike])
    assert ids[1] == short and re.fullmatch(r"hello-there-[0-9a-f]{16}", ids[0])
    # the label is not part of the id: the inputs are (the key the gate pairs by)
    assert example_ids([dspex.Example(message="hello there", team="z").with_inputs("message")]) == [short]
