"""The documentation site as a reader sees it: ``mkdocs build --strict`` passes (a broken reference, a missing
docstring or a page left out of the nav fails it), and headless Chromium opens the home page, the API page of
``Trainer``, a tutorial and the concepts page (its diagram drawn) with no console error, no failed request, no
broken internal link and a non-empty API section. The screenshots stay in build/site/_screenshots/.

Needs the ``docs`` extra (mkdocs, mkdocs-material, mkdocstrings-python) and Debian's chromium; each part is
skipped, saying why, without them."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.docs.browser import Browser, SiteServer, find_chromium

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "build" / "site"
SHOTS = SITE / "_screenshots"

# page, what must be true before the checks (a JavaScript expression), and the checks' name for it
PAGES = [
    ("", None, "home"),
    ("api/train/", None, "api-train"),
    ("tutorials/first-training-run/", None, "tutorial-first-training-run"),
    ("concepts/", "document.querySelector('div.mermaid') && "
                  "document.querySelector('div.mermaid').getBoundingClientRect().height > 100", "concepts"),
]

# What a mkdocstrings section shows: its heading, then the text and members inside its .doc-object
API_SECTION = """(id => {
    const h = document.getElementById(id);
    if (!h) return null;
    const c = h.closest('.doc-object').querySelector('.doc-contents');
    return {text: c ? c.innerText.trim().length : 0,
            members: c ? c.querySelectorAll('[id^="' + id + '."]').length : 0};
})"""


def broken_links(links: list[str], base_url: str, site: Path) -> list[str]:
    """The links under ``base_url`` whose file is not in ``site`` (a folder: its index.html) or whose
    ``#fragment`` is not an id of that file."""
    out, pages = [], {}
    for link in links:
        if not link.startswith(base_url):
            continue  # another site: not checked (the network is not used)
        url = urlparse(link)
        path = site / unquote(url.path).lstrip("/")
        if url.path.endswith("/") or path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            out.append(f"{link}: no such file")
            continue
        if url.fragment and path.suffix == ".html":
            ids = pages.get(path)
            if ids is None:
                ids = pages[path] = {html.unescape(i) for i in re.findall(r'\bid="([^"]*)"', path.read_text())}
            if unquote(url.fragment) not in ids:
                out.append(f"{link}: no id {url.fragment!r} in {path.relative_to(site)}")
    return out


@pytest.fixture(scope="module")
def built_site():
    """build/site from ``mkdocs build --strict`` (skipped without the docs extra)."""
    for module in ("mkdocs", "mkdocstrings_handlers.python", "material"):
        pytest.importorskip(module, reason='the docs extra: pip install -e ".[docs]"')
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(SITE)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert done.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings or [done.stderr[-3000:]])
    return SITE


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium (Debian: apt-get install -y chromium)")
    with Browser(binary) as b:
        yield b


def test_strict_build(built_site):
    assert (built_site / "index.html").is_file()
    assert (built_site / "api" / "train" / "index.html").is_file()


@pytest.mark.parametrize(("path", "ready", "name"), PAGES, ids=[p[2] for p in PAGES])
def test_page_in_chromium(built_site, browser, path, ready, name):
    with SiteServer(built_site) as server:
        page = browser.open(server.url + path, ready=ready)
        shot = browser.screenshot(SHOTS / f"{name}.png")
        assert page["errors"] == []
        assert broken_links(page["links"], server.url, built_site) == []
        assert len(page["links"]) > 20  # the navigation at least: the page is not empty
        assert shot.stat().st_size > 10_000
        if name == "api-train":
            section = browser.evaluate(f"{API_SECTION}('qorus_jit.train.trainer.Trainer')")
            assert section is not None, "no section qorus_jit.train.trainer.Trainer"
            assert section["text"] > 500 and section["members"] >= 3, section  # its text, fit, evaluate, ...
            assert browser.evaluate("document.querySelectorAll('.doc-heading').length") > 50


def test_the_page_checks_catch_errors(tmp_path, browser):
    """A console error, a missing script, a broken link and an empty API section are all caught."""
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "index.html").write_text('<p id="here">x</p>')
    (tmp_path / "index.html").write_text(
        '<script>console.error("boom")</script><script src="missing.js"></script>'
        '<a href="ok/">fine</a><a href="ok/#here">fine</a><a href="ok/#gone">bad anchor</a>'
        '<a href="nowhere/">bad</a><a href="https://example.org/">outside</a>'
        '<div class="doc-object"><h2 id="x.Empty">Empty</h2><div class="doc-contents"></div></div>')
    with SiteServer(tmp_path) as server:
        page = browser.open(server.url, settle=0.5)
        assert any("boom" in e for e in page["errors"]), page["errors"]
        assert any("missing.js" in e for e in page["errors"]), page["errors"]
        assert broken_links(page["links"], server.url, tmp_path) == [
            f"{server.url}ok/#gone: no id 'gone' in ok/index.html", f"{server.url}nowhere/: no such file"]
        assert browser.evaluate(f"{API_SECTION}('x.Empty')") == {"text": 0, "members": 0}
        assert browser.evaluate(f"{API_SECTION}('x.Missing')") is None
