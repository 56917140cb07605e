from __future__ import annotations

import enum
import json
from typing import Literal

import pytest

import pytest_dspex as dspex
from pytest_dspex.evaluation.datasets import fingerprint


def test_jsonl_json_and_csv_load_the_same_examples(tmp_path):
    rows = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("question,answer\nq1,a1\nq2,a2\n")
    loaded = [dspex.load_dataset(tmp_path / f"d.{ext}", input_keys=["question"]) for ext in ("jsonl", "json", "csv")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0][0].inputs().toDict() == {"question": "q1"}
    assert loaded[0][0].labels().toDict() == {"answer": "a1"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q2", oops}\n', r"bad.jsonl:2: not valid JSON"),
        # a row cut short: the column in that line, not the decoder's "line 2" of its trailing newline (trial F9)
        ("cut.jsonl", '{"question": "q"}\n{"question": "q2",\n', r"cut.jsonl:2: not valid JSON \(Expecting property name enclosed in double quotes: at the end of the line\)$"),
        ("col.jsonl", '{"question": "q", oops}\n', r"col.jsonl:1: not valid JSON \(Expecting property name enclosed in double quotes: column 19\)$"),
        ("list.jsonl", '{"question": "q"}\n[1, 2]\n', r"list.jsonl:2: expected a JSON object"),
        ("missing.jsonl", '{"question": "q"}\n{"answer": "a"}\n', r"missing.jsonl:2: row has no 'question'"),
        ("bad.csv", "question,answer\nq1,a1\nq2,a2,extra\n", r"bad.csv:3: more cells"),
        # trial8 T8-3: a quote never closed on line 2 swallowed the rows after it into one cell, silently
        ("quote.csv", 'question,answer\nq1,"a1\nq2,a2\nq3,a3\n', r"quote.csv:2: a quoted cell opened on this row is never closed \(it runs to the end of the file\): a missing closing quote\?$"),
        ("cells.csv", 'question,answer,extra\nq1,"a1\nq2,a2\n', r"cells.csv:2: a quoted cell opened on this row is never closed"),
        ("after.csv", 'question,answer\nq1,a1\nq2,"a2" b\n', r"after.csv:3: not valid CSV \(',' expected after '\"'\)$"),
        ("head.csv", 'question,"answer\n', r"head.csv:1: not valid CSV in the header row"),
        ("blank.csv", "question,answer\n\nq1,a1\n\n\nq2,a2,extra\n", r"blank.csv:6: more cells than header columns$"),
        ("spans.csv", 'question,answer,extra\nq0,a0,x\nq1,"a1\nq2"\n', r"spans.csv:3: fewer cells than header columns \(a quoted cell on it runs on to line 4: a misplaced quote\?\)$"),
        ("quoted.csv", 'question,answer\n"q1\nstill q1",a1\nq2,a2,extra\n', r"quoted.csv:4: more cells than header columns$"),
        ("empty.jsonl", "\n", r"empty.jsonl: dataset is empty"),
        ("x.txt", "q", r"unsupported dataset format"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(dspex.DatasetError, match=message):
        dspex.load_dataset(tmp_path / name, input_keys=["question"])


def test_missing_file(tmp_path):
    with pytest.raises(dspex.DatasetError, match="not found"):
        dspex.load_dataset(tmp_path / "nope.jsonl")


def test_split_is_seeded_and_disjoint():
    data = [dspex.Example(q=str(i)).with_inputs("q") for i in range(20)]
    a = dspex.split(data, dev_fraction=0.25, seed=1)
    b = dspex.split(data, dev_fraction=0.25, seed=1)
    c = dspex.split(data, dev_fraction=0.25, seed=2)
    assert a == b and a != c
    train, dev = a
    assert len(dev) == 5 and len(train) == 15
    assert {e.q for e in train}.isdisjoint({e.q for e in dev})
    assert fingerprint(train) != fingerprint(dev)


def test_example_key_is_the_id_else_a_hash_of_the_inputs():
    from pytest_dspex.evaluation.datasets import example_key

    assert example_key({"id": 17, "question": "q"}) == "17"
    a = dspex.Example(question="2+2?", answer="4").with_inputs("question")
    b = dspex.Example(answer="5", question="2+2?").with_inputs("question")  # same inputs, other label
    c = dspex.Example(question="2+3?", answer="5").with_inputs("question")
    assert example_key(a) == example_key(b) != example_key(c)
    # the documented recipe: "h:" + sha256 of the canonical JSON of the inputs, first 16 hex chars
    import hashlib

    assert example_key(a) == "h:" + hashlib.sha256(b'{"question":"2+2?"}').hexdigest()[:16]
    # key order of a multi-input example does not matter
    x = dspex.Example(q="a", ctx="b").with_inputs("q", "ctx")
    y = dspex.Example(ctx="b", q="a").with_inputs("ctx", "q")
    assert example_key(x) == example_key(y)
    # an example remembers its key, and forgets it when a field is set
    x.q = "z"
    assert example_key(x) == example_key(dspex.Example(q="z", ctx="b").with_inputs("q", "ctx")) != example_key(y)
    y["ctx"] = "c"
    assert example_key(y) == example_key({"q": "a", "ctx": "c"})


def test_duplicate_ids_are_an_error_naming_them_and_their_lines(tmp_path):
    rows = [{"id": "a", "question": "q1"}, {"id": "b", "question": "q2"}, {"id": "a", "question": "q3"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(dspex.DatasetError, match=r"d.jsonl: duplicate example key\(s\) 'a' \(line 1, line 3\)"):
        dspex.load_dataset(tmp_path / "d.jsonl", input_keys=["question"])


def test_duplicate_inputs_without_ids_are_an_error(tmp_path):
    (tmp_path / "d.csv").write_text("question,answer\nq1,a\nq2,b\nq1,c\n")
    with pytest.raises(dspex.DatasetError, match=r"duplicate example key.*line 2, line 4"):
        dspex.load_dataset(tmp_path / "d.csv", input_keys=["question"])


def test_check_unique_keys_returns_the_keys_in_order():
    from pytest_dspex.evaluation.datasets import check_unique_keys

    keys = check_unique_keys([{"id": 2}, {"id": 1}], "mem")
    assert keys == ["2", "1"]
    with pytest.raises(dspex.DatasetError, match=r"mem: .*'1' \(example 0, example 1\)"):
        check_unique_keys([{"id": 1}, {"id": "1"}], "mem")


def test_a_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: the first column (here ``id``) keeps its name (issue 23)."""
    from pytest_dspex.evaluation.datasets import example_key

    (tmp_path / "bom.csv").write_bytes("\ufeffid,question,answer\nq-1,q1,a1\nq-2,q2,a2\n".encode())
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"id": "q-1", "question": "q1", "answer": "a1"}\n'.encode())
    (tmp_path / "bom.json").write_bytes('\ufeff[{"id": "q-1", "question": "q1", "answer": "a1"}]'.encode())
    for name in ("bom.csv", "bom.jsonl", "bom.json"):
        rows = dspex.load_dataset(tmp_path / name, input_keys=["question"])
        assert example_key(rows[0]) == "q-1", name
    (tmp_path / "bom2.csv").write_bytes("\ufeffquestion,answer\nq1,a1\n".encode())
    assert dspex.load_dataset(tmp_path / "bom2.csv", input_keys=["question"])[0].question == "q1"


def test_csv_cells_are_read_as_their_fields_types(tmp_path):
    from pytest_dspex.errors import DatasetError
    from pytest_dspex.programs.fields import dataset_fields

    class Order(dspex.Signature):
        """Read an order."""

        message: str = dspex.InputField()
        quantity: int = dspex.OutputField()
        price: float = dspex.OutputField()
        urgent: bool = dspex.OutputField()
        size: Literal["small", "large"] = dspex.OutputField()
        note: str = dspex.OutputField()

    fields = dataset_fields(dspex.Predict(Order))
    (tmp_path / "d.csv").write_text("message,quantity,price,urgent,size,note\nm1,8,2.5,true,large,8\nm2,12,3,no,small,\n")
    first, second = dspex.load_dataset(tmp_path / "d.csv", input_keys=["message"], fields=fields)
    assert (first.quantity, first.price, first.urgent, first.size, first.note) == (8, 2.5, True, "large", "8")
    assert (second.quantity, second.price, second.urgent, second.size) == (12, 3, False, "small")
    (tmp_path / "bad.csv").write_text("message,quantity,price,urgent,size,note\nm1,8,2.5,true,large,x\nm2,8,2.5,true,medium,x\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: column 'size': 'medium' is not one of small, large"):
        dspex.load_dataset(tmp_path / "bad.csv", input_keys=["message"], fields=fields)
    # without the program's fields a cell stays text (a plain load_dataset call, as before)
    assert dspex.load_dataset(tmp_path / "d.csv", input_keys=["message"])[0].quantity == "8"


class Team(enum.Enum):
    BILLING = "billing"
    TECH = "tech"


class Route(dspex.Signature):
    """Route a message."""

    channel: Literal["mail", "chat"] = dspex.InputField()
    message: str = dspex.InputField()
    team: Team = dspex.OutputField()
    size: Literal["small", "large"] = dspex.OutputField()


def test_a_json_value_outside_a_literal_or_enum_field_is_an_error_naming_the_line(tmp_path):
    """Trial2 F-b: a JSONL label outside the output field's Literal was accepted (a miss forever)."""
    from pytest_dspex.errors import DatasetError
    from pytest_dspex.programs.fields import dataset_fields

    fields = dataset_fields(dspex.Predict(Route))
    good = [{"channel": "mail", "message": "m1", "team": "billing", "size": "small"},
            {"channel": "chat", "message": "m2", "team": "TECH", "size": "large"}]  # fmt: skip
    (tmp_path / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    assert len(dspex.load_dataset(tmp_path / "ok.jsonl", input_keys=["channel", "message"], fields=fields)) == 2
    for field, value, allowed in (("size", "medum", "'small', 'large'"), ("team", "biling", "'billing', 'tech'"),
                                  ("channel", "phone", "'mail', 'chat'")):  # fmt: skip
        bad = [dict(good[0]), dict(good[1], **{field: value})]
        (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
        with pytest.raises(DatasetError, match=rf"bad.jsonl:2: field '{field}': '{value}' is not one of {allowed}"):
            dspex.load_dataset(tmp_path / "bad.jsonl", input_keys=["channel", "message"], fields=fields)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(DatasetError, match=rf"bad.json: item 1: field '{field}'"):
            dspex.load_dataset(tmp_path / "bad.json", input_keys=["channel", "message"], fields=fields)
    # without the program's fields nothing is checked (a plain load_dataset call, as before)
    assert dspex.load_dataset(tmp_path / "bad.jsonl", input_keys=["message"])[1].channel == "phone"
