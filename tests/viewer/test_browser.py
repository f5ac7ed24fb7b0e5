"""The viewer in a real browser: Debian's chromium, headless, driven by Playwright.

Playwright's Python package drives the system chromium (never ``playwright install``);
recent Chromium no longer falls back to software WebGL by itself, hence the flags.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from handnerf.viewer.app import ViewerApp

from .conftest import WAIT

CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]
VIEWPORT = {"width": 1100, "height": 700}
#: A hang (a page that never renders) fails here, whatever the machine's load.
pytestmark = pytest.mark.timeout(900)
#: Left part of the page: the 3D view, clear of the control panel on the right.
VIEW_WIDTH = 520


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    # Not a skip: the viewer's browser test is part of what must be shown. `make install`
    # installs Debian's chromium when it is missing.
    assert path, "chromium is not installed (make install installs Debian's chromium package)"
    return path


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()  # ends the chromium processes Playwright started


def _view(page: Page) -> np.ndarray:
    """(H, W, 3) uint8 screenshot of the 3D view part of the page."""
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    return np.asarray(shot)[:, :VIEW_WIDTH]


def _wait(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds. No clock here: a page that never gets there is
    ended by the module's pytest-timeout, whose traceback shows ``what`` it waited for."""
    while not condition():
        time.sleep(0.25)


def test_a_browser_sees_the_render_and_a_pose_slider_changes_it(
    viewer: ViewerApp, browser: Browser, tmp_path: Path
) -> None:
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(viewer.url)
    assert viewer.server is not None
    _wait(lambda: len(viewer.server.get_clients()) > 0, "the page to connect")
    # The render is the view's background: black around the hand, where viser draws white.
    _wait(lambda: (_view(page).max(axis=2) < 30).mean() > 0.3, "a rendered image in the page")
    shown = viewer.renderer.wait_still(WAIT)
    _wait(lambda: (_view(page).max(axis=2) < 30).mean() > 0.3, "the still image")
    before = _view(page)

    # Move the "rotation y" slider to its end with the keyboard, as a user would.
    slider_id = page.locator("label", has_text="rotation y").get_attribute("for")
    thumb = page.locator(f'[id="{slider_id}"] [role=slider]')
    thumb.focus()
    page.keyboard.press("End")
    rot_y = next(s for s in viewer.sliders if s.key == "global.y")
    _wait(lambda: viewer.pose.value(rot_y) == pytest.approx(np.pi), "the slider to reach Python")
    frame = viewer.renderer.wait_still(WAIT)
    assert float(frame.pose.global_orient[0, 1]) == pytest.approx(np.pi)
    assert not np.array_equal(frame.image, shown.image), "the turned hand renders differently"

    def changed() -> bool:
        return float(np.abs(_view(page).astype(int) - before.astype(int)).mean()) > 1.0

    _wait(changed, "the image in the page to change")
    page.screenshot(path=str(tmp_path / "viewer.png"))
    page.close()
