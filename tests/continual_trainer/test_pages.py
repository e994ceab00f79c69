"""What a person sees, checked in a real browser (Debian's Chromium, driven by Playwright): the
HTML report and the server's status page load without console errors, every image and link
resolves, and the page fits a laptop screen (1366 x 768) without scrolling sideways. A
screenshot of each is kept in build/test-artifacts/."""

from __future__ import annotations

import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_table

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parents[2] / "build" / "test-artifacts"
LAPTOP = {"width": 1366, "height": 768}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        yield b
        b.close()


def look(browser: Any, url: str, shot: str) -> dict[str, Any]:
    """Open `url` on a laptop-sized screen: console errors, images that did not load, links that
    do not resolve, whether it scrolls sideways; a screenshot kept as `shot`."""
    page = browser.new_page(viewport=LAPTOP)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url)
    assert response is None or response.ok, url
    broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    links = page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)")
    dead = []
    for link in links:
        if link.startswith(("http://", "https://")) and "127.0.0.1" not in link:
            continue  # outside this machine: not opened by a test
        try:
            with urllib.request.urlopen(link, timeout=10) as r:
                ok = r.status == 200
        except OSError:
            ok = False
        if not ok:
            dead.append(link)
    wide = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot))
    title = page.title()
    page.close()
    return {"errors": errors, "broken": broken, "dead": dead, "wide": wide, "title": title, "images": links}


def test_the_html_report_in_a_browser(browser: Any, tiny_store: str, tmp_path: Path) -> None:
    from continual_trainer.api import open_store

    store = open_store(tiny_store)
    (tmp_path / "s.yaml").write_text("strategies: [keep, finetune_new]\nparams: {epochs: 2}\n")
    store.sweep(str(tmp_path / "s.yaml"))  # before the update: a sweep compares against the new batch
    store.update("finetune_new", epochs=3)
    written = store.write_report(str(tmp_path / "report"))
    seen = look(browser, Path(written["page"]).as_uri(), "report.png")
    assert seen["errors"] == [] and seen["broken"] == [] and seen["dead"] == [], seen
    assert not seen["wide"], "the report scrolls sideways on a 1366-pixel screen"
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_the_servers_status_page_in_a_browser(browser: Any, tiny_store: str) -> None:
    import socket

    import uvicorn

    from continual_trainer.serve import wait_ready
    from continual_trainer.serve.app import app
    from continual_trainer.serve.served import Served

    served = Served(tiny_store, poll=0.2)
    served.start()
    served.predict(make_table(n=5, seed=3).drop(["y"]), served.current)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app(served), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        seen = look(browser, f"{url}/", "status.png")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        served.stop()
    assert seen["title"] == "ctrain serve"
    assert seen["errors"] == [] and seen["broken"] == [] and seen["dead"] == [], seen
    assert not seen["wide"] and len(seen["images"]) == 3  # its links: metrics, version, health
