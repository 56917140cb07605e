"""A DSPy program's saved state to a gated golden, in one step.

    python -m pytest_dspex import optimized.json --test tests/test_triage.py::test_triage

1. The test is collected by pytest (its conftest, ini and markers as in any run) to find the
   program of its ``@pytest.mark.dspex_program`` and where that program's golden lives.
2. The DSPy save (``program.save("x.json")`` of DSPy 3.4.1: any optimizer, labeled demos with extra
   columns, instructions rewritten by MIPROv2/COPRO) is loaded into that program
   (``golden.from_dspy_state``): a save for another signature is an error naming what differs.
3. The golden is written with those demos and that wording (its selection says "imported"), then the
   test is run once with ``--dspex-rebaseline``: the imported program is measured afresh on the gate's
   own dataset, as a compile measures its chosen program, and that is the golden's baseline — what
   the paired gate compares later runs with, and what a later ``--dspex-compile`` has to beat (the
   two baselines are on the same gate set: like with like). The gate's verdict is printed as in any
   run. A baseline that could not be measured (over the error budget, a gate dataset that is not a
   file) leaves the previous golden (or none) in place: nothing half-imported stays on disk.

An existing golden is replaced only with ``--force`` (the import is the user's deliberate choice, so
keep-better does not apply to it; the golden stays in version control). This module imports pytest
only when it runs (the CLI's other commands do not need it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..errors import DspexError

__all__ = ["DspyImportError", "ImportedGolden", "import_dspy_state"]


class DspyImportError(DspexError):
    """The import could not be done; the message says why and what to do."""


@dataclass
class _Target:
    """What the test's markers say: its program, the golden's path, the metric's name."""

    nodeid: str
    name: str
    program: Any
    golden: Path
    metric: str
    rootdir: Path | None = None  # the collection's: paths in messages are relative to it


@dataclass
class ImportedGolden:
    """What the import did: the golden written, its baseline (score, n) and the gate run's exit code."""

    path: Path
    program: str
    demos: dict[str, int]
    overrides: dict[str, Any]
    baseline: tuple[float, int] | None
    exit_code: int
    draws: int = 1


def _xdist_off(pytest_args: Sequence[str] = ()) -> list[str]:
    """``-n 0`` (one process: the collection and the baseline run happen here), unless xdist is not
    installed or the user's arguments turn it off already (``-p no:xdist``: pytest would refuse ``-n``)."""
    args = list(pytest_args)
    if any(a in ("no:xdist", "-pno:xdist") for a in args):
        return []
    try:
        import xdist  # noqa: F401
    except ImportError:
        return []
    return ["-n", "0"]


def _collect(test: str, pytest_args: Sequence[str]) -> _Target:
    import pytest

    from ..evaluation.metrics import metric_name
    from .markers import metric_spec, program_spec

    found: list[Any] = []
    config_seen: list[Any] = []

    class Grab:
        @pytest.hookimpl(trylast=True)
        def pytest_collection_modifyitems(self, session: Any, config: Any, items: list[Any]) -> None:
            found.extend(items)
            config_seen.append(config)

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        # no warnings summary: pytest's own (e.g. "Module already imported so cannot be rewritten", as this
        # process has imported the plugin) would bury the user's mistake below lines about something else
        args = [test, "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", *_xdist_off(pytest_args), *pytest_args]
        code = pytest.main(args, plugins=[Grab()])
    if code not in (0, pytest.ExitCode.OK) or not found:
        tail = "\n".join(shown.getvalue().strip().splitlines()[-15:])
        raise DspyImportError(f"--test {test}: pytest could not collect it (exit code {int(code)}):\n{tail}")
    marked = [item for item in found if item.get_closest_marker("dspex_program") is not None]
    if not marked:
        raise DspyImportError(f"--test {test}: no collected test has @pytest.mark.dspex_program (the import needs its program)")
    specs = []
    for item in marked:
        try:
            spec = program_spec(item, Path(item.path).parent)
            metric = metric_spec(item)
        except pytest.fail.Exception as exc:
            raise DspyImportError(str(exc.msg)) from None
        assert spec is not None
        specs.append((item, spec, metric))
    names = sorted({spec.name for _, spec, _ in specs})
    if len(names) > 1:
        raise DspyImportError(
            f"--test {test}: the selected tests use {len(names)} programs ({', '.join(names)}); name one test, "
            "e.g. tests/test_x.py::test_y"
        )
    item, spec, metric = specs[0]
    from ..golden.store import GoldenStore

    test_file = Path(item.path)
    return _Target(
        nodeid=item.nodeid.split("[", 1)[0],
        name=spec.name,
        program=spec.program,
        golden=GoldenStore(test_file.parent / "__dspex__").path_for(test_file.stem, spec.name),
        metric=metric_name(metric.metric) if metric is not None else "",
        rootdir=Path(config_seen[0].rootpath) if config_seen else None,
    )


