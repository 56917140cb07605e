"""What a DSPy 3.4.1 user writes is accepted, or answered with the pytest-dspex equivalent (issue 25)."""

from __future__ import annotations

import pytest

import pytest_dspex as dspex
from pytest_dspex.testing.fake_server import FakeLMServer


class _DspyLikeExample:
    """A ``dspy.Example`` as its duck type: ``toDict()``, ``_input_keys`` (a set) and ``inputs()``."""

    def __init__(self, **fields: object) -> None:
        self._store = dict(fields)
        self._input_keys: set[str] | None = None

    def with_inputs(self, *keys: str) -> _DspyLikeExample:
        new = _DspyLikeExample(**self._store)
        new._input_keys = set(keys)
        return new

    def toDict(self) -> dict[str, object]:
        return dict(self._store)

    def keys(self) -> list[str]:
        return list(self._store)

    def __getitem__(self, key: str) -> object:
        return self._store[key]


def _answer(body: dict) -> str:
    return " 4"


def _exact(example, prediction, trace=None) -> bool:
    return bool(example.answer == prediction.answer)


@pytest.fixture
def server():
    with FakeLMServer(_answer) as s:  # its own: these tests set the responder
        yield s


def test_lm_accepts_api_base_and_num_retries_as_dspy_spells_them(server):
    lm = dspex.LM("fake", api_base=server.base_url, api_key="x", num_retries=1, cache=False)
    assert lm.base_url == server.base_url and lm.retry.retries == 1 and lm.cache is None
    assert dspex.Predict("question -> answer", lm=lm)(question="2 + 2?").answer == "4"
    with pytest.raises(dspex.ConfigError, match="api_base is DSPy's name for base_url, give one"):
        dspex.LM("fake", api_base=server.base_url, base_url="http://127.0.0.1:1/v1")
    with pytest.raises(TypeError, match=r"LM\(\) got unexpected keyword argument 'model_type' \(pytest-dspex: not needed"):
        dspex.LM("fake", base_url=server.base_url, model_type="chat")


def test_evaluate_takes_num_threads_dspy_examples_and_reports_dspy_percent(server):
    lm = dspex.LM("fake", base_url=server.base_url, api_key="x", cache=None)
    devset = [_DspyLikeExample(id=i, question=f"{i} + 2?", answer="4" if i % 2 else "5").with_inputs("question") for i in range(4)]
    evaluate = dspex.Evaluate(devset=devset, metric=_exact, num_threads=3)
    assert evaluate.concurrency == 3
    result = evaluate(dspex.Predict("question -> answer", lm=lm))
    assert (result.n, result.score, result.percent) == (4, 0.5, 50.0)
    assert result.records[0].inputs == {"question": "0 + 2?"}  # input keys kept, labels are labels
    with pytest.raises(ValueError, match=r"devset item 0 is an example without input keys \(call \.with_inputs"):
        dspex.Evaluate([_DspyLikeExample(question="q", answer="a")], _exact)
    with pytest.raises(ValueError, match="devset item 1 is dict, not an Example with input keys"):
        dspex.Evaluate([devset[0], {"question": "q"}], _exact)


def test_optimizers_take_a_trainset_of_dspy_examples(server):
    lm = dspex.LM("fake", base_url=server.base_url, api_key="x", cache=None)
    train = [_DspyLikeExample(id=i, question=f"{i} + 2?", answer="4").with_inputs("question") for i in range(6)]
    labeled = dspex.LabeledFewShot(k=3).compile(dspex.Predict("question -> answer", lm=lm), trainset=train)
    assert [set(d) for d in labeled.demos] == [{"question", "answer"}] * 3  # input and label fields, no stray id
    boot = dspex.BootstrapFewShot(_exact, max_bootstrapped_demos=2, max_labeled_demos=0)
    compiled = boot.compile(dspex.Predict("question -> answer", lm=lm), trainset=train)
    assert [d["question"] for d in compiled.demos] == ["0 + 2?", "1 + 2?"]
    with pytest.raises(ValueError, match=r"trainset item 1 is an example without input keys \(call \.with_inputs"):
        boot.compile(dspex.Predict("question -> answer", lm=lm), trainset=[train[0], _DspyLikeExample(question="q", answer="a")])


