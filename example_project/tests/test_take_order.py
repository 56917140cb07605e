"""Order taking: two output fields, one of them a number (a bounded grammar on the embedded model)."""

import pytest

from support_bot.metrics import same_order
from support_bot.programs import take_order


@pytest.mark.dspex_program(take_order, name="take_order", trainset="data/order_train.jsonl")
@pytest.mark.dspex_metric(same_order, threshold=0.70)
def test_take_order(dspex_evaluate):
    result = dspex_evaluate("data/order_dev.jsonl")
    assert result.n == 20


@pytest.mark.dspex_program(take_order, name="take_order", trainset="data/order_train.jsonl")
@pytest.mark.dspex_metric(same_order, threshold=0.70)
@pytest.mark.dspex_dataset("data/order_dev.jsonl")
def test_take_order_each(dspex_example, dspex_predict):
    prediction = dspex_predict(dspex_example)
    assert isinstance(prediction.quantity, int)