def _read_state(saved: Path) -> dict[str, Any]:
    try:
        data = json.loads(saved.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DspyImportError(f"{saved}: no such file (a program saved by DSPy with program.save({str(saved)!r}))") from None
    except (OSError, ValueError) as exc:
        raise DspyImportError(f"{saved}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not any(k == "demos" or (isinstance(v, dict) and "demos" in v) for k, v in data.items()):
        raise DspyImportError(f"{saved}: not a saved program (DSPy's program.save() layout has 'demos' per predictor)")
    return data


def _dspy_version(state: dict[str, Any]) -> str:
    meta = state.get("metadata")
    versions = meta.get("dependency_versions") if isinstance(meta, dict) else None
    return str(versions.get("dspy", "")) if isinstance(versions, dict) else ""


def import_dspy_state(
    saved: str | os.PathLike[str],
    test: str,
    *,
    force: bool = False,
    pytest_args: Sequence[str] = (),
    out: TextIO | None = None,
) -> ImportedGolden:
    """Import the DSPy save ``saved`` as the golden of ``test``'s program and measure its baseline.

    ``pytest_args`` go to both pytest runs (``--dspex-model``, ``--dspex-base-url``, ``-c``...).
    Raises ``DspyImportError`` (a ``DspexError``) when nothing was imported; see the module docstring.
    """
    import pytest

    from ..golden.dspy_state import from_dspy_state
    from ..golden.record import golden_record
    from ..golden.store import GoldenStore

    saved = Path(saved)
    state = _read_state(saved)
    target = _collect(test, pytest_args)
    try:
        program = from_dspy_state(state, target.program, source=str(saved))
    except DspexError as exc:
        raise DspyImportError(f"{exc} (the program of {target.nodeid} is {target.name!r})") from None
    path = target.golden
    previous = path.read_text(encoding="utf-8") if path.exists() else None
    if previous is not None and not force:
        raise DspyImportError(
            f"{_rel(path, target.rootdir)}: {target.name!r} already has a golden file; --force replaces it with the imported program "
            "(the old one stays in version control)"
        )
    optimizer = {"name": "dspy-import", "source": saved.name, **({"dspy": v} if (v := _dspy_version(state)) else {})}
    selection = {"set": "imported", "dataset": "", "n": 0, "score": 0.0, "chosen": f"DSPy save {saved.name}"}
    record = golden_record(program, name=target.name, metric=target.metric, optimizer=optimizer, selection=selection)
    store = GoldenStore(path.parent.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write(path, record, force=True)

    def restore() -> None:
        if previous is None:
            path.unlink(missing_ok=True)
        else:
            from .._support.atomic import atomic_write_text

            atomic_write_text(path, previous)

    # the baseline: the plugin's re-baseline (the golden's demos kept, measured on the gate's dataset),
    # the same code path as after an accepted prompt edit or a model upgrade
    args = [
        target.nodeid, "-p", "no:cacheprovider", *_xdist_off(pytest_args), f"--dspex-rebaseline={target.name}",
        "-W", "ignore::pytest.PytestAssertRewriteWarning",  # the plugin was imported by the collection run
    ]  # fmt: skip
    try:
        code = int(pytest.main([*args, *pytest_args]))
    except BaseException:
        restore()
        raise
    try:
        baseline = GoldenStore.read(path).model.baseline
    except (OSError, DspexError):
        baseline = None
    if baseline is None:
        restore()
        raise DspyImportError(
            f"{target.nodeid}: no baseline was measured for {target.name!r} (exit code {code}; the reason is in the "
            f"run's output above); {'the previous golden is kept' if previous is not None else 'no golden written'}"
        )
    demos = {p: len(pred.demos) for p, pred in program.named_predictors()}
    overrides = {p: o for p, pred in program.named_predictors() if (o := pred.wording_overrides())}
    result = ImportedGolden(path, target.name, demos, overrides, (baseline.score, baseline.n), code, baseline.draws)
    if out is not None:
        out.write(_summary(result, saved) + "\n")
    return result


def _rel(path: Path, rootdir: Path | None) -> str:
    """``path`` relative to the rootdir (as every path pytest-dspex shows), else as it is."""
    if rootdir is not None:
        with contextlib.suppress(ValueError):
            return path.relative_to(rootdir).as_posix()
    return str(path)


def _summary(result: ImportedGolden, saved: Path) -> str:
    demos = ", ".join(f"{p}: {n}" for p, n in result.demos.items())
    try:
        shown = result.path.relative_to(Path.cwd())
    except ValueError:
        shown = result.path
    lines = [f"pytest-dspex: imported {saved} as {shown} (program {result.program!r}; demos {demos})"]
    for path, o in result.overrides.items():
        if "instructions" in o:
            lines.append(f"  {path}: instructions from the save: {o['instructions']!r}")
        if o.get("fields"):
            lines.append(f"  {path}: field wording from the save: {json.dumps(o['fields'], ensure_ascii=False)}")
    if result.baseline is not None:
        score, n = result.baseline
        draws = f" x {result.draws} draws" if result.draws > 1 else ""
        lines.append(f"  baseline on the gate's dataset: {score:.3f} over {n} examples{draws}; later runs are paired with it")
    if result.exit_code != 0:
        lines.append(f"  the gate run failed (exit code {result.exit_code}): see its output above")
    return "\n".join(lines)
