"""Triage: a Literal-typed classifier, gated on the whole dev set and per example."""

import pytest

from support_bot.metrics import team_matches
from support_bot.programs import triage


# Whole-dataset gate: evaluated concurrently in one test; golden demos loaded automatically.
@pytest.mark.dspex_program(triage, name="triage", trainset="data/triage_train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.70)
def test_triage(dspex_evaluate):
    result = dspex_evaluate("data/triage_dev.jsonl")
    print(result.summary())  # the gate above already checked threshold and regression


# Per-example items: one test item per example (spread by -n), aggregated into one gate.
@pytest.mark.dspex_program(triage, name="triage", trainset="data/triage_train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.70)
@pytest.mark.dspex_dataset("data/triage_dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    prediction = dspex_predict(dspex_example)
    assert prediction.team in ("billing", "technical", "account", "other")