def test_evaluate_display_progress_prints_dspy_style_progress(server, capsys):
    lm = dspex.LM("fake", base_url=server.base_url, api_key="x", cache=None)
    devset = [dspex.Example(question="q", answer="4").with_inputs("question")]
    dspex.Evaluate(devset, _exact, display_progress=True)(dspex.Predict("question -> answer", lm=lm))
    assert "Average metric: 1.000 (1/1, 0 errors)" in capsys.readouterr().err


def test_display_progress_into_a_ci_log_is_one_line_not_updates_glued_by_carriage_returns(capsys):
    """Trial 9 (T9-6): stderr not a terminal read ``Average metric: 1.000 (1/20, 0 errors)Average metric: …``."""
    from pytest_dspex.evaluation.evaluate import _print_progress

    for done in (1, 7, 20):
        _print_progress(done, 20, 1.0, 0)
    assert capsys.readouterr().err == "Average metric: 1.000 (20/20, 0 errors)\n"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dspex.Evaluate([], _exact, max_errors=5), r"'max_errors' \(pytest-dspex: never stops early.*--dspex-max-error-rate"),
        (lambda: dspex.Evaluate([], _exact, display_table=5), r"'display_table' \(pytest-dspex: print\(result.summary\(\)\)"),
        (lambda: dspex.Predict("q -> a", n=3), r"'n' \(pytest-dspex: one completion per call here: .*--dspex-repeats N"),
        (lambda: dspex.Predict("q -> a", temprature=0.5), r"'temprature' \(did you mean 'temperature'\?\)"),
        (lambda: dspex.ChainOfThought("q -> a", rationale_field="why"), r"'rationale_field' \(pytest-dspex: ChainOfThought\(\.\.\., rationale_desc="),
        (lambda: dspex.configure(track_usage=True), r"configure\(\) got unknown setting 'track_usage' \(pytest-dspex: usage is always counted"),
        (lambda: dspex.configure(max_errors=3), r"'max_errors' \(pytest-dspex: never stops early"),
        (lambda: dspex.configure(num_threads=8), r"'num_threads' \(pytest-dspex: Evaluate\(concurrency=\.\.\.\)"),
    ],
)
def test_dspy_options_without_a_twin_say_what_to_use(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_predict_sends_known_settings_and_extra_body_but_no_unknown_field(server):
    lm = dspex.LM("fake", base_url=server.base_url, api_key="x", cache=None)
    seen: list[dict] = []
    server.responder = lambda body: (seen.append(body), " 4")[1]
    assert dspex.Predict("q -> a", lm=lm, n=1, top_p=0.5, extra_body={"cache_prompt": True})(q="x").a == "4"
    assert seen[-1]["top_p"] == 0.5 and seen[-1]["cache_prompt"] is True and "n" not in seen[-1]


def test_optimizers_are_at_the_top_level():
    from pytest_dspex.optimize import BootstrapFewShot, BootstrapFewShotWithRandomSearch, LabeledFewShot

    assert dspex.BootstrapFewShot is BootstrapFewShot
    assert dspex.LabeledFewShot is LabeledFewShot
    assert dspex.BootstrapFewShotWithRandomSearch is BootstrapFewShotWithRandomSearch


def test_evaluate_refuses_a_dspy_module_as_the_marker_does() -> None:
    """Trial finding F5: a dspy.Predict given to dspex.Evaluate ran as a plain function ("No LM is
    loaded" on every example, or DSPy's own LM, uncached and uncounted); now the marker's TypeError."""
    predict_class = type("Predict", (), {"__module__": "dspy.predict.predict", "__call__": lambda self, **kw: None})
    devset = [dspex.Example(question="q", answer="a").with_inputs("question")]
    with pytest.raises(TypeError, match=r"Evaluate\(\.\.\.\)\(program\): program is a DSPy module, dspy\.Predict; .*import pytest_dspex as dspex"):
        dspex.Evaluate(devset, _exact)(predict_class())
