"""``python -m pytest_dspex``: the compiled prompt out of a golden file, reports rendered from JSON,
and ``load_golden`` for production code."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

import pytest_dspex as dspex
from pytest_dspex.cli import main
from pytest_dspex.golden.record import golden_record
from pytest_dspex.golden.store import GoldenStore
from pytest_dspex.testing.fake_server import FakeLMServer

from .report_samples import program_row, report


class Ticket(dspex.Signature):
    """Route a customer message to the team that should handle it."""

    message: str = dspex.InputField(desc="the customer's words", prefix="Customer says:")
    tags: list[str] = dspex.InputField()
    team: Literal["billing", "technical", "it's other"] = dspex.OutputField(desc="the team")


DEMOS = [
    {"message": "I was charged twice", "tags": ["invoice"], "team": "billing", "augmented": True},
    {"message": "The app crashes", "tags": [], "team": "technical"},
]


def _compiled() -> dspex.Predict:
    program = dspex.Predict(Ticket)
    program.demos = [dict(d) for d in DEMOS]
    return program


def _write_golden(tmp_path: Path, program: dspex.Module, name: str = "ticket", adapter: str | None = None) -> Path:
    path = tmp_path / "__dspex__" / "test_ticket" / f"{name}.json"
    record = golden_record(program, name=name, metric="m", validation=(0.9, 10), adapter=adapter)
    GoldenStore(tmp_path / "__dspex__").write(path, record)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _sent(server_factory: Callable[..., FakeLMServer], make_lm: Callable[..., dspex.LM], program: dspex.Module, **inputs: Any) -> list[dict[str, str]]:
    """The messages ``program`` really sends to an LM for ``inputs``."""
    seen: list[dict[str, Any]] = []

    def capture(body: dict[str, Any]) -> str:
        seen.append(body)
        return "no answer in any layout"  # only the request matters here

    with dspex.context(lm=make_lm(server_factory(capture))), pytest.raises(dspex.AdapterParseError):
        program(**inputs)
    return seen[0]["messages"]  # type: ignore[no-any-return]


# -- prompt --------------------------------------------------------------------------------------------
def test_prompt_of_a_plain_functions_golden_says_it_records_no_prompt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # trial8 T8-4: the golden of a plain function (baseline only) printed two header lines and nothing
    # more, and --input message=... failed with "no predictor has the input field(s) message (input fields: none)"
    def route(message: str) -> str:  # pragma: no cover - never called
        return "billing"

    golden = _write_golden(tmp_path, dspex.program(route, outputs=["team"]), name="route")
    for extra in ([], ["--input", "message=I was charged twice"]):
        code, out, err = _run(capsys, "prompt", str(golden), *extra)
        assert (code, err) == (0, ""), err
        assert "# a plain function (no predictors): no prompt is recorded for it, it sends the messages its own code builds" in out
    code, out, _ = _run(capsys, "prompt", str(golden), "--json")
    data = json.loads(out)
    assert code == 0 and data["predictors"] == {} and data["note"].startswith("a plain function (no predictors)")


@pytest.mark.parametrize("adapter", ["compact", "chat", "json"])
def test_prompt_prints_exactly_what_the_compiled_program_sends(
    adapter: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    server_factory: Callable[..., FakeLMServer], make_lm: Callable[..., dspex.LM],
) -> None:  # fmt: skip
    golden = _write_golden(tmp_path, _compiled(), adapter=adapter)  # its recorded prompts name the layout
    program = dspex.load_golden(dspex.Predict(Ticket, adapter=adapter), golden)
    sent = _sent(server_factory, make_lm, program, message="Refund my order", tags=["refund", "order"])

    code, out, err = _run(capsys, "prompt", str(golden), "--json",
                          "--input", "message=Refund my order", "-i", 'tags=["refund", "order"]')  # fmt: skip
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["predictors"]["self"]["adapter"] == adapter and data["program"] == "ticket"
    assert data["predictors"]["self"]["messages"] == sent
    assert data["predictors"]["self"]["demos"] == 2

    golden = _write_golden(tmp_path, _compiled())  # compact prompts recorded; --adapter overrides
    code, text, _ = _run(capsys, "prompt", str(golden), "--adapter", adapter, "-i", "message=Refund my order",
                         "-i", 'tags=["refund", "order"]')  # fmt: skip
    assert code == 0
    for m in sent:
        assert f"--- {m['role']} ---\n{m['content']}" in text


def test_prompt_shows_a_calibrated_classifiers_adjustments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program = _compiled()
    program.calibration = {"billing": -0.5, "technical": 0.25, "it's other": 0.1}
    golden = _write_golden(tmp_path, program)
    code, out, _ = _run(capsys, "prompt", str(golden), "--json", "-i", "message=hi", "-i", "tags=[]")
    assert code == 0 and json.loads(out)["predictors"]["self"]["calibration"] == program.calibration
    code, text, _ = _run(capsys, "prompt", str(golden), "-i", "message=hi", "-i", "tags=[]")
    assert code == 0 and "--- calibration (label: score adjustment) ---" in text and '"billing": -0.5' in text
    assert "load_golden" in text
    assert dspex.load_golden(dspex.Predict(Ticket), golden).calibration == program.calibration

    golden = _write_golden(tmp_path, _compiled(), name="plain")  # uncalibrated: nothing said
    code, text, _ = _run(capsys, "prompt", str(golden), "-i", "message=hi", "-i", "tags=[]")
    assert code == 0 and "calibration" not in text


def test_prompt_of_a_chain_of_thought_with_placeholders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    server_factory: Callable[..., FakeLMServer], make_lm: Callable[..., dspex.LM],
) -> None:  # fmt: skip
    cot = dspex.ChainOfThought("question -> answer: int")
    cot.predict.demos = [{"question": "2 + 2?", "reasoning": "add", "answer": 4}]
    golden = _write_golden(tmp_path, cot, "math")
    code, text, _ = _run(capsys, "prompt", str(golden))
    assert code == 0
    assert text.splitlines()[0] == f"# {golden}: program math"
    assert "## predictor predict: compact adapter, 1 demos" in text
    assert "Question: 2 + 2?\nReasoning: add\nAnswer: 4\n\nQuestion: {question}\nReasoning:" in text
    assert '--- stop sequences ---\n["\\n\\n", "\\nQuestion:"]' in text
    sent = _sent(server_factory, make_lm, dspex.load_golden(dspex.ChainOfThought("question -> answer: int"), golden), question="3 + 1?")
    code, out, _ = _run(capsys, "prompt", str(golden), "--json", "-i", "question=3 + 1?")
    assert json.loads(out)["predictors"]["predict"]["messages"] == sent


class RouteAndReply(dspex.Module):
    def __init__(self) -> None:
        self.route = dspex.Predict(Ticket)
        self.reply = dspex.ChainOfThought("message, team -> reply", adapter="chat")

    def forward(self, **kw: Any) -> Any:  # pragma: no cover - only its prompts are looked at
        team = self.route(**kw).team
        return self.reply(message=kw["message"], team=team)


def test_prompt_of_a_program_with_two_predictors_and_two_adapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program = RouteAndReply()
    program.route.demos = [dict(d) for d in DEMOS]
    program.reply.predict.demos = [{"message": "m", "team": "billing", "reasoning": "r", "reply": "We refunded you."}]
    golden = _write_golden(tmp_path, program, "support")
    code, out, _ = _run(capsys, "prompt", str(golden), "--json", "-i", "message=Where is my refund?")
    assert code == 0
    data = json.loads(out)["predictors"]
    assert {p: d["adapter"] for p, d in data.items()} == {"route": "compact", "reply.predict": "chat"}
    assert data["route"]["demos"] == 2 and data["reply.predict"]["demos"] == 1
    loaded = dspex.load_golden(RouteAndReply(), golden)
    expect = loaded.reply.predict.adapter.format(  # type: ignore[attr-defined]
        loaded.reply.predict.signature, loaded.reply.predict.demos, {"message": "Where is my refund?", "team": "{team}"}  # type: ignore[attr-defined]
    )
    assert data["reply.predict"]["messages"] == expect.messages
    assert "Customer says: Where is my refund?" in data["route"]["messages"][-1]["content"]


def test_prompt_errors_name_the_file_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    code, out, err = _run(capsys, "prompt", str(missing))
    assert (code, out) == (2, "")
    assert err == f"pytest-dspex: error: {missing}: no such golden file; compile one with pytest --dspex-compile\n"

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema_version": 1, "predictors": ', encoding="utf-8")
    code, _, err = _run(capsys, "prompt", str(corrupt))
    assert code == 2 and err.startswith(f"pytest-dspex: error: {corrupt}: corrupted golden file (not valid JSON")

    no_signature = tmp_path / "nosig.json"
    no_signature.write_text('{"schema_version": 1, "predictors": {"self": {"demos": []}}}', encoding="utf-8")
    code, _, err = _run(capsys, "prompt", str(no_signature))
    assert code == 2 and f"{no_signature}: predictor 'self': corrupted golden file (no signature recorded)" in err

    code, _, err = _run(capsys, "prompt", str(tmp_path))
    assert code == 2 and "is a directory" in err

    golden = _write_golden(tmp_path, _compiled())
    code, _, err = _run(capsys, "prompt", str(golden), "-i", "mesage=typo")
    assert code == 2 and "no predictor has the input field(s) mesage (input fields: message, tags)" in err
    code, _, err = _run(capsys, "prompt", str(golden), "-i", "message")
    assert code == 2 and "--input 'message': expected FIELD=VALUE" in err


def test_python_dash_m(tmp_path: Path) -> None:
    golden = _write_golden(tmp_path, _compiled())
    done = subprocess.run([sys.executable, "-m", "pytest_dspex", "prompt", str(golden), "-i", "message=hi"],
                          capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Customer says: hi\n" in done.stdout
    done = subprocess.run([sys.executable, "-m", "pytest_dspex"], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2 and "prompt" in done.stderr and "report" in done.stderr


# -- report --------------------------------------------------------------------------------------------
def test_report_renders_html_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "dspex-report.json"
    src.write_text(json.dumps(report(program_row(passed=False))), encoding="utf-8")
    code, out, err = _run(capsys, "report", str(src), "--html", str(tmp_path / "r.html"), "--markdown", str(tmp_path / "r.md"))
    assert (code, out, err) == (0, "", "")
    assert "<!doctype html>" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert (tmp_path / "r.md").read_text(encoding="utf-8").startswith("### ❌ pytest-dspex: 1 of 1 program failed")
    code, out, _ = _run(capsys, "report", str(src), "--markdown", "-")
    assert code == 0 and out.startswith("### ❌")

    code, out, err = _run(capsys, "report", str(src), "--junit", str(tmp_path / "r.xml"))  # every format of the registry
    assert (code, out, err) == (0, "", "")
    case = ET.parse(tmp_path / "r.xml").getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is not None

    code, _, err = _run(capsys, "report", str(src))
    assert code == 2 and "--html PATH, --markdown PATH and/or --junit PATH" in err
    code, _, err = _run(capsys, "report", str(tmp_path / "none.json"), "--markdown", "-")
    assert code == 2 and "none.json: no such report" in err
    (tmp_path / "bad.json").write_text("[1]", encoding="utf-8")
    code, _, err = _run(capsys, "report", str(tmp_path / "bad.json"), "--markdown", "-")
    assert code == 2 and "bad.json: not a pytest-dspex report" in err


def test_report_to_a_path_that_cannot_be_written_is_one_line_and_the_other_formats_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 9 (T9-4): ``--html`` under a file was a FileExistsError traceback (exit 1) and the formats
    after it were not written."""
    src = tmp_path / "dspex-report.json"
    src.write_text(json.dumps(report(program_row(passed=True))), encoding="utf-8")
    bad = tmp_path / "dspex-report.json" / "r.html"  # a path under a file
    code, _, err = _run(capsys, "report", str(src), "--html", str(bad), "--markdown", str(tmp_path / "r.md"))
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert f"html report not written: {bad}:" in err
    assert (tmp_path / "r.md").read_text(encoding="utf-8").startswith("### ✅")


