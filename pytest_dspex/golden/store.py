"""Writing golden files: ``GoldenStore`` (one per ``__dspex__`` folder) and its locks.

Writes are atomic (temp file + rename) under a cross-process file lock, mode 0644. ``write`` never
replaces a corrupted or newer-schema file unless forced, refuses a run over its error budget, and
keeps the better program only when the two are comparable (same signature, same validation set).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._support.atomic import atomic_write_json
from .._support.runtime import raise_if_interrupted
from ..errors import ConfigError, GoldenFileError

if TYPE_CHECKING:  # imported when a golden is read or written: the schema's pydantic models cost ~50 ms
    # of CPU to build, which a process that only asks where goldens live (an xdist worker whose programs
    # have none yet) never pays
    from .file import GoldenFile

__all__ = ["GoldenStore", "WriteResult", "not_replaced", "state_file"]

WriteOutcome = Literal["created", "updated", "unchanged", "kept"]


_VOLATILE = ("created_at", "plugin_version")


_FILE_MODE = 0o644


def not_replaced(exc: GoldenFileError) -> GoldenFileError:
    """A golden that cannot be read (corrupted, newer schema) is never replaced unless forced: say so."""
    return GoldenFileError(
        f"{exc} — not replaced; restore it from version control, or re-run with "
        "pytest --dspex-compile --dspex-force to overwrite it"
    )


def _stable(data: dict[str, Any]) -> dict[str, Any]:
    """What makes two goldens the same: all but the timestamps and the optimizer's candidate table.

    The candidates' race scores are a record of the search, not of the program: on llama.cpp they
    move by an example or two between runs (its numerics depend on the cached prompt prefix) while
    the chosen demos, prompts and validation outcomes stay the same, and a golden rewritten for that
    would be a diff to review for nothing.
    """
    out = {k: v for k, v in data.items() if k not in _VOLATILE}
    optimizer = out.get("optimizer")
    if isinstance(optimizer, dict):
        out["optimizer"] = {k: v for k, v in optimizer.items() if k != "candidates"}
    baseline = out.get("baseline")
    if isinstance(baseline, dict):
        out["baseline"] = {k: v for k, v in baseline.items() if k != "measured_at"}
    return out


def state_file(path: Path, suffix: str, state_dir: Path | None = None) -> Path:
    """The file (``<digest>.lock``, ``<digest>.compiled``) that belongs to the golden at ``path`` in the
    private state folder (``_private``: mode 0700, never a shared folder of the temporary directory)."""
    from .._support.private import default_state_dir, private_dir

    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    folder = private_dir(state_dir / "locks") if state_dir is not None else private_dir(default_state_dir() / "locks")
    return folder / f"{digest}{suffix}"


_locks: dict[str, Any] = {}


class _GoldenLock:
    """A golden's ``FileLock`` whose empty file goes with its last holder (trial5 T5-9: one ``.lock`` a golden
    a project path, never removed, piled up in the user's state folder: every pytester or tmp project).

    The file is removed *while still held* (never a lock another process holds), as the outermost ``with``
    ends. A process that opened the old file and waits on it then locks a file no longer named by the
    path: after each acquisition the lock checks that its path still names the file it holds, and takes
    the new one when not (filelock 4 does the same check itself; 3.x does not: hence ours). Where
    filelock's file descriptor cannot be read (not a Unix lock), nothing is removed.
    """

    def __init__(self, lock: Any, path: str) -> None:
        self._lock = lock
        self.path = path

    def __enter__(self) -> _GoldenLock:
        while True:
            self._lock.acquire()
            if self._lock.lock_counter > 1 or self._names_it() is not False:
                return self
            self._lock.release()  # its holder removed it as it let go: take the file the path names now

    def __exit__(self, *exc: object) -> None:
        if self._lock.lock_counter == 1 and self._names_it():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self._lock.release()

    @property
    def is_locked(self) -> bool:
        return bool(self._lock.is_locked)

    def _names_it(self) -> bool | None:
        """Does the path name the file this lock holds? None: not known (nothing is removed then)."""
        fd = getattr(getattr(self._lock, "_context", None), "lock_file_fd", None)
        if os.name != "posix" or not isinstance(fd, int):
            return None
        try:
            held, named = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


class WriteResult(str):
    """What ``GoldenStore.write`` did — ``"created"``, ``"updated"``, ``"unchanged"`` or ``"kept"``
    (it compares equal to those strings) — and ``reason``, why, in words."""

    reason: str

    def __new__(cls, outcome: WriteOutcome, reason: str = "") -> WriteResult:
        obj = super().__new__(cls, outcome)
        obj.reason = reason
        return obj

    @property
    def outcome(self) -> WriteOutcome:
        return str(self)  # type: ignore[return-value]


class GoldenStore:
    """Reads and writes golden files under ``root`` (usually ``<test dir>/__dspex__``)."""

    def __init__(self, root: str | os.PathLike[str], *, state_dir: Path | None = None) -> None:
        self.root = Path(root)
        #: the private folder its locks live in (``_private``); None: the user's default one
        self.state_dir = state_dir

    def path_for(self, module: str, program: str) -> Path:
        return self.root / module / f"{program}.json"

    def lock(self, path: Path, timeout: float = 3600) -> Any:
        """A cross-process lock for ``path``, in the private state folder (outside the repo, so no stray
        lock files; 0700, so no other user can take or redirect it).

        The same lock object is returned for the same path, so it is re-entrant in a process.
        """
        from filelock import FileLock

        try:
            key = str(state_file(path, ".lock", self.state_dir))
        except (OSError, ConfigError) as exc:
            raise GoldenFileError(f"{path}: no private folder for the golden's lock ({exc})") from None
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = _GoldenLock(FileLock(key, timeout=timeout), key)
        return lock

    @staticmethod
    def read(path: str | os.PathLike[str], **kwargs: Any) -> GoldenFile:
        """The one reader (``file.read_golden``): a missing file is a ``GoldenFileError`` too."""
        from .file import read_golden

        return read_golden(path, **kwargs)

    def write(
        self,
        path: Path,
        record: dict[str, Any],
        *,
        force: bool = False,
        error_rate: float | None = None,
        max_error_rate: float | None = None,
        over_error_budget: bool = False,
        dry_run: bool = False,
        improved: bool | None = None,
    ) -> WriteResult:
        """Write ``record`` atomically (mode 0644), or keep the existing golden and say why.

        ``dry_run``: decide and say what would happen, write nothing (an xdist worker compiles, the
        controller writes: the worker evaluates with the program the controller will keep).

        * A run over its error budget (``over_error_budget``, or ``error_rate > max_error_rate``) is
          never written, forced or not: a golden of errors is worse than none.
        * An existing file that is corrupted or from a newer schema is never replaced unless ``force``.
        * Keep-better (unless ``force``): the existing golden is kept when its score (the baseline's,
          else the validation score) is at least this run's — a tie leaves the file untouched — *and* it
          is comparable: same signature fingerprints, same gate / validation set. A golden for another
          signature or set is replaced (the reason says which).
        * ``improved``: whether the paired comparison of this run's baseline with the golden's says
          "improved" (None: not compared). The program the golden holds (same demos and instructions),
          measured again on the same model, gate set and metric, replaces it only when improved: a
          higher baseline the comparison calls "no change" is a noisy endpoint's redraw (trial10 T10-3).
        """
        from .file import GoldenFile
        from .schema import validate

        new = validate(path, record)
        if over_error_budget or (
            error_rate is not None and max_error_rate is not None and error_rate > max_error_rate
        ):
            detail = []
            if error_rate is not None:
                detail.append(f"{error_rate:.0%} of the validation examples failed with LM errors")
            if max_error_rate is not None:
                detail.append(f"the budget is {max_error_rate:.0%} (--dspex-max-error-rate)")
            why = f" ({', '.join(detail)})" if detail else ""
            raise GoldenFileError(
                f"{path}: golden not written: the compile run was over its error budget{why}; a golden of "
                "errors is worse than none. Fix the LM endpoint and re-run pytest --dspex-compile"
            )
        write = (lambda p, r: None) if dry_run else self._write
        with self.lock(path):
            if not path.exists():
                write(path, record)
                return WriteResult("created", "no golden file yet")
            try:
                old = self.read(path)
            except GoldenFileError as exc:
                if not force:
                    raise not_replaced(exc) from None
                write(path, record)
                return WriteResult("updated", "replaced an unreadable golden file (forced)")
            if force:
                write(path, record)
                return WriteResult("updated", "replaced (forced)")
            if _stable(old.data) == _stable(json.loads(json.dumps(record))):
                return WriteResult("unchanged", "same demos, prompts and scores as the golden file")
            candidate = GoldenFile(path, record, new)
            if _same_program(old.data, record) and _scores(old) == _scores(candidate):
                # a recompile that chose what the golden holds (calibration moved in its 3rd decimal,
                # timestamps): rewriting it would be a diff to review for nothing
                if _train_changed(old.data, record):  # the gate runs keep noting the changed trainset: say why (trial13)
                    return WriteResult("unchanged", _SAME_FROM_NEW_TRAIN)
                return WriteResult("unchanged", "same demos and instructions as the golden file, and the same score")
            reason = _replace_reason(old, candidate)
            if reason is None:
                return WriteResult("kept", _kept_reason(old, candidate))
            if improved is False and reason.startswith(_HIGHER) and _same_program(old.data, record) and _same_measure(old.data, record):
                # the program the golden holds, measured again on the same gate set, model and metric: on a noisy
                # endpoint its baseline draws differ run to run, so a "higher" one is that noise, not a better
                # program — rewriting the file would be churn in review (trial10 T10-3)
                return WriteResult("unchanged", _same_program_reason(old, candidate))
            write(path, record)
            return WriteResult("updated", reason)

    @staticmethod
    def _write(path: Path, record: dict[str, Any]) -> None:
        raise_if_interrupted()  # Ctrl-C during the compile: nothing half-decided reaches the disk
        try:
            atomic_write_json(path, record)
            os.chmod(path, _FILE_MODE)  # mkstemp creates 0600; a golden is a reviewed, shared file
        except OSError as exc:  # a read-only folder, a path under a file: one clear line, not a tempfile traceback
            folder = path.parent
            raise GoldenFileError(
                f"{path}: golden not written: cannot write in {folder} ({exc.strerror or exc}); make the folder "
                "writable and re-run pytest --dspex-compile (the previous golden, if any, is unchanged)"
            ) from None


#: calibration offsets this close are the same program (llama.cpp's numerics move them in the 3rd decimal)
_CALIBRATION_TOLERANCE = 0.01


def _same_program(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """The same program: predictors with the same signature (instructions) and demos, calibration
    offsets within ``_CALIBRATION_TOLERANCE``, the same program class and the same chosen candidate."""
    if old.get("program") != new.get("program") or (old.get("optimizer") or {}).get("chosen") != (new.get("optimizer") or {}).get("chosen"):
        return False
    before, after = old.get("predictors") or {}, new.get("predictors") or {}
    if set(before) != set(after):
        return False
    for name, was in before.items():
        now = after[name]
        if {k: v for k, v in was.items() if k != "calibration"} != {k: v for k, v in now.items() if k != "calibration"}:
            return False
        a, b = was.get("calibration") or {}, now.get("calibration") or {}
        if set(a) != set(b) or any(abs(float(a[k]) - float(b[k])) > _CALIBRATION_TOLERANCE for k in a):
            return False
    return True


def _scores(golden: GoldenFile) -> tuple[float | None, float | None]:
    """The scores keep-better compares: the baseline's and the validation score."""
    return (golden.baseline_score if golden.model.baseline is not None else None), golden.validation_score


