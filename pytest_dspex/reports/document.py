"""The run document: the ``--dspex-report`` JSON (team contract), built in one place.

    doc = RunDocument.build(rows, goldens=..., unused_goldens=..., model=..., shard=None, root=rootpath)
    data = doc.to_json()                      # what every output format renders
    RunDocument.from_json(data).to_json() == data

The plugin builds it at session end from the rows its runs judged (``ProgramRun.row``); shard ``combine``
builds the merged one from the shards' documents (``merged``); ``python -m pytest_dspex report`` reads one
back. Every path in it is relative to the rootdir. Keys this version does not know pass through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .checkout import DirtyCheck, git_commit

__all__ = ["RunDocument", "git_commit", "render_json"]


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class RunDocument:
    """One run's report: every program's row, the goldens used or written, and where it ran."""

    programs: list[dict[str, Any]] = field(default_factory=list)
    goldens: dict[str, dict[str, Any]] = field(default_factory=dict)  # by path relative to the rootdir
    unused_goldens: list[str] = field(default_factory=list)
    model: dict[str, Any] | None = None
    shard: dict[str, int] | None = None  # a shard job's {"index": K, "count": N}
    plugin_version: str | None = None
    created: str = field(default_factory=_now)
    rootdir: str = "."
    git_commit: str | None = None
    #: the checkout's tracked files differed from ``git_commit`` (True), did not (False), not known (None)
    git_dirty: bool | None = None
    combined: dict[str, int] | None = None  # a combine's {"shards": N, "reports": M}
    #: why the session ended before every selected test ran (a crashed worker, a collection error,
    #: an interruption, -x), or None: such a run is never ``complete``, whatever its programs say
    stopped: str | None = None
    #: programs whose tests failed before their gate gave a row (a stale golden): {program: [test, ...]};
    #: a run with one passed nothing, whatever the other programs say
    failed_before_verdict: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        rows: Sequence[Mapping[str, Any]],
        *,
        goldens: Mapping[str, Mapping[str, Any]],
        unused_goldens: Sequence[str],
        model: Mapping[str, Any] | None,
        shard: Mapping[str, int] | None,
        root: Path,
        stopped: str | None = None,
        failed_before_verdict: Mapping[str, Sequence[str]] | None = None,
        dirty: DirtyCheck | None = None,
    ) -> RunDocument:
        """This process's run: created now, at the rootdir's git commit (and whether its tracked files had
        changes: ``dirty``'s answer, a check started as the run began, else one made now), by this plugin version."""
        from .._support.version import __version__

        commit = git_commit(root)
        return cls(
            programs=[dict(r) for r in rows],
            goldens={k: dict(v) for k, v in goldens.items()},
            unused_goldens=list(unused_goldens),
            model=dict(model) if model is not None else None,
            shard=dict(shard) if shard is not None else None,
            plugin_version=__version__,
            git_commit=commit,
            git_dirty=(dirty if dirty is not None else DirtyCheck(root)).result() if commit is not None else None,  # none outside a checkout
            stopped=stopped or None,
            failed_before_verdict={k: list(v) for k, v in (failed_before_verdict or {}).items()},
        )

    def merged(self, programs: list[dict[str, Any]], *, goldens: dict[str, dict[str, Any]], unused_goldens: list[str], combined: dict[str, int]) -> RunDocument:
        """The document ``combine`` writes: this (the first shard's) run's metadata, the merged programs."""
        return replace(
            self, programs=programs, goldens=goldens, unused_goldens=unused_goldens, shard=None, combined=combined, created=_now(), stopped=None
        )

    @property
    def passed(self) -> bool:
        """A gate passes only from programs that ran whole; a run that evaluated nothing passed nothing,
        and a session that stopped early (``stopped``) passed nothing either."""
        return not self.stopped and not self.failed_before_verdict and bool(self.programs) and all((r.get("verdict") or {}).get("passed") for r in self.programs)

    @property
    def complete(self) -> bool:
        if self.stopped:
            return False
        return not any((r.get("verdict") or {}).get("kind") == "incomplete" for r in self.programs)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "plugin_version": self.plugin_version,
            "created": self.created,
            "rootdir": self.rootdir,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "model": self.model,
            "passed": self.passed,
            "complete": self.complete,
            "stopped": self.stopped,
            "shard": self.shard,
            "programs": self.programs,
            "goldens": self.goldens,
            "unused_goldens": self.unused_goldens,
        }
        if self.combined is not None:
            out["combined"] = self.combined
        if self.failed_before_verdict:
            out["failed_before_verdict"] = self.failed_before_verdict
        return out | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunDocument:
        """A document read back (its ``programs`` must be a list; missing keys take their defaults)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in names and v is not None}
        values["programs"] = [dict(p) if isinstance(p, Mapping) else p for p in data.get("programs") or []]
        return cls(**values, extra={k: v for k, v in data.items() if k not in names and k not in ("passed", "complete")})


def render_json(document: Mapping[str, Any]) -> str:
    """The document as the ``--dspex-report`` file holds it (sorted keys, UTF-8, two-space indent)."""
    from .._support.atomic import dumps_stable

    return dumps_stable(document)
