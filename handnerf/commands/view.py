"""Open a fitted avatar in an interactive viewer in the browser.

Turn the camera around the hand, bend its fingers with sliders (the global rotation and
each finger's three joints, a folder per finger), scrub or play the run's training and
novel-pose sequences, and click a capture camera's frustum to see from it (with its photo
of the frame beside the render). Renders small while anything moves and at full size when
still. Needs the optional extra: pip install 'handnerf[viewer]'.

The server listens on 127.0.0.1 (this machine only) unless --host says otherwise; when
--port is taken, the next free port is used and said on the console.

Example:
  handnerf view --run runs/demo            # then open http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import threading

from handnerf.commands.options import add_rendering, add_run_folder

HELP = "open a fitted avatar in an interactive browser viewer (pose sliders, orbit, sequences)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_folder(parser)
    parser.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--size", type=int, default=256, help="longer side of a still image in px (default 256)"
    )
    parser.add_argument(
        "--preview-size",
        type=int,
        default=128,
        help="longer side of the images drawn while the view moves (default 128)",
    )
    add_rendering(parser, chunk=None, progress=False)


def run(args: argparse.Namespace) -> int:
    from handnerf import interrupts
    from handnerf.errors import ConfigError

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    try:
        from handnerf.viewer.app import ViewerApp
    except ImportError as exc:
        raise ConfigError(
            f"handnerf view needs the 'viewer' extra ({exc}); install it with "
            "pip install 'handnerf[viewer]' (make install does)"
        ) from exc
    from handnerf.runs.loader import load_run
    from handnerf.viewer.sequences import load_sequences
    from handnerf.viewer.session import RenderSession

    run_ = load_run(args.run, device=args.device)
    capture = load_sequences(run_)
    for note in capture.notes:
        print(f"handnerf view: {note}")
    app = ViewerApp(RenderSession(run_, chunk=args.chunk), capture, args.size, args.preview_size)
    forever = threading.Event()
    with app:
        app.start(args.host, args.port)
        interrupts.reached("view.serve", app.port)
        # Serve until SIGINT/SIGTERM: handnerf.interrupts raises Interrupted here (between
        # waits), and the with-block stops the server and the render worker on the way out.
        while not forever.wait(1.0):
            pass
    return 0