def _replace_reason(old: GoldenFile, new: GoldenFile) -> str | None:
    """Why ``new`` replaces ``old``, or None when ``old`` is comparable and better (keep it)."""
    old_fp = {k: v["hash"] for k, v in old.fingerprints().items()}
    new_fp = {k: v["hash"] for k, v in new.fingerprints().items()}
    if old_fp != new_fp:
        return "replaced because the signature changed since the golden was compiled"
    if old.validation_dataset and new.validation_dataset and old.validation_dataset != new.validation_dataset:
        return "replaced because the validation set changed (scores on different sets are not comparable)"
    if old.model.metric and new.model.metric and old.model.metric != new.model.metric:
        return f"replaced because the metric changed ({old.model.metric} -> {new.model.metric})"
    if old.model.baseline is not None and new.model.baseline is not None:
        if old.baseline_dataset != new.baseline_dataset:
            return "replaced because the gate dataset changed (baselines on different sets are not comparable)"
        o, n = old.baseline_score, new.baseline_score
        what = "baseline"
    else:
        o, n = old.validation_score, new.validation_score
        what = "validation score"
    if o is None or n is None:
        return f"replaced because the golden has no {what} to compare with"
    if o >= n:  # a tie keeps the committed file: equal-score churn is a diff to review for nothing (trial2 F2)
        return None
    return f"{_HIGHER}{what} {n:.3f} is higher than the golden's {o:.3f}"


