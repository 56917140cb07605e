"""A dataset read as the program's signature says (trial F16, F13): a CSV cell of an ``int`` field is
an int (scored like the same row in JSONL), a cell that does not parse names its line and column, and a
row without its label is found when the file loads, before any LM call."""

from __future__ import annotations

import csv
import json
import re
from typing import Any

import pytest

from pytest_dspex.testing.fake_server import FakeLMServer

from .test_plugin import MODES

PROGRAM = '''
import pytest
import pytest_dspex as dspex

class Count(dspex.Signature):
    """How many items the message orders."""
    message: str = dspex.InputField()
    quantity: int = dspex.OutputField()

count = dspex.Predict(Count)

def right(example, prediction, trace=None):
    return example.quantity == prediction.quantity

@pytest.mark.dspex_program(count, name="count", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(right, threshold=0.8)
def test_count(dspex_evaluate):
    dspex_evaluate("data/dev.EXT")
'''


def answer(body: dict[str, Any]) -> str:
    last = str(body["messages"][-1]["content"]).rsplit("Message:", 1)[-1]
    return " " + re.findall(r"need (\d+)", last)[-1]


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def server(server_factory: Any) -> FakeLMServer:
    s: FakeLMServer = server_factory(answer)
    s.keep_bodies = False
    return s


def rows(n: int, prefix: str = "d") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "message": f"Hello, I need {i % 9 + 1} coffee filters.", "quantity": i % 9 + 1} for i in range(n)]


def write_jsonl(pytester: pytest.Pytester, name: str, data: list[dict[str, Any]]) -> None:
    path = pytester.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in data))


def write_csv(pytester: pytest.Pytester, name: str, data: list[dict[str, Any]]) -> None:
    path = pytester.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "message", "quantity"])
        writer.writeheader()
        writer.writerows(data)


def project(pytester: pytest.Pytester, ext: str, dev: list[dict[str, Any]] | None = None) -> None:
    write_jsonl(pytester, "data/train.jsonl", rows(6, "t"))
    (write_csv if ext == "csv" else write_jsonl)(pytester, f"data/dev.{ext}", dev if dev is not None else rows(20))
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_missing_golden = zero-shot\n")
    pytester.makepyfile(test_count=PROGRAM.replace("EXT", ext))


def run(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str], *args: str) -> pytest.RunResult:
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=0"]
    return pytester.runpytest_subprocess(*opts, "-p", "no:cacheprovider", *mode, *args, timeout=300)


COMPILE = ["--dspex-compile", "--dspex-candidates=0", "--dspex-demos=1", "--dspex-labeled-demos=1"]


def test_a_csv_dev_set_scores_its_int_field_like_the_same_rows_in_jsonl(pytester, server, mode):
    """Trial F16: the CSV's '8' was compared with the answer 8: every example scored 0, "relabelled"."""
    project(pytester, "jsonl")
    assert run(pytester, server, mode, *COMPILE).ret == 0
    scores = {}
    for ext in ("jsonl", "csv"):
        project(pytester, ext)  # the same rows, the same golden
        out = run(pytester, server, mode, f"--dspex-report=report-{ext}.json")
        assert out.ret == 0, out.stdout.str()
        (row,) = json.loads((pytester.path / f"report-{ext}.json").read_text())["programs"]
        scores[ext] = (row["score"], row["comparison"]["shared"])
        assert "relabelled" not in out.stdout.str()
    assert scores == {"jsonl": (1.0, 20), "csv": (1.0, 20)}


def test_a_csv_cell_that_is_not_its_fields_type_names_the_line_and_column(pytester, server, mode):
    dev = rows(5)
    dev[2]["quantity"] = "eight"
    project(pytester, "csv", dev)
    out = run(pytester, server, mode)
    assert out.ret == 1
    out.stdout.fnmatch_lines(["*data/dev.csv:4: column 'quantity': expected a number (int), got 'eight'*"])
    assert server.requests == 0


def test_a_training_row_without_its_label_is_an_error_before_any_lm_call(pytester, server, mode):
    """Trial F13: it was found after minutes of compiling, and blamed on the metric."""
    project(pytester, "jsonl")
    train = rows(6, "t")
    del train[3]["quantity"]
    write_jsonl(pytester, "data/train.jsonl", train)
    out = run(pytester, server, mode, "--dspex-compile", "--dspex-candidates=0")
    assert out.ret != 0
    out.stdout.fnmatch_lines(["*data/train.jsonl:4 (id t3): no 'quantity' (an output field of Count*"])
    assert "metric" not in out.stdout.str().lower()
    assert server.requests == 0


