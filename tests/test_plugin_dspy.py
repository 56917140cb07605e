"""A DSPy user's test file under the plugin: a raw DSPy module in a marker (issue 25).

The ``dspy`` package here is a stand-in written into the test project (the main test run has no
DSPy): what the plugin looks at is that the object's class comes from the ``dspy`` package.
"""

from __future__ import annotations

import pytest

from .test_plugin import MODES, TEST_FILE, make_responder, project, rows, run  # noqa: F401  (fixtures)

FAKE_DSPY = '''
class Module:
    def __call__(self, **kwargs):
        return self.forward(**kwargs)

    def __repr__(self):
        return "Predict(" + "StringSignature(message -> team\\n    instructions=...)" * 40 + ")"


class Predict(Module):
    def __init__(self, signature):
        self.signature = signature
'''

DSPY_TEST = '''
import dspy

dspy_triage = dspy.Predict("message -> team")

@pytest.mark.dspex_program(dspy_triage, name="dspy_triage")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
def test_dspy_program(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(dspy_triage, name="dspy_triage")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_dspy_program_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)

def test_plain():
    assert True
'''


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def test_a_raw_dspy_module_in_a_marker_is_one_clear_error_and_the_other_tests_run(
    pytester: pytest.Pytester, project, server_factory, mode  # noqa: F811
) -> None:
    pytester.makepyfile(dspy=FAKE_DSPY)
    project(threshold=0.5, source=TEST_FILE + DSPY_TEST)
    fake = server_factory(make_responder(zero_shot_ok=True))
    result = run(pytester, fake, mode, "--dspex-missing-golden=zero-shot")
    outcomes = result.parseoutcomes()
    out = result.stdout.str()
    # the two dspex tests (one whole-dataset, ten per-example items) and test_plain run
    assert outcomes.get("passed", 0) == 12, out
    # each of the two tests given the DSPy module fails on its own (one in its call, one at setup)
    assert outcomes.get("failed", 0) + outcomes.get("errors", outcomes.get("error", 0)) == 2, out
    assert "interrupted" not in out.lower()
    result.stdout.fnmatch_lines(
        ["*test_dspy_program*: @pytest.mark.dspex_program: program is a DSPy module, dspy.Predict; pytest-dspex runs its own programs*"]
    )
    assert "python -m pytest_dspex import SAVED.json --test" in out
    assert "instructions=..." not in out  # no repr of the module
