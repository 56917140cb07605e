"""pytest plugin for ``bench/example_compile.py`` only: the embedded llama.cpp server runs verbose and
writes its log to ``$DSPEX_BENCH_SERVER_LOG``, so the bench can count the prompt tokens it evaluated
(what the prefix cache did not save) and the tokens it generated — the server's work, which does not
depend on how busy the machine is."""

from __future__ import annotations

import importlib
import os
import subprocess
from typing import Any


def _local_lm() -> Any:
    for name in ("pytest_dspex.lm.local.embedded", "pytest_dspex.local_lm"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "ensure_server"):
            return module
    raise ImportError("pytest_dspex's embedded-server module not found")


class _Subprocess:
    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(cmd: list[str], **kwargs: Any) -> Any:
        cmd = ["True" if a == "False" and i and cmd[i - 1] == "--verbose" else a for i, a in enumerate(cmd)]
        if "_llama_server" in " ".join(cmd):
            kwargs["stdout"] = open(os.environ["DSPEX_BENCH_SERVER_LOG"], "ab")  # noqa: SIM115 - the child owns it
            kwargs["stderr"] = subprocess.STDOUT
        return subprocess.Popen(cmd, **kwargs)


_local_lm().subprocess = _Subprocess()


def _record_requests(path: str) -> None:
    """With ``$DSPEX_BENCH_REQUEST_LOG``: every request body the LM client sends, one JSON a line, in the
    order sent (``bench/embedded_replay.py`` replays them against server variants)."""
    import json
    import threading

    from pytest_dspex.lm.client import LM

    send = LM._attempt
    lock = threading.Lock()

    async def _attempt(self: Any, content: bytes, *args: Any, **kwargs: Any) -> Any:
        with lock, open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(json.loads(content)) + "\n")
        return await send(self, content, *args, **kwargs)

    LM._attempt = _attempt  # type: ignore[method-assign]


if os.environ.get("DSPEX_BENCH_REQUEST_LOG"):
    _record_requests(os.environ["DSPEX_BENCH_REQUEST_LOG"])
