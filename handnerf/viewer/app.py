"""``handnerf view``: a viser web page that turns and poses a fitted avatar.

The page shows the render as the 3D view's background (drawn from the browser camera's
viewpoint, so the capture cameras' frustums sit where they belong), with controls:

- the browser's orbit camera (drag to turn, scroll to zoom);
- a sequence scrubber and a play button over the run's training and novel-pose sequences;
- pose sliders: the global rotation and each finger's three joints (a folder per finger,
  a reset button each, and one for all);
- the capture's cameras as frustums: a click snaps the view to that camera and selects
  it; "show ground truth" puts the selected camera's photo of the frame in the panel;
- an FPS readout of previews (drawn while anything moves) and full images (when still).

One view state is shared by every browser tab: the last camera moved is the one drawn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import viser

from handnerf.errors import ConfigError
from handnerf.viewer.cameras import ViewCamera
from handnerf.viewer.poses import FINGER_JOINTS, PoseSlider, PoseState, pose_sliders
from handnerf.viewer.progressive import ProgressiveRenderer, ViewFrame
from handnerf.viewer.sequences import CaptureSequences, Sequence
from handnerf.viewer.session import RenderSession

#: Slider range of every axis-angle component, radians (covers any plausible joint).
POSE_RANGE = np.pi
POSE_STEP = 0.01
#: Frames advanced per second by the play button (a cap: it also waits for each frame).
PLAY_FPS = 8.0
_FRUSTUM_SCALE = 0.04  # metres: a capture camera's frustum is drawn this deep


class ViewerApp:
    """The viewer's server, GUI and render worker; a context manager that stops them."""

    def __init__(
        self,
        session: RenderSession,
        capture: CaptureSequences,
        full_size: int = 256,
        preview_size: int = 128,
        say: Callable[[str], None] = print,
    ) -> None:
        if not capture.sequences:
            raise ConfigError("the viewer needs at least one sequence to pose the avatar")
        if not capture.cameras:
            raise ConfigError("the viewer needs at least one capture camera")
        self.session = session
        self.capture = capture
        self.say = say
        self.sequence: Sequence = capture.sequences[0]
        self.frame_index = 0
        self.pose = PoseState(self.sequence.frame_mano(0))
        self.selected_camera: str = next(iter(capture.cameras))
        self.renderer = ProgressiveRenderer(
            # Previews (smaller than full size: the view is moving) with fewer samples per ray.
            lambda pose, camera, size, cancelled: session.render_view(
                pose, camera, size, cancelled, coarse=size < full_size
            ),
            self._show,
            self.pose.mano(),
            ViewCamera.from_pinhole(capture.cameras[self.selected_camera]),
            full_size,
            preview_size,
            on_error=self._render_failed,
        )
        self.server: viser.ViserServer | None = None
        self._syncing = threading.local()  # set while Python moves sliders to a frame's pose
        self._playing = threading.Event()
        self._stopping = threading.Event()
        self._player: threading.Thread | None = None
        self.sliders: dict[PoseSlider, viser.GuiSliderHandle[float]] = {}
        self.reset_buttons: dict[str | None, viser.GuiButtonHandle] = {}
        self.frustums: dict[str, viser.CameraFrustumHandle] = {}

    # ----------------------------------------------------------------- lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 8080) -> ViewerApp:
        """Serve on ``host:port``; a busy port moves to the next free one, said on the console."""
        self.server = server = viser.ViserServer(host=host, port=port, verbose=False)
        if port != 0 and server.get_port() != port:
            self.say(f"handnerf view: port {port} is busy; serving on port {server.get_port()}")
        # No share button: it would tunnel this local server to a public URL.
        server.gui.configure_theme(control_width="large", show_share_button=False)
        up = np.mean([-c.R[1] for c in self.capture.cameras.values()], axis=0)
        if np.linalg.norm(up) > 1e-6:
            server.scene.set_up_direction(up / np.linalg.norm(up))
        self._build_gui(server)
        self._add_frustums(server)
        self._hide_own_frustum(self.renderer.camera)
        server.on_client_connect(self._on_connect)
        self.renderer.start()
        self._player = threading.Thread(target=self._play_loop, name="handnerf-viewer-play")
        self._player.daemon = True
        self._player.start()
        self.say(f"handnerf view: open {self.url} in a browser (Ctrl+C stops)")
        return self

    @property
    def port(self) -> int:
        assert self.server is not None, "start() the viewer first"
        return self.server.get_port()

    @property
    def url(self) -> str:
        assert self.server is not None, "start() the viewer first"
        return f"http://{self.server.get_host()}:{self.port}"

    def stop(self) -> None:
        self._stopping.set()
        self._playing.clear()
        self.renderer.stop()
        if self._player is not None:
            self._player.join(10.0)
            self._player = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> ViewerApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- GUI

    def _build_gui(self, server: viser.ViserServer) -> None:
        gui = server.gui
        self.status = gui.add_markdown("rendering ...")
        with gui.add_folder("Sequence"):
            self.sequence_dropdown = gui.add_dropdown(
                "sequence",
                tuple(s.label for s in self.capture.sequences),
                initial_value=self.sequence.label,
            )
            self.frame_slider = gui.add_slider(
                "frame", 0, max(1, len(self.sequence.frames) - 1), 1, 0
            )
            self.play_button = gui.add_button("Play", icon=viser.Icon.PLAYER_PLAY)
            self.frame_text = gui.add_markdown(self._frame_text())
        self.sequence_dropdown.on_update(lambda _: self._select_sequence())
        self.frame_slider.on_update(lambda _: self.show_frame(int(self.frame_slider.value)))
        self.play_button.on_click(lambda _: self.toggle_play())

        sliders = pose_sliders()
        with gui.add_folder("Global rotation"):
            for s in (s for s in sliders if s.finger is None):
                self._add_pose_slider(server, s)
            self._add_reset(server, None, "Reset rotation")
        with gui.add_folder("Fingers"):
            for finger in FINGER_JOINTS:
                with gui.add_folder(finger.capitalize(), expand_by_default=False):
                    for s in (s for s in sliders if s.finger == finger):
                        self._add_pose_slider(server, s)
                    self._add_reset(server, finger, f"Reset {finger}")
            self.reset_all_button = gui.add_button("Reset all joints")
            self.reset_all_button.on_click(lambda _: self.reset_pose("all"))

        with gui.add_folder("Cameras"):
            self.camera_dropdown = gui.add_dropdown(
                "snap to", tuple(self.capture.cameras), initial_value=self.selected_camera
            )
            self.ground_truth_checkbox = gui.add_checkbox("show ground truth", False)
            self.ground_truth_image = gui.add_image(
                np.zeros((8, 8, 3), np.uint8), label="ground truth", visible=False
            )
        self.camera_dropdown.on_update(lambda _: self.snap_to(str(self.camera_dropdown.value)))
        self.ground_truth_checkbox.on_update(lambda _: self._update_ground_truth())

    def _add_pose_slider(self, server: viser.ViserServer, slider: PoseSlider) -> None:
        handle = server.gui.add_slider(
            slider.label, -POSE_RANGE, POSE_RANGE, POSE_STEP, self.pose.value(slider)
        )
        handle.on_update(lambda _: self._slider_moved(slider))
        self.sliders[slider] = handle

    def _add_reset(self, server: viser.ViserServer, finger: str | None, label: str) -> None:
        button = server.gui.add_button(label)
        button.on_click(lambda _: self.reset_pose(finger))
        self.reset_buttons[finger] = button

    def _add_frustums(self, server: viser.ViserServer) -> None:
        for name, camera in self.capture.cameras.items():
            view = ViewCamera.from_pinhole(camera)
            handle = server.scene.add_camera_frustum(
                f"/cameras/{name}",
                fov=view.fov_y,
                aspect=view.aspect,
                scale=_FRUSTUM_SCALE,
                thickness=0.002,
                color=(90, 140, 220),
                wxyz=view.wxyz,
                position=view.center,
            )
            handle.on_click(lambda _, name=name: self.snap_to(name))
            self.frustums[name] = handle

    # ----------------------------------------------------------------- actions

    def _slider_moved(self, slider: PoseSlider) -> None:
        if getattr(self._syncing, "on", False):
            return
        self.pose.set(slider, float(self.sliders[slider].value))
        self.renderer.update(pose=self.pose.mano())

    def _sync_sliders(self) -> None:
        """Move every slider to the pose's value without each one re-rendering."""
        self._syncing.on = True
        try:
            for slider, handle in self.sliders.items():
                handle.value = self.pose.value(slider)
        finally:
            self._syncing.on = False

    def reset_pose(self, finger: str | None) -> None:
        """Back to the frame's pose: one finger, the global rotation (None), or ``"all"``."""
        if finger == "all":
            self.pose.reset_all()
        else:
            self.pose.reset(finger)
        self._sync_sliders()
        self.renderer.update(pose=self.pose.mano())

    def _select_sequence(self) -> None:
        label = str(self.sequence_dropdown.value)
        self.sequence = next(s for s in self.capture.sequences if s.label == label)
        self.frame_slider.max = max(1, len(self.sequence.frames) - 1)
        if self.frame_slider.value != 0:
            self.frame_slider.value = 0  # its callback shows frame 0
        else:
            self.show_frame(0)

    def show_frame(self, index: int) -> None:
        """Pose the avatar as the sequence's ``index``-th frame (sliders follow)."""
        index = min(max(0, int(index)), len(self.sequence.frames) - 1)
        self.frame_index = index
        self.pose.set_base(self.sequence.frame_mano(index))
        self._sync_sliders()
        self.frame_text.content = self._frame_text()
        self.renderer.update(pose=self.pose.mano())
        self._update_ground_truth()

    def _frame_text(self) -> str:
        seq = self.sequence
        return f"{seq.role} `{seq.name}`, frame {seq.frames[self.frame_index]}"

    def toggle_play(self) -> None:
        if self._playing.is_set():
            self._playing.clear()
            self.play_button.label, self.play_button.icon = "Play", viser.Icon.PLAYER_PLAY
        else:
            self._playing.set()
            self.play_button.label, self.play_button.icon = "Pause", viser.Icon.PLAYER_PAUSE

    def _play_loop(self) -> None:
        """While playing: next frame once the current one has been drawn (at most PLAY_FPS)."""
        while not self._stopping.is_set():
            if not self._playing.wait(0.2):
                continue
            version = self.renderer.version
            try:
                self.renderer.wait_for(lambda f, v=version: f.version >= v, timeout=30.0)
            except TimeoutError:
                pass  # a render that fails or lags must not stop playback
            if self._stopping.wait(1.0 / PLAY_FPS) or not self._playing.is_set():
                continue
            n = len(self.sequence.frames)
            self.frame_slider.value = (int(self.frame_slider.value) + 1) % n
            if n == 1:
                self.show_frame(0)

    def snap_to(self, camera: str) -> None:
        """View from capture camera ``camera`` (and select it for the ground-truth panel)."""
        if camera not in self.capture.cameras:
            raise ConfigError(
                f"unknown camera {camera!r}; the capture has {list(self.capture.cameras)}"
            )
        if self.camera_dropdown.value != camera:
            self.camera_dropdown.value = camera  # its callback comes back here
            return
        self.selected_camera = camera
        view = ViewCamera.from_pinhole(self.capture.cameras[camera])
        self._hide_own_frustum(view)
        self.renderer.update(camera=view)
        if self.server is not None:
            for client in self.server.get_clients().values():
                self._move_client(client, view)
        self._update_ground_truth()

    def _move_client(self, client: viser.ClientHandle, view: ViewCamera) -> None:
        # Orbit around the hand: the look-at point is the hand's centre seen along the view.
        center = self.session.hand_center(self.pose.mano())
        distance = max(float((center - view.center) @ view.forward), 0.05)
        with client.atomic():
            client.camera.fov = view.fov_y
            client.camera.position = view.center
            client.camera.up_direction = view.up
            client.camera.look_at = view.center + distance * view.forward

    def camera_moved(
        self, wxyz: np.ndarray, position: np.ndarray, fov: float, aspect: float
    ) -> None:
        """A browser's camera moved (viser's camera -> world ``wxyz``, ``position``, vertical
        ``fov``, canvas ``aspect``): draw from there."""
        view = ViewCamera.from_viser(wxyz, position, fov, aspect)
        self._hide_own_frustum(view)
        self.renderer.update(camera=view)

    def _hide_own_frustum(self, view: ViewCamera) -> None:
        """Hide the frustum of a capture camera the view sits in (it would wrap the screen)."""
        for name, handle in self.frustums.items():
            inside = float(np.linalg.norm(self.capture.cameras[name].center - view.center)) < 0.01
            if handle.visible == inside:
                handle.visible = not inside

    def _update_ground_truth(self) -> None:
        photo = None
        if self.ground_truth_checkbox.value:
            photo = self.capture.photo(self.sequence, self.frame_index, self.selected_camera)
        if photo is not None:
            self.ground_truth_image.image = photo
            self.ground_truth_image.label = f"ground truth: camera {self.selected_camera}"
        self.ground_truth_image.visible = photo is not None

    def _on_connect(self, client: viser.ClientHandle) -> None:
        self._move_client(client, self.renderer.camera)

        @client.camera.on_update
        def _(camera: viser.CameraHandle) -> None:
            self.camera_moved(camera.wxyz, camera.position, camera.fov, camera.aspect)

        last = self.renderer.last_frame
        if last is not None:
            client.scene.set_background_image(last.image, format="jpeg", jpeg_quality=90)

    def _render_failed(self, exc: BaseException) -> None:
        self.say(f"handnerf view: rendering failed: {exc}")
        if self.server is not None:
            self.status.content = f"**rendering failed:** {exc}"

    def _show(self, frame: ViewFrame) -> None:
        if self.server is None:
            return
        self.server.scene.set_background_image(frame.image, format="jpeg", jpeg_quality=90)
        height, width = frame.image.shape[:2]
        rates = " · ".join(f"{kind} {fps:.1f} FPS" for kind, fps in self.renderer.rates.items())
        kind = "full" if frame.full else "preview"
        self.status.content = (
            f"**{1.0 / max(frame.seconds, 1e-6):.1f} FPS** ({kind} {width}x{height}, "
            f"{frame.seconds * 1000:.0f} ms)  \n{rates}"
        )