def test_a_training_row_with_a_misspelt_label_names_the_path_from_the_rootdir_and_the_column(pytester, server, mode):
    """Trial2 F9: the trainset row error named the absolute path (dev-set errors are relative to the
    rootdir) and did not say the row has an unknown column ``tema``, a likely misspelling of ``team``."""
    project(pytester, "jsonl")
    train = rows(6, "t")
    train[3]["quantitty"] = train[3].pop("quantity")
    write_jsonl(pytester, "data/train.jsonl", train)
    out = run(pytester, server, mode, "--dspex-compile", "--dspex-candidates=0")
    assert out.ret != 0
    text = out.stdout.str()
    said = ("data/train.jsonl:4 (id t3): no 'quantity' (an output field of Count, the label the other rows carry); "
            "it has an unknown column 'quantitty': a misspelling of 'quantity'?; label the row or remove it")  # fmt: skip
    assert said in text, text
    assert f"{pytester.path}/data/train.jsonl" not in text and f"{pytester.path.name}/data/train.jsonl" not in text
    assert server.requests == 0


def test_a_dev_row_without_its_label_fails_the_test_when_the_file_loads(pytester, server, mode):
    dev = rows(20)
    dev[7]["quantity"] = None
    project(pytester, "jsonl", dev)
    out = run(pytester, server, mode)
    assert out.ret == 1
    out.stdout.fnmatch_lines(["*data/dev.jsonl:8 (id d7): no 'quantity' (an output field of Count*"])
    assert server.requests == 0


SIZED = '''
from typing import Literal

import pytest
import pytest_dspex as dspex

class Size(dspex.Signature):
    """Which size the message orders."""
    message: str = dspex.InputField()
    size: Literal["small", "large"] = dspex.OutputField()

size = dspex.Predict(Size)

def right(example, prediction, trace=None):
    return example.size == prediction.size

@pytest.mark.dspex_program(size, name="size")
@pytest.mark.dspex_metric(right, threshold=0.8)
def test_size(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''


def test_a_jsonl_label_outside_the_fields_literal_names_the_line_and_the_allowed_values(pytester, server, mode):
    """Trial2 F-b: a label 'medium' (or a typo) outside ``Literal['small', 'large']`` was scored as a
    miss forever, and the hint then offered to record it as the new baseline."""
    dev = [
        {"id": f"d{i}", "message": f"A {s} coffee, please.", "size": s} for i, s in enumerate(["small", "large"] * 3)
    ]
    dev[3]["size"] = "Large"
    write_jsonl(pytester, "data/dev.jsonl", dev)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_missing_golden = zero-shot\n")
    pytester.makepyfile(test_size=SIZED)
    out = run(pytester, server, mode)
    assert out.ret == 1
    out.stdout.fnmatch_lines(
        [
            "*data/dev.jsonl:4: field 'size': 'Large' is not one of 'small', 'large' (an output field of Size*(did you mean 'large'?)*"
        ]
    )
    assert "rebaseline" not in out.stdout.str()
    assert server.requests == 0


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("8", "data/dev.jsonl:3: field 'quantity': '8' is a string, not a number (an output field of Count, typed int); write it as 8"),
        ("eight", "data/dev.jsonl:3: field 'quantity': 'eight' is a string, not a number (an output field of Count, typed int); fix the row or the field's type"),
        (8.5, "data/dev.jsonl:3: field 'quantity': 8.5 is not a whole number (an output field of Count, typed int); fix the row or the field's type"),
    ],
    ids=["quoted", "word", "fraction"],
)
def test_a_jsonl_label_that_is_not_its_fields_type_names_the_line_before_any_lm_call(pytester, server, mode, value, said):
    """trial 4 F4: a jsonl label "8" for an int field was compared with the answer 8: a miss forever (and
    "1 example relabelled since the baseline"), where a CSV cell is read as its type and a Literal label is checked."""
    dev = rows(5)
    dev[2]["quantity"] = value
    project(pytester, "jsonl", dev)
    out = run(pytester, server, mode)
    assert out.ret == 1, out.stdout.str()
    assert said in out.stdout.str(), out.stdout.str()
    assert server.requests == 0


def test_a_jsonl_int_label_written_as_a_whole_float_is_its_number(pytester, server, mode):
    dev = rows(5)
    dev[2]["quantity"] = float(dev[2]["quantity"])  # 3.0: JSON writers do that; it equals 3
    project(pytester, "jsonl", dev)
    out = run(pytester, server, mode)
    assert out.ret == 0, out.stdout.str()
