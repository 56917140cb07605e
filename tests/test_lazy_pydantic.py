"""A program whose fields are all plain text never imports pydantic's models (~25 ms of CPU in every
process, each xdist worker): the pydantic checks look for models only once pydantic has been imported."""

from __future__ import annotations

import subprocess
import sys

import pydantic

from pytest_dspex._support.types import is_pydantic_model
from pytest_dspex.programs import demos
from pytest_dspex.programs.signatures import render_value


class Ticket(pydantic.BaseModel):
    team: str
    priority: int


def test_models_are_still_seen_as_models():
    t = Ticket(team="billing", priority=2)
    assert is_pydantic_model(t) and not is_pydantic_model({"team": "billing"}) and not is_pydantic_model(Ticket)
    assert render_value(t) == '{"team":"billing","priority":2}'
    assert demos.jsonable({"t": [t]}) == {"t": [{"team": "billing", "priority": 2}]}


def test_a_plain_text_program_and_a_golden_store_import_no_pydantic():
    code = (
        "import sys\n"
        "import pytest_dspex as dspex\n"
        "from pytest_dspex.golden.store import GoldenStore\n"
        "from pytest_dspex.programs.coerce import coerce\n"
        "p = dspex.Predict('message -> team')\n"
        "spec = p.signature.output_fields()['team']\n"
        "assert coerce(spec, ' billing ') == 'billing'\n"
        "GoldenStore('__dspex__').path_for('test_x', 'triage')\n"
        "print(sorted(m for m in sys.modules if m == 'pydantic' or m.startswith(('pydantic.', 'pytest_dspex.golden.file'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_typed_fields_still_validate_in_a_fresh_process():
    code = (
        "import pytest_dspex as dspex\n"
        "from pytest_dspex.errors import AdapterParseError\n"
        "from pytest_dspex.programs.coerce import coerce\n"
        "out = dspex.Predict('question -> n: int, ok: bool, tags: list[int]').signature.output_fields()\n"
        "assert coerce(out['n'], '42') == 42 and coerce(out['ok'], 'Yes.') is True and coerce(out['tags'], '[1, 2]') == [1, 2]\n"
        "for spec, bad in ((out['ok'], 'perhaps'), (out['tags'], '[\"x\"]')):\n"
        "    try:\n"
        "        coerce(spec, bad)\n"
        "    except AdapterParseError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and "field 'ok': expected bool" in lines[0] and "field 'tags'" in lines[1], out.stdout + out.stderr