# -- load_golden ---------------------------------------------------------------------------------------
def test_load_golden_for_production_code(tmp_path: Path) -> None:
    golden = _write_golden(tmp_path, _compiled())
    fresh = dspex.Predict(Ticket)
    loaded = dspex.load_golden(fresh, golden)
    assert fresh.demos == []  # the program passed in is left as it was
    assert isinstance(loaded, dspex.Predict)
    assert loaded.demos == DEMOS

    with pytest.raises(dspex.GoldenFileError, match=r"nope\.json: no such golden file"):
        dspex.load_golden(dspex.Predict(Ticket), tmp_path / "nope.json")
    with pytest.raises(dspex.GoldenFileError, match="ticket.json"):
        dspex.load_golden(dspex.ChainOfThought("question -> answer"), golden)


def test_prompt_takes_a_programs_name_as_compile_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """trial12 T12-5: ``prompt triage`` (the name ``--dspex-compile=triage`` takes) said "triage: no such golden
    file; compile one with pytest --dspex-compile" of a compiled program."""
    monkeypatch.chdir(tmp_path)
    golden = _write_golden(tmp_path / "tests", _compiled())
    code, by_name, err = _run(capsys, "prompt", "ticket")
    assert (code, err) == (0, ""), err
    _, by_path, _ = _run(capsys, "prompt", str(golden))
    assert by_name == by_path.replace(str(golden), "tests/__dspex__/test_ticket/ticket.json")
    _write_golden(tmp_path / "other", _compiled())  # two test modules' goldens of one name: which one?
    code, _, err = _run(capsys, "prompt", "ticket")
    assert code == 2 and err == (
        "pytest-dspex: error: ticket: no such golden file; the goldens of a program 'ticket' here: "
        "other/__dspex__/test_ticket/ticket.json, tests/__dspex__/test_ticket/ticket.json (give the path)\n"
    )
    code, _, err = _run(capsys, "prompt", "tiket")
    assert code == 2 and err == (
        "pytest-dspex: error: tiket: no such golden file; compile one with pytest --dspex-compile "
        "(GOLDEN is a path: <test dir>/__dspex__/<test module>/<program>.json)\n"
    )
