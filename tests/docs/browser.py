"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the standard
library only, no driver package), and a local HTTP server for the built site: what a reader's browser shows.

``Browser.open(url)`` loads a page and returns what the page checks need: the console errors and uncaught
exceptions, failed requests, the page's links, and ``evaluate`` for anything else; ``screenshot`` saves a PNG.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import http.server
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
]


def find_chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM`` when set, else the first of chromium / chromium-browser on PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class SiteServer:
    """The folder ``root`` over HTTP on 127.0.0.1 (a free port), in a thread; a context manager."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> SiteServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class Browser:
    """One headless Chromium process and one page (tab) in it; a context manager."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="qorus-chromium-")
        to_child, self._to_child = os.pipe()  # the browser reads commands on its fd 3
        self._from_child, from_child = os.pipe()  # and writes replies and events on its fd 4

        def fds():  # in the child: the two pipe ends as fds 3 and 4 (via fds >= 10, in case one is 3 or 4)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, close_fds=False)  # fds 3 and 4 are inheritable, the rest of ours are not
        os.close(to_child)
        os.close(from_child)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- the protocol ---------------------------------------------------------------------------------

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_child, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    msg = json.loads(raw)
                    if "id" in msg and msg["id"] in self._replies:
                        self._replies[msg["id"]].put(msg)
                    else:
                        self._events.put(msg)

    def call(self, method: str, session: bool = False, **params) -> dict:
        """Send one command (to the page's session when ``session``) and return its result; a protocol error
        raises RuntimeError naming the method."""
        with self._lock:
            self._next_id += 1
            n = self._next_id
            self._replies[n] = box = queue.Queue()
            msg = {"id": n, "method": method, "params": params}
            if session:
                msg["sessionId"] = self.session
            os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        try:
            reply = box.get(timeout=self.timeout)
        except queue.Empty:
            raise RuntimeError(f"{method}: no reply from Chromium in {self.timeout:g} s") from None
        finally:
            del self._replies[n]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _drain(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    # -- what the tests use ---------------------------------------------------------------------------

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str, settle: float = 1.5, ready: str | None = None) -> dict:
        """Load ``url`` and wait for its load event, then for ``ready`` (a JavaScript expression) to be true,
        then ``settle`` seconds without network activity. Returns ``errors`` (console errors, uncaught
        exceptions, failed requests and HTTP errors, as lines) and ``links`` (the absolute URLs of its
        ``a[href]``)."""
        self._drain()
        self.call("Page.navigate", session=True, url=url)
        events, loaded, deadline = [], False, time.monotonic() + self.timeout
        while not loaded and time.monotonic() < deadline:
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                continue
            events.append(event)
            loaded = event.get("method") == "Page.loadEventFired"
        if not loaded:
            raise RuntimeError(f"{url}: no load event in {self.timeout:g} s")
        while ready and not self.evaluate(f"Boolean({ready})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: {ready} still false after {self.timeout:g} s")
            time.sleep(0.2)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle:
            time.sleep(0.2)
            new = self._drain()
            events += new
            if any(e.get("method", "").startswith("Network.") for e in new):
                quiet_since = time.monotonic()
        return {"errors": _errors(events), "links": self.evaluate(
            "Array.from(document.querySelectorAll('a[href]'), a => a.href)")}

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG at ``path``."""
        size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size[0], "height": min(size[1], 8000), "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        shutil.rmtree(self.profile, ignore_errors=True)


def _errors(events: list[dict]) -> list[str]:
    """The lines of a page's events that are errors."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}".rstrip())
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"request failed: {p.get('errorText')} ({p.get('type')})")
        elif method == "Network.responseReceived" and p["response"]["status"] >= 400:
            out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
    return out
