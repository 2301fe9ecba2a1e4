"""Frame sources and the capture thread.

A source is a video file, a camera index ("0"), an rtsp:// or http(s):// stream, or a
folder of images. Capture runs in its own thread and hands over only the newest frame
through a one-slot buffer: when processing falls behind, older frames are dropped and
counted, so memory never grows and the pipeline always works on "now". A recorded
file read without ``realtime`` is the exception: it is read losslessly (the reader
waits for the pipeline), which makes test and benchmark runs reproducible.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")
# A live stream that stops delivering is reopened, waiting this long between tries.
REOPEN_DELAY_S = (1.0, 30.0)


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
        self.spec = str(spec)
        self.fps: float | None = None
        self._capture: cv2.VideoCapture | None = None
        self._images: list[Path] = []
        self._position = 0
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
        self._open()

    def _open(self) -> None:
        target = int(self.spec) if self.kind == "camera" else self.spec
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            capture.release()
            what = {"file": "not a readable video", "camera": "no such camera", "stream": "stream unreachable"}
            raise SourceError(f"source {self.spec}: {what[self.kind]}")
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self._capture = capture

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end (or when a live source stops delivering)."""
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
        ok, image = self._capture.read()
        return image if ok and image is not None and image.size else None

    def reopen(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class Capture(threading.Thread):
    """Reads one source into a one-slot "newest frame wins" buffer."""

    def __init__(
        self, camera_id: str, source: FrameSource, realtime: bool = False, max_frames: int | None = None
    ) -> None:
        super().__init__(name=f"capture-{camera_id}", daemon=True)
        self.camera_id = camera_id
        self.source = source
        # Live sources always drop when behind; files only when asked to keep real time.
        self.lossless = not source.live and not realtime
        self.realtime = realtime and not source.live
        self.max_frames = max_frames
        self.frames_read = 0
        self.dropped = 0
        self.error: str | None = None
        self.finished = threading.Event()
        self._stop_event = threading.Event()
        self._slot: Frame | None = None
        self._cond = threading.Condition()

    def stop(self) -> None:
        self._stop_event.set()
        with self._cond:
            self._cond.notify_all()

    def take(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout``; None if there is none."""
        with self._cond:
            if self._slot is None:
                self._cond.wait(timeout)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    @property
    def exhausted(self) -> bool:
        """The source ended and its last frame was taken."""
        return self.finished.is_set() and self._slot is None

    def run(self) -> None:
        fps = self.source.fps or 15.0
        started = time.monotonic()
        try:
            while not self._stop_event.is_set():
                if self.max_frames is not None and self.frames_read >= self.max_frames:
                    break
                image = self.source.read()
                if image is None:
                    if self.source.live and self._reopen():
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
                        while self._slot is not None and not self._stop_event.is_set():
                            self._cond.wait(0.5)
                    elif self._slot is not None:
                        self.dropped += 1
                    self._slot = frame
                    self._cond.notify_all()
        except Exception as error:  # a decoder crash must end this camera, not the device
            self.error = f"{type(error).__name__}: {error}"
            log.error("capture %s stopped: %s", self.camera_id, self.error)
        finally:
            self.source.close()
            self.finished.set()
            with self._cond:
                self._cond.notify_all()

    def _reopen(self) -> bool:
        """Reopen a live source that stopped delivering, backing off; False when stopping."""
        log.warning("camera %s: no frames from %s; reopening", self.camera_id, self.source.spec)
        retrying = Retrying(
            retry=retry_if_exception_type(SourceError),
            wait=wait_exponential(multiplier=REOPEN_DELAY_S[0], max=REOPEN_DELAY_S[1]),
            stop=stop_when_event_set(self._stop_event),
            sleep=self._stop_event.wait,
            before_sleep=lambda state: log.warning("camera %s: %s", self.camera_id, state.outcome.exception()),
            reraise=True,
        )
        try:
            retrying(self.source.reopen)
        except SourceError:
            return False
        return not self._stop_event.is_set()
