"""Frame sources and the capture thread.

A source is a video file, a camera index ("0"), an rtsp:// or http(s):// stream, or a
folder of images. Capture runs in its own thread and hands frames over, oldest first,
through a buffer of a few frames (``buffer_frames``, 3 by default): a short burst of work
(two or three cameras seeing someone at once) is absorbed and caught up on instead of
losing frames, while a device that stays behind drops the oldest frames, counted, so
memory stays bounded and the pipeline is never more than ``buffer_frames`` frames behind
"now". A recorded file read without ``realtime`` is the exception: it is read
losslessly (the reader waits for the pipeline), which makes test and benchmark runs
reproducible.

Live cameras come and go (a slow-booting IP camera, a cut cable, a rebooting switch). A
camera that cannot be opened at start, or stops delivering, is retried in its own thread
with exponential backoff (``reconnect_initial_s`` doubling to ``reconnect_max_s``) while
the other cameras run; its state (``up``, ``reconnecting``, ``down`` after
``down_after_s``) goes into health. Opening and reading a stream have timeouts, so a
silent camera cannot hang its thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

from edge_app.config import BUFFER_FRAMES
from edge_app.health import RecentRate

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")
# RTSP over TCP: interleaved RTP survives NAT, firewalls and packet loss that break UDP
# (a lost UDP packet is a torn frame). One second of stream analysis instead of five
# makes a reconnection quick. An operator may still choose with the variable.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|analyzeduration;1000000")
STREAM_OPEN_TIMEOUT_MS = 5000
STREAM_READ_TIMEOUT_MS = 5000

CameraState = Literal["up", "reconnecting", "down"]


@dataclass(frozen=True)
class Reconnect:
    """How a live camera that is not delivering is retried."""

    initial_s: float = 1.0
    max_s: float = 10.0
    down_after_s: float = 60.0


class SourceError(RuntimeError):
    """A frame source cannot be opened or read."""


@dataclass(frozen=True)
class Frame:
    camera_id: str
    index: int  # position in the source (0-based); gaps mean dropped frames
    image: np.ndarray
    captured_mono: float
    captured_wall: float
    video_time_s: float | None  # index / source fps for recorded files

    @property
    def clock(self) -> float:
        """Seconds for tracking and cooldowns: the video's own time for a recorded file (so a
        file gives the same result however fast it is processed), else the monotonic clock."""
        return self.captured_mono if self.video_time_s is None else self.video_time_s


class FrameSource:
    """Opens SRC and yields BGR frames. ``live`` sources are paced by the world, not by us."""

    def __init__(self, spec: str) -> None:
        """Files and folders are opened (and checked) now; a live source only by ``open()``."""
        self.spec = str(spec)
        self.fps: float | None = None
        self._capture: cv2.VideoCapture | None = None
        self._images: list[Path] = []
        self._position = 0
        self._pushed_back: np.ndarray | None = None
        self.skipped: list[str] = []  # unreadable images in a folder, with the reason
        path = Path(self.spec)
        if self.spec.isdigit():
            self.kind, self.live = "camera", True
        elif self.spec.lower().startswith(STREAM_PREFIXES):
            self.kind, self.live = "stream", True
        elif path.is_dir():
            self.kind, self.live = "folder", False
            self._images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise SourceError(f"source {self.spec}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            return
        elif path.is_file():
            self.kind, self.live = "file", False
        else:
            raise SourceError(f"source {self.spec}: no such file or folder, and not a camera index or stream URL")
        if not self.live:
            self.open()

    @property
    def is_open(self) -> bool:
        return self.kind == "folder" or self._capture is not None

    def open(self) -> None:
        """Open the source; raises SourceError when it cannot be opened."""
        if self.kind == "camera":
            capture = cv2.VideoCapture(int(self.spec))
        elif self.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS]
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_READ_TIMEOUT_MS]
            capture = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)
        else:
            capture = cv2.VideoCapture(self.spec)
        if not capture.isOpened():
            capture.release()
            what = {"file": "not a readable video", "camera": "no such camera", "stream": "stream unreachable"}
            raise SourceError(f"source {self.spec}: {what[self.kind]}")
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self._capture = capture

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end (or when a live source stops delivering)."""
        if self._pushed_back is not None:
            image, self._pushed_back = self._pushed_back, None
            return image
        if self.kind == "folder":
            from models.images import ImageError, load_image

            while self._position < len(self._images):
                path = self._images[self._position]
                self._position += 1
                try:
                    return load_image(path)
                except ImageError as error:
                    self.skipped.append(f"{path.name}: {error}")
                    log.warning("skipping %s: %s", path, error)
            return None
        if self._capture is None:
            return None
        ok, image = self._capture.read()
        return image if ok and image is not None and image.size else None

    def push_back(self, image: np.ndarray) -> None:
        """Make ``image`` the next frame ``read`` returns (a frame read to prove the source works)."""
        self._pushed_back = image

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class Capture(threading.Thread):
    """Reads one source into a buffer of the ``buffer_frames`` newest frames, handed out oldest first."""

    def __init__(
        self,
        camera_id: str,
        source: FrameSource,
        realtime: bool = False,
        max_frames: int | None = None,
        reconnect: Reconnect | None = None,
        buffer_frames: int = BUFFER_FRAMES,
    ) -> None:
        super().__init__(name=f"capture-{camera_id}", daemon=True)
        if buffer_frames < 1:
            raise ValueError(f"buffer_frames must be at least 1, got {buffer_frames}")
        self.camera_id = camera_id
        self.source = source
        # Live sources always drop when behind; files only when asked to keep real time.
        self.lossless = not source.live and not realtime
        self.realtime = realtime and not source.live
        self.max_frames = max_frames
        self.reconnect = reconnect or Reconnect()
        self.frames_read = 0
        self.dropped = 0
        self.connects = 0  # times a live source was opened and delivered (1 + reconnections)
        self.error: str | None = None  # what ended this capture (a crash), for the summary
        self.taken = RecentRate()  # frames handed to the pipeline: the camera's current fps
        self.dropped_recent = RecentRate()
        self.finished = threading.Event()
        self._stop_event = threading.Event()
        self._buffer: deque[Frame] = deque()
        self.buffer_frames = buffer_frames
        self._cond = threading.Condition()
        # Files are up from the start; a live source once it delivers its first frame.
        self._state: CameraState = "up" if not source.live else "reconnecting"
        self._state_since = time.time()
        self._state_error: str | None = None if not source.live else "not opened yet"

    def stop(self) -> None:
        self._stop_event.set()
        with self._cond:
            self._cond.notify_all()

    def take(self, timeout: float) -> Frame | None:
        """The oldest buffered frame, waiting up to ``timeout``; None if there is none."""
        with self._cond:
            if not self._buffer:
                self._cond.wait(timeout)
            frame = self._buffer.popleft() if self._buffer else None
            self._cond.notify_all()
        if frame is not None:
            self.taken.add()
        return frame

    @property
    def exhausted(self) -> bool:
        """The source ended and its last frame was taken."""
        return self.finished.is_set() and not self._buffer

    def state(self, now: float | None = None) -> tuple[CameraState, float, str | None]:
        """(state, since as a UNIX time, why it is not up). ``down``: not up for ``down_after_s``."""
        state, since, error = self._state, self._state_since, self._state_error
        now = time.time() if now is None else now
        if state == "reconnecting" and now - since >= self.reconnect.down_after_s:
            return "down", since + self.reconnect.down_after_s, error
        return state, since, error

    def _set_state(self, state: CameraState, error: str | None = None) -> None:
        if state != self._state:
            self._state, self._state_since = state, time.time()
            log.log(logging.INFO if state == "up" else logging.WARNING,
                    "camera %s: %s%s", self.camera_id, state, f" ({error})" if error else "")  # fmt: skip
        self._state_error = error

    def run(self) -> None:
        fps = self.source.fps or 15.0
        started = time.monotonic()
        try:
            if self.source.live and not self._connect():
                return
            fps = self.source.fps or fps
            while not self._stop_event.is_set():
                if self.max_frames is not None and self.frames_read >= self.max_frames:
                    break
                image = self.source.read()
                if image is None:
                    if self.source.live:
                        self._set_state("reconnecting", "stopped delivering frames")
                        self.source.close()
                        if self._connect():
                            continue
                    break
                index = self.frames_read
                self.frames_read += 1
                if self.realtime:  # pace a file at its own rate
                    delay = started + index / fps - time.monotonic()
                    if delay > 0:
                        self._stop_event.wait(delay)
                frame = Frame(
                    camera_id=self.camera_id,
                    index=index,
                    image=image,
                    captured_mono=time.monotonic(),
                    captured_wall=time.time(),
                    video_time_s=None if self.source.live else index / fps,
                )
                with self._cond:
                    if self.lossless:
                        while self._buffer and not self._stop_event.is_set():
                            self._cond.wait(0.5)
                    elif len(self._buffer) >= self.buffer_frames:
                        self._buffer.popleft()  # the device stayed behind: lose the oldest
                        self.dropped += 1
                        self.dropped_recent.add()
                    self._buffer.append(frame)
                    self._cond.notify_all()
        except Exception as error:  # a decoder crash must end this camera, not the device
            self.error = f"{type(error).__name__}: {error}"
            log.error("capture %s stopped: %s", self.camera_id, self.error)
        finally:
            self.source.close()
            self.finished.set()
            with self._cond:
                self._cond.notify_all()

    def _connect(self) -> bool:
        """Open a live source and wait for its first frame, retrying with backoff until it
        delivers (True) or the capture is stopped (False). The first frame is kept."""

        def attempt() -> None:
            if not self.source.is_open:
                self.source.open()
            first = self.source.read()
            if first is None:
                self.source.close()
                raise SourceError(f"source {self.source.spec}: opened but delivered no frame")
            self._first = first

        def note_failure(state) -> None:
            self._set_state("reconnecting", str(state.outcome.exception())[:300])
            log.debug("camera %s: retry in %.1f s", self.camera_id, state.upcoming_sleep)

        retrying = Retrying(
            retry=retry_if_exception_type(SourceError),
            wait=wait_exponential(multiplier=self.reconnect.initial_s, max=self.reconnect.max_s),
            stop=stop_when_event_set(self._stop_event),
            sleep=self._stop_event.wait,
            before_sleep=note_failure,
            reraise=True,
        )
        self._first = None
        try:
            retrying(attempt)
        except SourceError:
            return False
        if self._stop_event.is_set():
            return False
        self.connects += 1
        self._set_state("up")
        self.source.push_back(self._first)
        return True
