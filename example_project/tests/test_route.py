"""A plain function that calls the openai SDK (``support_bot.legacy.route``), gated as it is.

Nothing to optimize: ``--dspex-compile`` records its baseline, later runs are paired with it.
"""

import pytest

from support_bot.legacy import route
from support_bot.metrics import team_matches


@pytest.mark.dspex_program(route, outputs=["team"])
@pytest.mark.dspex_metric(team_matches, threshold=0.50)
def test_route(dspex_evaluate):
    dspex_evaluate("data/route_dev.jsonl")