_HIGHER = "replaced because this run's "


def _same_measure(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Both baselines measured alike: the same model settings, metric (name and source), gate set and labels."""
    a, b = old.get("baseline"), new.get("baseline")
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    same = ("dataset", "metric_fingerprint", "labels")
    return (old.get("model") == new.get("model") and old.get("metric") == new.get("metric")
            and old.get("datasets") == new.get("datasets") and all(a.get(k) == b.get(k) for k in same))  # fmt: skip


def _same_program_reason(old: GoldenFile, new: GoldenFile) -> str:
    o, n = old.baseline_score or 0.0, new.baseline_score or 0.0
    return (f"same demos and instructions as the golden file, on the same model and gate set: this run's baseline "
            f"{n:.3f} against the golden's {o:.3f} is no significant change (the endpoint's own noise), so the file is "
            "left untouched; pytest --dspex-rebaseline=NAME records a new baseline, --dspex-force replaces it")  # fmt: skip


_SAME_FROM_NEW_TRAIN = (
    "same demos and instructions as the golden file, chosen again from the changed trainset, and the same score: "
    "the file is left untouched, so its recorded trainset fingerprint is the old one and gate runs still note the "
    "change; --dspex-force records it"
)


def _train_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    a, b = (old.get("datasets") or {}).get("train"), (new.get("datasets") or {}).get("train")
    return bool(a and b and a != b)


def _kept_reason(old: GoldenFile, new: GoldenFile) -> str:
    """Why keep-better kept ``old`` (``_replace_reason`` returned None): the scores compared, in one line."""
    if old.model.baseline is not None and new.model.baseline is not None:
        what, o, n, same = "baseline", old.baseline_score, new.baseline_score, "gate set"
    else:
        what, o, n, same = "validation score", old.validation_score, new.validation_score, "validation set"
    o, n = o or 0.0, n or 0.0
    # a trainset changed since the golden: the kept file's demos are the old trainset's, and the gate runs
    # keep saying so; the user who recompiled on that advice is told why it stays (trial13)
    old_train = (
        "; its demos still come from the trainset it was compiled on, not the changed one (--dspex-force records "
        "this run's choice)" if _train_changed(old.data, new.data) else ""
    )
    if o > n:
        return (f"kept: the golden's {what} {o:.3f} is higher than this run's {n:.3f} on the same signature and "
                f"{same}; use --dspex-force to replace it{old_train}")  # fmt: skip
    return (f"kept: this run's {what} {n:.3f} does not improve on the golden's {o:.3f} (same signature and {same}), "
            f"so the file is left untouched; use --dspex-force to replace it{old_train}")  # fmt: skip
