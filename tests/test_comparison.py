from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from pytest_dspex.evaluation.comparison import (
    Comparison,
    compare,
    flaky_keys,
    mcnemar_exact,
    needed_n,
    outcomes_from_records,
)
from pytest_dspex.evaluation.stats import clustered_confidence_interval, clustered_mean, confidence_interval
from pytest_dspex.programs.primitives import Example


# Exact one-sided McNemar = scipy.stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue,
# worked out by hand as sum_{i>=b} C(n, i) / 2**n:
#   b=9,  c=0  : 1 / 2**9                                                    = 0.001953125
#   b=7,  c=3  : (120 + 45 + 10 + 1) / 1024 = 176 / 1024                     = 0.171875
#   b=15, c=5  : (15504 + 4845 + 1140 + 190 + 20 + 1) / 2**20 = 21700 / 1048576 = 0.020694732666015625
#   b=12, c=8  : (125970 + 77520 + 38760 + 21700) / 2**20 = 263950 / 1048576    = 0.25172233581542969
#   b=5,  c=0  : 1 / 32 = 0.03125;  b=4, c=0: 1 / 16 = 0.0625
@pytest.mark.parametrize(
    ("b", "c", "p"),
    [(9, 0, 0.001953125), (7, 3, 0.171875), (15, 5, 0.020694732666015625), (12, 8, 0.25172233581542969),
     (5, 0, 0.03125), (4, 0, 0.0625), (0, 0, 1.0)],
)
def test_mcnemar_exact_matches_the_binomial_tail(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def _keys(n):
    return [f"ex-{i}" for i in range(n)]


def test_nine_of_three_hundred_pure_regression_is_a_regression():
    base = {k: 1.0 if i < 240 else 0.0 for i, k in enumerate(_keys(300))}  # 0.80
    cur = dict(base)
    for k in _keys(9):
        cur[k] = 0.0  # 0.77, only pass -> fail flips
    result = compare(base, cur)
    assert result.verdict == "regressed" and result.regressed
    assert result.test == "mcnemar-exact"
    assert result.delta == pytest.approx(-0.03)
    assert result.p_value == pytest.approx(0.001953125)
    assert result.regressions == _keys(9) and result.fixes == []
    lo, hi = result.delta_ci95
    assert lo < -0.03 < hi < 0
    assert result.shared == 300 and not result.underpowered
    # a tolerance gate of 0.05 would have let this through
    assert result.current_score > result.baseline_score - 0.05
    assert "regressed: delta -0.030" in result.summary() and "9 regressed" in result.summary()


def _right(seed: int, key: str, accuracy: float) -> float:
    h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 2**32
    return 1.0 if h < accuracy else 0.0


def test_equal_accuracy_on_a_different_subset_is_mostly_no_change():
    alarms = 0
    for seed in range(20):
        base = {k: _right(1000 + seed, k, 0.8) for k in _keys(300)}
        cur = {k: _right(seed, k, 0.8) for k in _keys(300)}
        result = compare(base, cur)
        assert result.regressions and result.fixes  # different subsets: both directions move
        alarms += result.verdict == "regressed"
    assert alarms <= 2


def test_improvement_lists_the_fixed_examples():
    base = {k: 0.0 for k in _keys(200)}
    cur = {k: (1.0 if i < 12 else 0.0) for i, k in enumerate(_keys(200))}
    cur["ex-100"] = 0.0
    result = compare(base, cur)
    assert result.verdict == "improved"
    assert result.fixes == _keys(12) and result.regressions == []
    assert result.delta_ci95[0] > 0


def test_small_sets_are_underpowered_and_say_what_n_is_needed():
    base = {k: 1.0 for k in _keys(40)}
    cur = {k: (0.0 if i < 4 else 1.0) for i, k in enumerate(_keys(40))}  # 4 of 40 flipped, all down
    result = compare(base, cur, alpha=0.05, tolerance=0.05)
    assert result.verdict == "no change"  # p = 1/16: four flips cannot reach alpha = 0.05
    assert result.underpowered and result.needed_n == 100
    assert "underpowered: needs n >= 100" in result.summary()
    assert needed_n(0.05, 0.05) == 100  # 0.5**5 < 0.05 -> 5 discordant pairs; 5 / 0.05
    assert needed_n(0.01, 0.10) == 70  # 0.5**7 < 0.01 -> 7; 7 / 0.10
    assert needed_n(0.05, 0.0) is None


def test_only_shared_keys_are_compared():
    base = {"a": 1.0, "b": 1.0, "gone": 1.0}
    cur = {"a": 1.0, "b": 0.0, "new": 0.0}
    result = compare(base, cur)
    assert result.shared == 2 and result.regressions == ["b"]
    assert compare({}, cur).summary() == "paired comparison: no examples shared with the golden"


def test_graded_scores_and_repeats_use_a_seeded_permutation_test():
    # a baseline of means (one number per example): its noise is not known, the permutation test decides
    base = {k: 2 / 3 if i % 3 else 0.5 for i, k in enumerate(_keys(120))}
    cur = {k: ([0.0, 0.0, 1.0] if i < 30 else v) for i, (k, v) in enumerate(base.items())}
    result = compare(base, cur)
    assert result.test == "paired-permutation"
    assert result.verdict == "regressed" and result.p_value < 0.001
    assert len(result.regressions) == 30 and result.fixes == []
    assert result.delta_ci95[1] < 0
    assert compare(base, cur) == result  # deterministic
    same = compare(base, base)
    assert same.verdict == "no change" and same.p_value == 1.0 and same.delta == 0.0


def test_graded_noise_without_direction_is_no_change():
    base = {k: 0.5 for k in _keys(100)}
    cur = {k: 0.5 + (0.25 if i % 2 else -0.25) for i, k in enumerate(_keys(100))}
    result = compare(base, cur)
    assert result.verdict == "no change"
    assert result.regressions[:1] == ["ex-0"] and len(result.fixes) == 50


def test_comparison_round_trips_through_json():
    base = {k: 1.0 for k in _keys(150)}
    cur = {k: (0.0 if i < 10 else 1.0) for i, k in enumerate(_keys(150))}
    result = compare(base, cur)
    data = json.loads(json.dumps(result.to_json()))
    assert set(data) >= {"delta", "delta_ci95", "p_value", "verdict", "regressions", "fixes", "shared",
                         "underpowered", "needed_n", "test"}
    back = Comparison.from_json(data)
    assert back.verdict == "regressed" and back.regressions == result.regressions
    assert back.delta_ci95 == pytest.approx(result.delta_ci95, abs=1e-6)


def test_outcomes_from_records_and_their_json():
    ex = Example(question="q", answer="a").with_inputs("question")
    rec = SimpleNamespace(key=None, example=ex, score=1.0)  # an in-process record without a key
    keyed = SimpleNamespace(key="k", score=0.25)
    out = outcomes_from_records([rec, keyed, {"key": "ex-2", "score": 0.0}, {"key": 3, "score": None, "repeats": [1, 0]}])
    from pytest_dspex.evaluation.datasets import example_key

    assert out == {example_key(ex): 1.0, "k": 0.25, "ex-2": 0.0, "3": 0.5}
    with pytest.raises(Exception, match="duplicate example key 'x'"):
        outcomes_from_records([{"key": "x", "score": 1}, {"key": "x", "score": 0}])


def test_clustered_interval_counts_examples_not_repeats():
    stable = [[1.0] * 5 if i < 80 else [0.0] * 5 for i in range(100)]
    # no example disagrees with itself: the same Wilson interval as one run of 100 examples
    assert clustered_confidence_interval(stable) == confidence_interval([1.0] * 80 + [0.0] * 20)
    runs = [[1.0] * 4] * 60 + [[0.0] * 4] * 20 + [[1.0, 0.0, 1.0, 0.0]] * 20
    assert clustered_mean(runs) == pytest.approx(0.7)
    lo, hi = clustered_confidence_interval(runs)
    # per-example means: 60 x 1.0, 20 x 0.0, 20 x 0.5; mean 0.7
    # sum of squares = 60 * 0.09 + 20 * 0.49 + 20 * 0.04 = 16.0; var = 16 / 99; se = sqrt(var / 100)
    half = 1.959964 * (16 / 99 / 100) ** 0.5  # = 0.07879
    assert lo == pytest.approx(0.7 - half) and hi == pytest.approx(0.7 + half)
    # the naive interval over all 400 repeats is narrower: repeats are not independent examples
    naive = confidence_interval([s for r in runs for s in r])
    assert naive[1] - naive[0] < hi - lo
    assert clustered_confidence_interval([]) == (0.0, 0.0)
    assert clustered_confidence_interval([[1.0, 0.0]]) == (0.0, 1.0)


def test_flaky_examples_are_those_whose_repeats_disagree():
    records = [{"key": "a", "repeats": [1.0, 1.0]}, {"key": "b", "repeats": [1.0, 0.0, 1.0]},
               {"key": "c", "repeats": None}, SimpleNamespace(key="d", repeats=[0.5, 0.25])]
    assert flaky_keys(records) == ["b", "d"]


def test_paired_interval_is_symmetric_for_balanced_flips_and_tightens_with_n():
    def run(n_same: int, flips: int) -> Comparison:
        base = {f"s{i}": float(i % 2) for i in range(n_same)}
        cur = dict(base)
        for i in range(flips):
            base[f"d{i}"], cur[f"d{i}"] = 1.0, 0.0  # pass -> fail
            base[f"u{i}"], cur[f"u{i}"] = 0.0, 1.0  # fail -> pass
        return compare(base, cur)

    small, large = run(60, 10), run(600, 100)
    assert small.delta == 0 and small.verdict == "no change" and small.p_value == 1.0
    assert small.delta_ci95[0] == pytest.approx(-small.delta_ci95[1])
    assert large.delta_ci95[1] - large.delta_ci95[0] < small.delta_ci95[1] - small.delta_ci95[0]


def _draws(rng, p, k):
    return [1.0 if rng.random() < p else 0.0 for _ in range(k)]


def test_a_baseline_of_draws_that_disagree_allows_for_its_own_noise():
    """A baseline of three draws per example on an endpoint that redraws answers: its luck is not a regression."""
    import random

    rng = random.Random(0)
    probs = [0.97 if i % 5 else 0.12 for i in range(200)]
    base = {f"ex-{i}": _draws(rng, p, 3) for i, p in enumerate(probs)}
    # a lucky baseline: three of its rarely-right examples right in every draw (+2.6 answers, 1.5 sd)
    lucky = {k: [1.0] * 3 if i in (0, 5, 10) else v for i, (k, v) in enumerate(base.items())}
    runs = [{f"ex-{i}": _draws(rng, p, 1)[0] for i, p in enumerate(probs)} for _ in range(50)]
    assert all(compare(base, run).test == "paired-noisy-baseline" for run in runs)
    assert sum(compare(base, run).regressed for run in runs) <= 1
    assert sum(compare(lucky, run).regressed for run in runs) <= 2
    # the same lucky baseline as one draw (the first), paired by McNemar: far more false alarms
    one = {k: v[0] for k, v in lucky.items()}
    assert sum(compare(one, run).regressed for run in runs) >= 10
    # a real drop (12 stably-right answers now always wrong) is still seen
    dropped = [{k: (0.0 if i % 5 and i < 15 else v) for i, (k, v) in enumerate(run.items())} for run in runs]
    assert sum(compare(base, run).regressed for run in dropped) >= 20
    # draws that agree on every example: the exact McNemar test, as with one draw
    same = {k: [v] * 3 for k, v in runs[0].items()}
    assert compare(same, runs[1]).test == "mcnemar-exact"


def test_a_noisy_baseline_of_more_draws_catches_a_real_drop_more_often_at_the_same_false_alarm_rate():
    """The allowance for the baseline's luck is its standard error, which shrinks with its draws; the
    run's own noise comes from the baseline's draws, so a real drop does not widen the spread."""
    import random

    rng = random.Random(1)
    probs = [0.97 if i % 5 else 0.12 for i in range(200)]
    keys = [f"ex-{i}" for i in range(200)]
    runs = [{k: _draws(rng, p, 1)[0] for k, p in zip(keys, probs, strict=True)} for _ in range(60)]
    # ten stably-right answers always wrong now: a drop of ~0.05 on 200 examples
    lost = {keys[i] for i in range(1, 13) if i % 5}
    dropped = [{k: 0.0 if k in lost else v for k, v in run.items()} for run in runs]
    caught, false = {}, {}
    for draws in (3, 8):
        base = {k: _draws(rng, p, draws) for k, p in zip(keys, probs, strict=True)}
        false[draws] = sum(compare(base, run).regressed for run in runs)
        caught[draws] = sum(compare(base, run).regressed for run in dropped)
        c = compare(base, dropped[0])
        assert c.test == "paired-noisy-baseline" and c.delta_ci95[0] < c.delta < c.delta_ci95[1]
    assert false[3] <= 2 and false[8] <= 2
    assert caught[8] >= 30 and caught[8] > caught[3]


def test_a_noisy_baseline_judges_an_improvement_the_same_way():
    import random

    rng = random.Random(2)
    probs = [0.97 if i % 5 else 0.12 for i in range(200)]
    keys = [f"ex-{i}" for i in range(200)]
    base = {k: _draws(rng, p, 8) for k, p in zip(keys, probs, strict=True)}
    # the rarely-right examples now always right: +40 answers
    better = {k: 1.0 if i % 5 == 0 else _draws(rng, p, 1)[0] for i, (k, p) in enumerate(zip(keys, probs, strict=True))}
    c = compare(base, better)
    # p is never below alpha / 5: the share of baselines allowed to be luckier than the allowance
    assert c.verdict == "improved" and c.p_value == pytest.approx(0.01) and c.delta > 0.1


def test_against_a_noisy_baseline_only_examples_whose_draws_agreed_count_as_fixed_or_regressed():
    """Trial 6 #11: an unchanged program against a baseline of 8 draws (15% refusals) said "no change …
    10 regressed, 41 fixed" every run: each example above its graded draw mean counted as fixed."""
    import random

    rng = random.Random(6)
    keys = [f"d{i}" for i in range(60)]
    base = {k: _draws(rng, 0.85, 8) for k in keys}
    stable_right = {k for k, v in base.items() if min(v) == 1.0}
    for _ in range(6):
        run = {k: _draws(rng, 0.85, 1)[0] for k in keys}
        c = compare(base, run)
        assert c.test == "paired-noisy-baseline" and c.verdict == "no change"
        assert not c.fixes  # nothing can be fixed that was right in every draw (and no other example counts)
        assert set(c.regressions) == {k for k in stable_right if run[k] == 0.0}
        assert len(c.regressions) <= 8, c.summary()
        assert "regressed" in c.summary() and "(of the examples whose baseline draws agreed)" in c.summary()
    # a stably-wrong example now right is a fix; a stably-right one now wrong a regression
    base2 = {**base, "d0": [0.0] * 8, "d1": [1.0] * 8}
    c = compare(base2, {**{k: base[k][0] for k in keys}, "d0": 1.0, "d1": 0.0})
    assert "d0" in c.fixes and "d1" in c.regressions


def test_a_redrawn_comparison_says_its_interval_is_the_first_answers_and_its_p_the_redraws():
    """Trial11 T11-4: "no change: delta -0.096 (95% CI -0.191..-0.001), p=0.455 [paired-redrawn]" read as a
    contradiction: the interval is the first answers' delta, the p the redraw rule's over every answer."""
    from pytest_dspex.evaluation.comparison import compare

    # 200 examples, each baseline 7 of 8 draws right; the run's first answer wrong on 40 of them (1 in 8 expected),
    # the redraw right on every one of those
    baseline = {f"k{i}": [1.0] * 7 + [0.0] for i in range(200)}
    current = {f"k{i}": 0.0 if i < 40 else 1.0 for i in range(200)}
    redraws = {f"k{i}": [1.0] for i in range(40)}
    c = compare(baseline, current, redraws=redraws, redraw_limit=3)
    assert c.test == "paired-redrawn" and c.verdict == "no change"
    lo, hi = c.delta_ci95
    assert hi < 0  # the first answers alone: a drop
    text = c.summary()
    assert f"delta {c.delta:+.3f} on the first answers (95% CI {lo:+.3f}..{hi:+.3f}), p=" in text, text
    assert " with the redraws [paired-redrawn]" in text, text
