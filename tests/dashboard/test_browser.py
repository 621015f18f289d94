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


# --- A new user's journey, in one tab (one Streamlit session), by the sidebar links ------

JOURNEY_TIMEOUT_S = 30.0  # per step
JOURNEY_SHOTS = ("run", "explore", "compare")
JOURNEY_VIEWPORT_HEIGHT = 1600


class Tab:
    """One browser tab driven by Runtime.evaluate / Input events."""

    def __init__(self, browser: DevTools, url: str) -> None:
        self.browser = browser
        self.target = browser.call("Target.createTarget", url=url)["targetId"]
        self.session = browser.call("Target.attachToTarget", targetId=self.target,
                                    flatten=True)["sessionId"]
        # Taller than the page tests' window, so a screenshot shows a page's data too.
        browser.call("Emulation.setDeviceMetricsOverride", self.session, width=1400,
                     height=JOURNEY_VIEWPORT_HEIGHT, deviceScaleFactor=1, mobile=False)
        self.log: list[str] = []

    def eval(self, expression: str) -> Any:
        reply = self.browser.call("Runtime.evaluate", self.session, expression=expression,
                                  returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression[:200]}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def state(self) -> dict[str, Any]:
        value = self.eval(STATE_JS)
        return json.loads(value) if value else {}

    def wait(self, condition_js: str, what: str, settle: int = 2) -> dict[str, Any]:
        """Poll until ``condition_js`` holds and no script runs, ``settle`` polls in a row;
        fail at once on an exception box."""
        deadline, settled = time.monotonic() + JOURNEY_TIMEOUT_S, 0
        state: dict[str, Any] = {}
        while settled < settle:
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}; state {state}")
            time.sleep(0.25)
            state = self.state()
            if state.get("exceptions"):
                self.fail(f"exception while waiting for {what}: {state['exceptions']}")
            ok = bool(self.eval(f"!!({condition_js})"))
            done = ok and not state.get("running") and not state.get("skeleton")
            settled = settled + 1 if done else 0
        self.log.append(what)
        return state

    def click(self, selector: str, text: str) -> None:
        """Click the first ``selector`` element whose visible text is ``text``."""
        clicked = self.eval(f"""(() => {{
            const el = [...document.querySelectorAll({json.dumps(selector)})]
                .find(e => e.innerText.trim() === {json.dumps(text)});
            if (!el) return false;
            el.scrollIntoView({{block: 'center'}});
            el.click();
            return true;
        }})()""")
        if not clicked:
            self.fail(f"no {selector} reading {text!r} to click")

    def navigate(self, title: str) -> None:
        self.click('[data-testid="stSidebarNav"] a', title)
        self.wait(f"[...document.querySelectorAll('h1')].some(h => h.innerText.trim() === "
                  f"{json.dumps(title)})", f"the {title} page")

    def type_into(self, selector: str, text: str) -> None:
        """Replace an input's text as a user would (focus, select all, type, Enter)."""
        found = self.eval(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return false;
            el.scrollIntoView({{block: 'center'}});
            el.focus();
            el.select();
            return true;
        }})()""")
        if not found:
            self.fail(f"no input {selector}")
        self.browser.call("Input.insertText", self.session, text=text)
        for kind in ("keyDown", "keyUp"):
            self.browser.call("Input.dispatchKeyEvent", self.session, type=kind, key="Enter",
                              code="Enter", windowsVirtualKeyCode=13, text="\r")

    def screenshot(self, path: Path) -> None:
        self.eval("document.activeElement && document.activeElement.blur(); "
                  "window.scrollTo(0, 0); [document.scrollingElement, "
                  "...document.querySelectorAll('section, div')]"
                  ".forEach(e => { if (e && e.scrollTop) e.scrollTop = 0; }); true")
        time.sleep(0.5)
        png = base64.b64decode(self.browser.call("Page.captureScreenshot", self.session,
                                                 format="png")["data"])
        assert png.startswith(b"\x89PNG")
        path.write_bytes(png)

    def fail(self, message: str) -> None:
        pytest.fail(f"{message} (after: {', '.join(self.log) or 'nothing'})")

    def close(self) -> None:
        self.browser.call("Target.closeTarget", targetId=self.target)


def _body_has(text: str) -> str:
    return f"document.body.innerText.includes({json.dumps(text)})"


METRICS_SHOWN = ("[...document.querySelectorAll('[data-testid=\"stMetricLabel\"]')]"
                 ".some(e => e.innerText.includes('TTFT p50'))")
PLOTS_DRAWN = ("[...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
               ".filter(c => c.querySelector('.main-svg')).length")


def _run_and_save(tab: Tab, name: str) -> None:
    tab.navigate("Run")
    tab.click("button", "Run")
    tab.wait(f"{METRICS_SHOWN} && !{_body_has('No run yet')} && "
             f"!{_body_has('results are of an earlier scenario')} && "
             f"{_body_has('chrome://tracing')}",  # the page's last line: the script is done
             f"run {name}")
    tab.type_into('input[aria-label="Run name"]', name)
    tab.wait(f"document.querySelector('input[aria-label=\"Run name\"]').value === "
             f"{json.dumps(name)}", f"name {name} typed")
    tab.click("button", "Save run")
    tab.wait(_body_has(f"run '{name}'"), f"run {name} saved")


def test_journey_run_change_run_explore_compare(server, browser, tmp_path):
    """Run the default scenario, change the engine, run again, explore, compare."""
    tab = Tab(browser, server)
    try:
        tab.wait("document.querySelectorAll('[data-testid=\"stSidebarNav\"] a').length >= 6",
                 "the app")
        _run_and_save(tab, "baseline")

        tab.navigate("Scenario")
        tab.click('[role="tab"]', "Engine")
        seqs = 'input[aria-label="max_num_seqs"]'
        tab.wait(f"document.querySelector({json.dumps(seqs)})", "the engine tab")
        tab.type_into(seqs, "4")
        tab.wait(f"document.querySelector({json.dumps(seqs)}).value === '4' && "
                 f"!{_body_has('invalid value')}", "max_num_seqs = 4")

        _run_and_save(tab, "variant")
        tab.screenshot(tmp_path / "run.png")

        tab.navigate("Explore")
        tab.wait(f"{PLOTS_DRAWN} >= 8", "the Explore charts")  # gantt, timeline, 3 x 2
        tab.screenshot(tmp_path / "explore.png")

        tab.navigate("Compare")
        state = tab.wait(f"document.querySelector('[data-testid=\"stDataFrame\"]') && "
                         f"{PLOTS_DRAWN} >= 3 && {_body_has('Summary against baseline')}",
                         "the comparison")
        tab.screenshot(tmp_path / "compare.png")
        body = tab.eval("document.body.innerText")
        assert "baseline" in body and "variant" in body, body[:2000]
        assert not state.get("exceptions")
    finally:
        tab.close()
    if os.environ.get("SERVESIM_SCREENSHOTS"):
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for name in JOURNEY_SHOTS:
            shutil.copyfile(tmp_path / f"{name}.png", docs / f"{name}.png")
