"""Example and Prediction survive pickle (xdist, multiprocessing) and the copy module."""

from __future__ import annotations

import copy
import pickle

import pytest

from pytest_dspex.evaluation.datasets import example_key
from pytest_dspex.programs.primitives import Example, Prediction


def _example() -> Example:
    return Example(question="2+2?", answer="4", tags=["math"]).with_inputs("question")


@pytest.mark.parametrize(
    "clone",
    [
        pytest.param(lambda ex: pickle.loads(pickle.dumps(ex)), id="pickle"),
        pytest.param(copy.copy, id="copy"),
        pytest.param(copy.deepcopy, id="deepcopy"),
    ],
)
def test_clone_keeps_fields_and_input_keys(clone: object) -> None:
    ex = _example()
    key = example_key(ex)
    twin = clone(ex)  # type: ignore[operator]
    assert type(twin) is Example
    assert twin == ex
    assert twin.toDict() == ex.toDict()
    assert twin.input_keys == ("question",)
    assert twin.inputs().toDict() == {"question": "2+2?"}
    assert twin.labels().toDict() == {"answer": "4", "tags": ["math"]}
    assert example_key(twin) == key
    twin.answer = "5"  # the clone is its own example
    assert ex.answer == "4"


def test_copy_is_shallow_and_deepcopy_is_deep() -> None:
    ex = _example()
    assert copy.copy(ex).tags is ex.tags
    deep = copy.deepcopy(ex)
    assert deep.tags == ex.tags and deep.tags is not ex.tags


def test_prediction_pickles_as_prediction() -> None:
    pred = Prediction(answer="4", reasoning="two and two")
    for twin in (pickle.loads(pickle.dumps(pred)), copy.copy(pred), copy.deepcopy(pred)):
        assert type(twin) is Prediction
        assert twin.answer == "4" and twin.reasoning == "two and two"


def test_missing_field_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = _example().nope
