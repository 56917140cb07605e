"""The package keeps its layers (docs/ARCHITECTURE.md): no import circle, no import running back up a layer.

Measured from the imports by ``bench/layers.py`` (every import: module level, in functions, under
TYPE_CHECKING); the second test shows the measure catches both faults.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_layers", ROOT / "bench" / "layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_import_circle_and_no_import_up_a_layer():
    m = _layers().measure(ROOT)
    assert m["modules"] > 50
    assert not m["unplaced"], f"subpackages in no layer of docs/ARCHITECTURE.md: {m['unplaced']}"
    assert m["module_circles"] == []
    assert m["layer_circles"] == []
    assert m["up"] == [], "imports running back up a layer: " + "; ".join(f"{a} -> {b}" for a, b in m["up"])


def test_the_measure_finds_a_circle_and_an_import_up_a_layer(tmp_path):
    pkg = tmp_path / "pytest_dspex"
    for folder in ("programs", "lm"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "programs" / "a.py").write_text("from . import b\nfrom ..errors import *\n")
    (pkg / "programs" / "b.py").write_text("def f():\n    from .a import x\n")  # a circle, inside a function
    (pkg / "lm" / "client.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..programs.a import y\n")
    m = _layers().measure(tmp_path)
    assert m["module_circles"] == [["pytest_dspex.programs.a", "pytest_dspex.programs.b"]]
    assert m["up"] == [("pytest_dspex.lm.client", "pytest_dspex.programs.a")]
    assert m["layer_circles"] == []
