"""Product extraction with ChainOfThought: reasoning first, then the product name."""

import pytest

from support_bot.metrics import same_product
from support_bot.programs import find_product


@pytest.mark.dspex_program(find_product, name="find_product", trainset="data/product_train.jsonl")
@pytest.mark.dspex_metric(same_product, threshold=0.70)
def test_find_product(dspex_evaluate):
    result = dspex_evaluate("data/product_dev.jsonl")
    assert not result.errors_by_kind.get("lm_unavailable")


@pytest.mark.dspex_program(find_product, name="find_product", trainset="data/product_train.jsonl")
@pytest.mark.dspex_metric(same_product, threshold=0.70)
@pytest.mark.dspex_dataset("data/product_dev.jsonl")
def test_find_product_each(dspex_example, dspex_predict):
    prediction = dspex_predict(dspex_example)
    assert prediction.product
