"""Headless Chromium driven over the DevTools protocol, for tests that check what a person sees.

Uses Debian's ``chromium`` (or ``$DSPEX_CHROMIUM``) and aiohttp's websocket client (aiohttp is already
installed with pytest-dspex); nothing is downloaded. ``find_chromium()`` returns None when there is no
browser; the caller decides whether that skips (a developer's machine) or fails (CI).

    with Chromium.launch(tmp_path) as browser:
        page = browser.new_page()
        page.goto(path.as_uri())
        page.evaluate("document.title")
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Chromium", "Page", "find_chromium"]

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
    "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)  # fmt: skip


def find_chromium() -> str | None:
    explicit = os.environ.get("DSPEX_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One tab: navigate, evaluate JavaScript, take screenshots."""

    def __init__(self, browser: Chromium, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._browser = browser
        self._ws = ws
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def _send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = await self._ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection closed ({msg.type})")
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})  # type: ignore[no-any-return]
            if "method" in data:
                self._events.append(data)

    async def _wait_event(self, method: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method:
                    return self._events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} within {timeout} s")
            msg = await self._ws.receive(timeout=left)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection closed ({msg.type})")
            data = json.loads(msg.data)
            if "method" in data:
                self._events.append(data)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self._browser._run(self._send(method, params))

    def goto(self, url: str, timeout: float = 60) -> None:
        """Open ``url`` and wait for its load event (scripts in the page have run by then)."""

        async def go() -> None:
            await self._send("Page.enable", {})
            self._events.clear()
            await self._send("Page.navigate", {"url": url})
            await self._wait_event("Page.loadEventFired", timeout)

        self._browser._run(go())

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited); a thrown exception raises here."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def set_viewport(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def screenshot(self, path: Path, *, full_page: bool = False) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))


class Chromium:
    """A headless Chromium process and a DevTools session to it; ``close()`` ends the process."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []

    @classmethod
    def launch(cls, user_data_dir: Path, executable: str | None = None, timeout: float = 60) -> Chromium:
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("no chromium executable")
        user_data_dir.mkdir(parents=True, exist_ok=True)
        port_file = user_data_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            text = port_file.read_text() if port_file.exists() else ""
            if text.strip():
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"chromium did not start (exit code {proc.returncode})")
            time.sleep(0.05)
        return cls(proc, int(text.split()[0]))

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def new_page(self) -> Page:
        async def open_page() -> Page:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            base = f"http://127.0.0.1:{self.port}"
            async with self._session.put(f"{base}/json/new?about:blank") as resp:
                target = await resp.json()
            ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
            self._sockets.append(ws)
            return Page(self, ws)

        page: Page = self._run(open_page())
        return page

    def close(self) -> None:
        async def shut() -> None:
            for ws in self._sockets:
                await ws.close()
            if self._session is None:
                return
            try:  # ask the browser to quit, so it reaps its own helper processes
                async with self._session.get(f"http://127.0.0.1:{self.port}/json/version") as resp:
                    url = (await resp.json())["webSocketDebuggerUrl"]
                async with self._session.ws_connect(url) as ws:
                    await ws.send_str(json.dumps({"id": 1, "method": "Browser.close"}))
                    await ws.receive(timeout=5)
            except (aiohttp.ClientError, TimeoutError, KeyError):
                pass
            finally:
                await self._session.close()

        try:
            self._run(shut())
        finally:
            self._loop.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
