"""A private network of Linux network namespaces for tests that need several "hosts".

    with Lab(["controller", "w1", "w2", "lm"]) as lab:
        proc = lab.popen("w1", [sys.executable, "-u", server_script, f"{lab.addr('w1')}:8888"])

Each host is a namespace of its own with loopback and one veth interface (``eth0``) plugged into
a bridge that lives in one more namespace (the "switch"); every address is in 10.231.0.0/24 and
exists only inside the namespaces this lab made. Nothing is created in the namespace the tests
run in: veth pairs are made inside the lab's namespaces (``ip -n NS link add ... peer ... netns``).
``close()`` kills every process the lab started (and any left in its namespaces), then deletes
the namespaces, which removes their interfaces. Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from typing import Any

__all__ = ["Lab", "netns_unavailable"]

SUBNET = "10.231.0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"dspex-probe-{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    try:
        ran = _ip("netns", "exec", probe, "true", check=False)
        veth = _ip("-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    if ran.returncode != 0:
        return f"`ip netns exec` is not permitted here: {ran.stderr.strip()}"
    if veth.returncode != 0:
        return f"veth interfaces cannot be created here: {veth.stderr.strip()}"
    return None


class Lab:
    def __init__(self, hosts: Sequence[str]) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.hosts = list(hosts)
        self.switch = f"dspex-{self.tag}-sw"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._addr = {h: f"{SUBNET}.{i + 1}" for i, h in enumerate(self.hosts)}

    def ns(self, host: str) -> str:
        return f"dspex-{self.tag}-{host}"

    def addr(self, host: str) -> str:
        return self._addr[host]

    def start(self) -> Lab:
        try:
            _ip("netns", "add", self.switch)
            self.namespaces.append(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            _ip("-n", self.switch, "link", "set", "lo", "up")
            for i, host in enumerate(self.hosts):
                ns = self.ns(host)
                _ip("netns", "add", ns)
                self.namespaces.append(ns)
                port = f"p{i}"
                _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
                _ip("-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec`` execs it: same pid)."""
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host``'s namespace to completion (killed at ``timeout``)."""
        proc = self.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc, 5.0)
            out, err = proc.communicate()
            err += f"\n[killed after {timeout} s]"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    @staticmethod
    def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
        try:
            Lab._kill(proc, grace)
        finally:
            for pipe in (proc.stdout, proc.stderr, proc.stdin):
                if pipe is not None and not pipe.closed:
                    pipe.close()

    @staticmethod
    def _kill(proc: subprocess.Popen[Any], grace: float) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(grace)

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for ns in self.namespaces:
            # anything still inside a namespace this lab made was started by this lab
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
