"""End to end: the real dashboard server, every page loaded in headless Chromium.

Chromium's one-shot ``--dump-dom`` / ``--screenshot`` return Streamlit's loading skeleton
(the page renders over a websocket after the load event, and ``--virtual-time-budget``
does not wait for websocket traffic), so the test drives Chromium through the DevTools
protocol over ``--remote-debugging-pipe``: stdlib only, no selenium. For each page it
waits until the page's title is rendered and the script has finished, then checks that
no exception box (``data-testid="stException"``) is on the page and saves a screenshot.

Marked ``browser``: it needs a ``chromium`` (or ``chromium-browser`` / ``google-chrome``)
on PATH and fails, not skips, without one. ``SERVESIM_SCREENSHOTS=1`` also copies the
screenshots to ``docs/screenshots/<page>.png``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PAGES = {  # url path (st.navigation: the file name; the default page is "/") -> title
    "": "Scenario", "run": "Run", "explore": "Explore", "compare": "Compare", "plan": "Plan",
    "calibration": "Calibration",
}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PAGE_TIMEOUT_S = 60.0

STATE_JS = """JSON.stringify({
  headings: [...document.querySelectorAll('h1')].map(h => h.innerText.trim()),
  running: !!document.querySelector('[data-testid="stStatusWidget"] img, '
                                     + '[data-testid="stStatusWidgetRunningIcon"]'),
  nav: [...document.querySelectorAll('[data-testid="stSidebarNav"] a')]
        .map(a => a.innerText.trim()),
  skeleton: !!document.querySelector('[data-testid="stAppSkeleton"]'),
  exceptions: [...document.querySelectorAll('[data-testid="stException"]')]
               .map(e => e.innerText.slice(0, 2000)),
})"""


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no headless browser: install chromium (apt-get install chromium) or "
                f"deselect with -m 'not browser'; looked for {', '.join(BROWSERS)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevTools:
    """Chromium over --remote-debugging-pipe: JSON messages ending in NUL on fds 3 / 4."""

    def __init__(self, executable: str, profile_dir: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # the child reads fd 3 and writes fd 4
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--window-size=1400,1000", "--hide-scrollbars", "--remote-debugging-pipe",
             f"--user-data-dir={profile_dir}", "about:blank"],
            # close_fds would close 3 and 4 after preexec_fn; Python's own fds are
            # non-inheritable (PEP 446), so nothing else reaches the child.
            preexec_fn=fds, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def server():
    """``servesim dashboard`` on a free loopback port, until the module's tests end."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from simulator.cli import main; sys.exit(main())",
         "dashboard", "--port", str(port)],
        cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.poll() is not None else ""
                pytest.fail(f"the dashboard did not answer on {url}: {output[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the CLI and the streamlit it started
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        process.stdout.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    devtools = DevTools(_browser(), tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield devtools
    finally:
        devtools.close()


def _load(browser: DevTools, url: str, title: str) -> tuple[dict[str, Any], bytes]:
    """Open ``url`` in a new tab, wait until ``title`` is an h1 and the script is done;
    (page state, PNG screenshot)."""
    target = browser.call("Target.createTarget", url=url)["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        deadline, settled, state = time.monotonic() + PAGE_TIMEOUT_S, 0, {}
        while time.monotonic() < deadline and settled < 3:
            time.sleep(0.5)
            value = browser.call("Runtime.evaluate", session, expression=STATE_JS,
                                 returnByValue=True)["result"].get("value")
            state = json.loads(value) if value else {}
            done = (title in state.get("headings", []) or state.get("exceptions")) and \
                not state.get("running") and not state.get("skeleton")
            settled = settled + 1 if done else 0
        png = base64.b64decode(browser.call("Page.captureScreenshot", session,
                                            format="png")["data"])
        return state, png
    finally:
        browser.call("Target.closeTarget", targetId=target)


@pytest.mark.parametrize("path", list(PAGES), ids=[p or "scenario" for p in PAGES])
def test_page_renders_without_exception(server, browser, path, tmp_path):
    title = PAGES[path]
    state, png = _load(browser, f"{server}/{path}", title)
    name = path or "scenario"
    shot = tmp_path / f"{name}.png"
    shot.write_bytes(png)
    if os.environ.get("SERVESIM_SCREENSHOTS"):
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, docs / f"{name}.png")
    assert not state.get("exceptions"), f"{name}: {state['exceptions']}"
    assert title in state.get("headings", []), (
        f"{name}: no '{title}' heading within {PAGE_TIMEOUT_S:.0f} s; got {state}; "
        f"screenshot {shot}")
    assert state.get("nav") == list(PAGES.values()), (  # app.py's st.navigation ran
        f"{name}: sidebar {state.get('nav')}; screenshot {shot}")
    assert png.startswith(b"\x89PNG")
