"""Reports opened in a real headless browser: Debian's chromium driven by playwright.

No browser is downloaded: playwright launches /usr/bin/chromium (scripts/bootstrap.sh
installs it; TRUSTLOG_CHROMIUM points elsewhere). Without it the tests that need it skip and
say why. Screenshots go to test-output/reports/, next to the junit file scripts/test writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trustlog.settings import PROJECT_ROOT

CHROMIUM = Path(os.environ.get("TRUSTLOG_CHROMIUM", "/usr/bin/chromium"))
SHOTS = PROJECT_ROOT / "test-output" / "reports"


@dataclass
class PageCheck:
    title: str
    text: str  # the page's visible text
    charts: dict[str, tuple[float, float]]  # data-chart -> rendered (width, height) of its svg
    totals: dict[str, tuple[str, str]]  # data-total -> (visible text, data-value)
    screenshot: Path
    errors: list[str] = field(default_factory=list)  # console errors, page errors, requests


# Module scope, not session: while playwright's sync API is open it keeps an event loop
# running in this thread, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = (
            f"chromium not found at {CHROMIUM}: run scripts/bootstrap.sh as root "
            "(apt-get install chromium) or set TRUSTLOG_CHROMIUM"
        )
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def check_page(browser: Any, html_file: Path, shot_name: str) -> PageCheck:
    """Open ``html_file`` offline, collect what a reader sees, save a full-page screenshot."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on(
        "console",
        lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    # a self-contained report loads nothing: any request but the file itself is an error
    page.on(
        "request",
        lambda r: errors.append(f"request: {r.url}") if r.url != html_file.as_uri() else None,
    )
    try:
        page.goto(html_file.as_uri(), wait_until="load")
        charts = {
            str(name): (float(w), float(h))
            for name, w, h in page.eval_on_selector_all(
                "figure.chart",
                "els => els.map(e => { const s = e.querySelector('svg');"
                " const r = s ? s.getBoundingClientRect() : {width: 0, height: 0};"
                " return [e.dataset.chart, r.width, r.height]; })",
            )
        }
        totals = {
            str(k): (str(t), str(v))
            for k, t, v in page.eval_on_selector_all(
                "[data-total]",
                "els => els.map(e => [e.dataset.total, e.innerText, e.dataset.value])",
            )
        }
        shot = SHOTS / f"{shot_name}.png"
        page.screenshot(path=str(shot), full_page=True)
        return PageCheck(page.title(), page.inner_text("body"), charts, totals, shot, errors)
    finally:
        page.close()
