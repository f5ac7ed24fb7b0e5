"""A viewer serving the session's tiny fitted run on a free port (small images: fast)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from handnerf.runs.loader import load_run
from handnerf.viewer.app import ViewerApp
from handnerf.viewer.sequences import load_sequences
from handnerf.viewer.session import RenderSession

#: Longer sides of the test viewer's still and preview images, px.
FULL, PREVIEW = 48, 24
#: Generous: a render is well under a second here, but 2 shared cores can stall.
WAIT = 180.0


@pytest.fixture(scope="module")
def viewer(tiny_run: Path) -> Iterator[ViewerApp]:
    run = load_run(tiny_run, device="cpu")
    app = ViewerApp(RenderSession(run), load_sequences(run), FULL, PREVIEW, say=lambda _: None)
    with app:  # stops the server and its threads even when a test fails
        app.start("127.0.0.1", 0)
        app.renderer.wait_still(WAIT)
        yield app
