"""Screenshot of ``handnerf view`` in headless chromium, for the docs (docs/images/viewer.png).

Starts the viewer on RUN, opens it in Debian's chromium through Playwright's Python package
(never ``playwright install``), bends the index finger with its slider, waits for the still
image and saves the page. Everything it starts is stopped on the way out.

    python tools/viewer_screenshot.py --run demo_out/run --out docs/images/viewer.png
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/images/viewer.png"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bend", type=float, default=0.9, help="index MCP z, radians")
    args = parser.parse_args()

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from handnerf.runs.loader import load_run
    from handnerf.viewer.app import ViewerApp
    from handnerf.viewer.sequences import load_sequences
    from handnerf.viewer.session import RenderSession

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    run = load_run(args.run, device="cpu")
    with ViewerApp(RenderSession(run), load_sequences(run), args.size, args.size // 2) as app:
        app.start("127.0.0.1", 0)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 760})
                page.goto(app.url)
                assert app.server is not None
                while not app.server.get_clients():
                    time.sleep(0.2)
                page.get_by_text("Index", exact=True).click()  # open the index finger's folder
                slider = next(s for s in app.sliders if s.key == "index.MCP.z")
                app.sliders[slider].value = args.bend
                app.renderer.wait_still(600)
                time.sleep(2.0)  # the browser decodes and draws the last image
                # Close the "software WebGL" notice: it is about this headless browser.
                try:
                    page.get_by_text("Software WebGL").wait_for(timeout=20_000)
                    page.locator(".mantine-Notification-closeButton").first.click()
                    time.sleep(1.0)  # its closing animation
                except PlaywrightTimeout:
                    pass  # a browser with hardware WebGL shows no such notice
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
            finally:
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
