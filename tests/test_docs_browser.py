"""The manual as a reader sees it: the site MkDocs builds, served on loopback and opened in headless
Chromium (Debian package `chromium`) at 1280x800, driven over the DevTools protocol. On every page
of the nav: the table of contents has entries, no code block is wider than its box (but the few
listed in WIDE_BLOCKS, whose lines cannot be wrapped without changing what they show), no inline
code in a table cell breaks across lines, and no table scrolls. Screenshots of three pages are
written to target/docs-browser/ (the test prints the path)."""
import base64
import contextlib
import functools
import http.server
import itertools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest
import yaml
from websockets.sync.client import connect

from test_bundle import require_tool

ROOT = pathlib.Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1280, 800
SCREENSHOTS = ROOT / "target" / "docs-browser"
SCREENSHOT_PAGES = ["index.md", "getting-started.md", "observing-a-split.md"]

# Code blocks allowed to be wider than their box at 1280 px, by page and the start of their first
# line, each with the reason its lines cannot wrap.
WIDE_BLOCKS = {}


def chromium_binary():
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def nav_pages():
    """The manual's pages in nav order (mkdocs.yml)."""
    class Loader(yaml.SafeLoader):
        pass
    # mkdocs.yml may hold !!python/name tags; none matter here.
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from walk(value)
            else:
                yield value
    return list(walk(config["nav"]))


def url_path(page):
    """The URL path MkDocs (use_directory_urls) gives docs/`page`."""
    stem = page.removesuffix(".md")
    if stem == "index":
        return "/"
    return "/" + stem.removesuffix("/index") + "/"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The manual built with MkDocs (strict, as `make docs`) into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "--site-dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def server(site):
    """The built site served over HTTP on loopback; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class Page:
    """One browser tab over the DevTools protocol."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method, **params):
        id_ = next(self.ids)
        self.ws.send(json.dumps({"id": id_, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == id_:
                assert "error" not in message, (method, message["error"])
                return message["result"]

    def wait_for(self, event, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("method") == event:
                return message

    def goto(self, url):
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        # Fonts settle the layout.
        self.evaluate("document.fonts.ready.then(() => true)")

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"]["value"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (no sandbox: it runs as root in containers) with one tab at 1280x800."""
    binary = chromium_binary()
    require_tool(binary, "chromium (Debian package chromium; the manual's layout is not checked "
                         "in a browser)")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile, \
            contextlib.ExitStack() as stack:
        proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
             f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)

        def stop():
            # Chromium's helper processes are in the session it leads: end them all.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stack.callback(stop)
        port_file = pathlib.Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None, f"chromium exited: {proc.stderr.read()[-4000:]}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            targets = json.load(response)
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        ws = stack.enter_context(connect(ws_url, max_size=None, open_timeout=30))
        page = Page(ws)
        page.call("Page.enable")
        # The theme's web fonts come from the internet, which a test machine may not reach: the
        # page is measured in the system's fonts (the fallbacks a reader offline would see).
        page.call("Network.enable")
        page.call("Network.setBlockedURLs", urls=["*://fonts.googleapis.com/*",
                                                  "*://fonts.gstatic.com/*"])
        page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)
        yield page


# What the test measures on a page, in the page.
MEASURE = """(() => {
  const toc = [...document.querySelectorAll(
      '.md-sidebar--secondary .md-nav--secondary a.md-nav__link')];
  const sidebar = document.querySelector('.md-sidebar--secondary');
  const blocks = [...document.querySelectorAll('pre > code')].map(code => ({
    first: code.innerText.split('\\n')[0],
    scroll: code.scrollWidth, client: code.clientWidth}));
  const cells = [...document.querySelectorAll('td code, th code')].map(code => ({
    text: code.innerText, rects: code.getClientRects().length}));
  const tables = [...document.querySelectorAll('.md-typeset table')].map(table => ({
    first: table.innerText.split('\\n')[0], scroll: table.scrollWidth, client: table.clientWidth}));
  return {
    toc: toc.map(a => a.textContent.trim()),
    tocShown: !!sidebar && sidebar.getBoundingClientRect().width > 0
      && getComputedStyle(sidebar).display !== 'none',
    content: document.querySelector('.md-content').getBoundingClientRect().width,
    blocks, cells, tables};
})()"""


@pytest.fixture(scope="module")
def measured(browser, server):
    """{page: what MEASURE found on it}, for every page of the nav, and the screenshots."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    out = {}
    for page in nav_pages():
        browser.goto(server + url_path(page))
        out[page] = browser.evaluate(MEASURE)
        if page in SCREENSHOT_PAGES:
            shot = browser.call("Page.captureScreenshot", format="png")
            (SCREENSHOTS / (page.removesuffix(".md") + ".png")).write_bytes(
                base64.b64decode(shot["data"]))
    print(f"\nscreenshots of {', '.join(SCREENSHOT_PAGES)} at {WIDTH}x{HEIGHT}: {SCREENSHOTS}")
    return out


def test_every_page_has_a_table_of_contents(measured):
    bare = [page for page, m in measured.items() if not (m["toc"] and m["tocShown"])]
    assert not bare, f"pages with no table of contents at {WIDTH} px: {bare}"


def test_no_code_block_is_wider_than_its_box(measured):
    wide, allowed = [], set()
    for page, m in measured.items():
        for block in m["blocks"]:
            if block["scroll"] <= block["client"] + 1:
                continue
            key = next((k for k in WIDE_BLOCKS if k[0] == page and block["first"].startswith(k[1])),
                       None)
            if key:
                allowed.add(key)
            else:
                wide.append(f"{page}: {block['scroll']} px in {block['client']} px: "
                            f"{block['first'][:60]!r}")
    assert not wide, "code blocks that scroll at %d px:\n%s" % (WIDTH, "\n".join(wide))
    assert allowed == set(WIDE_BLOCKS), f"WIDE_BLOCKS entries that now fit: {set(WIDE_BLOCKS) - allowed}"


def test_no_identifier_in_a_table_breaks(measured):
    broken = [f"{page}: {cell['text']!r}" for page, m in measured.items() for cell in m["cells"]
              if cell["rects"] > 1]
    assert not broken, "inline code in table cells broken across lines:\n" + "\n".join(broken)


def test_no_table_is_wider_than_its_box(measured):
    """Identifiers that never wrap must not push a table past the column (it would scroll)."""
    wide = [f"{page}: {table['scroll']} px in {table['client']} px: {table['first'][:60]!r}"
            for page, m in measured.items() for table in m["tables"]
            if table["scroll"] > table["client"] + 1]
    assert not wide, "tables that scroll at %d px:\n%s" % (WIDTH, "\n".join(wide))


def test_screenshots_are_kept(measured):
    for page in SCREENSHOT_PAGES:
        shot = SCREENSHOTS / (page.removesuffix(".md") + ".png")
        assert shot.stat().st_size > 10_000, shot
