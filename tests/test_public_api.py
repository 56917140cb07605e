from __future__ import annotations

import subprocess
import sys

import pytest_dspex


def test_all_exports_exist_and_every_lazy_name_is_exported():
    for name in pytest_dspex.__all__:
        if name != "__version__":
            assert getattr(pytest_dspex, name) is not None, name
    assert set(pytest_dspex._LAZY) <= set(pytest_dspex.__all__)
    public = {n for n in dir(pytest_dspex) if not n.startswith("_")}
    assert {n for n in public if n[0].isupper()} <= set(pytest_dspex.__all__)


def test_importing_the_plugin_does_not_import_the_core():
    code = "import sys, pytest_dspex.plugin; print(sorted(m for m in ('httpx', 'pydantic', 'pytest_dspex.evaluation.scoring') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_core_imports_and_runs_without_pytest():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pytest' or name.startswith(('pytest.', '_pytest')):\n"
        "            raise ImportError('pytest is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pytest_dspex as d\n"
        "from pytest_dspex import cli, reports; from pytest_dspex.golden import file as golden, production; from pytest_dspex.testing import fake_server\n"
        "from pytest_dspex.optimize import compile; from pytest_dspex.evaluation import scoring as evaluation, gates, records; from pytest_dspex.reports import rows\n"
        "from pytest_dspex.optimize import BootstrapFewShot\n"
        "p = d.Predict('question -> answer')\n"
        "assert 'pytest' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_shared_record_and_gate_modules_export_what_the_others_build_on():
    from pytest_dspex.evaluation import gates, records
    from pytest_dspex.evaluation import scoring as evaluation
    from pytest_dspex.optimize import compile
    from pytest_dspex.reports import rows

    for module in (compile, evaluation, gates, records, rows):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    assert {"lm_unavailable", "lm_timeout", "lm_http", "rate_limited", "lm_response", "budget", "cache_miss", "timeout"} == records.INFRA_ERROR_KINDS
    assert pytest_dspex.ExampleRecord is records.ExampleRecord
