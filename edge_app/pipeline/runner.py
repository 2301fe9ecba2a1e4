"""Runs the device: capture threads, the frame loop, the outbox sender and health.

One frame loop serves every camera's buffered frames: cameras deciding about a face first,
the rest round robin (edge_app/pipeline/schedule.py), so an overloaded device still
confirms people one camera after another; on two cores the capture threads decode while
the loop runs the models. ``apply_update``
takes a validated configuration change (thresholds, confirmation, cooldown, cameras)
while running; the Greengrass component feeds its IPC configuration updates into it.
"""

from __future__ import annotations

import logging
import queue
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from edge_app.config import CameraConfig, EdgeConfig, apply_update
from edge_app.gallery.live import LiveGallery
from edge_app.health import RATE_WINDOW_S, HealthReporter
from edge_app.match_event import CameraHealth, HealthReport, StorageHealth
from edge_app.outbox import Outbox, OutboxSender
from edge_app.pipeline.capture import Capture, Frame, FrameSource, Reconnect
from edge_app.pipeline.frame_loop import DETECT, FrameProcessor
from edge_app.pipeline.motion import MotionGate, MotionSettings
from edge_app.pipeline.schedule import FrameScheduler
from edge_app.publishers import Publisher

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = "mpd.edge-summary/1"
_END = object()  # the detection stage has no more frames


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class EdgeRunner:
    def __init__(
        self,
        config: EdgeConfig,
        models,
        live_gallery: LiveGallery,
        publisher: Publisher | None,
        *,
        realtime: bool = False,
        max_frames: int | None = None,
        status: TextIO | None = sys.stderr,
        status_interval_s: float = 0.5,
        overlap: bool = False,
    ) -> None:
        """``overlap``: run detection in its own thread, one frame ahead of the rest. Off by
        default: on this 2-core machine OpenCV already uses both cores and overlapping
        measured 1.02x (1 face) and 1.07x (4 faces) the serial time (docs/device.md)."""
        self.config = config
        self.live_gallery = live_gallery
        self.publisher = publisher
        self.realtime = realtime
        self.max_frames = max_frames
        self.status = status
        self.status_interval_s = status_interval_s if (status is not None and status.isatty()) else 10.0
        self.outbox = Outbox(
            config.outbox.path,
            config.outbox.max_events,
            reserve_bytes=int(config.outbox.reserve_mb * 1024 * 1024),
            max_in_memory=config.outbox.max_in_memory,
        )
        self.processor = FrameProcessor(
            models,
            live_gallery,
            self.outbox,
            config.device_id,
            config.recognition,
            motion=MotionGate(motion_settings(config.motion)),
        )
        self.scheduler = FrameScheduler()
        self.captures: dict[str, Capture] = {}
        self.finished_captures: list[Capture] = []
        self.sender: OutboxSender | None = None
        self.health: HealthReporter | None = None
        self._stop = threading.Event()
        self._stop_detect = threading.Event()
        self.overlap = overlap
        self.detect_error: str | None = None
        self._next_status = 0.0
        self._lock = threading.Lock()  # guards self.captures against a concurrent apply_update
        self._started_mono: float | None = None
        self._elapsed_s = 0.0
        self.interrupted = False

    # --- control (any thread) ---------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the current frame and return (signal handlers call this)."""
        self.interrupted = True
        self._stop.set()

    def apply_update(self, update: Mapping[str, Any]) -> EdgeConfig:
        """Validate and apply a live configuration change; raises ConfigError and keeps the
        current configuration when the update is invalid."""
        new = apply_update(self.config, update)
        self.processor.settings = new.recognition  # one reference: the next frame sees all of it
        self.processor.motion.settings = motion_settings(new.motion)
        if new.cameras != self.config.cameras:
            self._set_cameras(new.cameras)
        self.config = new
        log.info("configuration updated: %s", ", ".join(sorted(update)))
        return new

    # --- running -------------------------------------------------------------------------

    def open_cameras(self, cameras: list[CameraConfig] | None = None) -> None:
        """Check every source now so a bad file or folder fails before anything runs (SourceError).
        Live cameras are opened by their capture threads, which retry until they deliver."""
        self._set_cameras(cameras if cameras is not None else self.config.cameras, start=False)

    def run(self) -> dict:
        if not self.captures:
            self.open_cameras()
        if self.publisher is not None:
            self.sender = OutboxSender(
                self.outbox, self.publisher, self.config.outbox.backoff_initial_s, self.config.outbox.backoff_max_s
            )
            self.sender.start()
            self.health = HealthReporter(
                self.config.device_id,
                self.publisher,
                self.health_report,
                lambda: self.config.health_interval_s,
                file=self.config.health_file,
            )
            self.health.start()
        self._started_mono = time.monotonic()
        self._next_status = self._started_mono + self.status_interval_s
        with self._lock:
            for capture in self.captures.values():
                capture.start()
        try:
            self._loop()
        finally:
            self._elapsed_s = time.monotonic() - self._started_mono
            self._shutdown_captures()
            if self.status is not None:
                self._print_status(final=True)
        return self.summary()

    def _frames(self) -> Iterator[Frame]:
        """Frames of every camera (each camera's oldest buffered first), in the scheduler's order,
        until all sources end or a stop."""
        while not self._stop.is_set():
            with self._lock:
                captures = list(self.captures.values())
            if not captures:
                return
            if len(captures) == 1:
                frame = captures[0].take(timeout=0.05)
                exhausted = captures if frame is None and captures[0].exhausted else []
            else:
                frame, exhausted = self.scheduler.next_frame(captures)
            for capture in exhausted:
                self._retire(capture)
            if frame is not None:
                yield frame
            elif len(captures) > 1:
                time.sleep(0.005)

    def _process(self, frame: Frame, faces=DETECT) -> None:
        self.processor.process(frame, faces)
        deciding = self.processor.deciding(frame.camera_id)
        self.scheduler.processed(frame, deciding, self.processor.settings.track_timeout_s)
        self._maybe_status()

    def _loop(self) -> None:
        if not self.overlap:
            for frame in self._frames():
                self._process(frame)
            return
        # Two stages on two cores: detection of the next frame runs while this frame is
        # tracked, embedded and searched. OpenCV releases the GIL inside both models.
        handoff: queue.Queue = queue.Queue(maxsize=1)
        detector = threading.Thread(target=self._detect_stage, args=(handoff,), name="detect", daemon=True)
        detector.start()
        try:
            while True:
                try:
                    item = handoff.get(timeout=0.1)
                except queue.Empty:
                    if not detector.is_alive() and handoff.empty():
                        break
                    continue
                if item is _END or self._stop.is_set():
                    break
                frame, faces = item
                self._process(frame, faces)
        finally:
            self._stop_detect.set()
            detector.join(timeout=5)
            if self.detect_error:
                raise RuntimeError(f"detection stage failed: {self.detect_error}")

    def _detect_stage(self, handoff: queue.Queue) -> None:
        try:
            for frame in self._frames():
                item = (frame, self.processor.detect(frame))
                while not self._put(handoff, item):
                    if self._stop.is_set() or self._stop_detect.is_set():
                        return
        except Exception as error:  # surfaced by the frame loop, which then stops
            self.detect_error = f"{type(error).__name__}: {error}"
            log.exception("detection stage failed")
        finally:
            while not self._put(handoff, _END) and not self._stop_detect.is_set():
                pass

    @staticmethod
    def _put(handoff: queue.Queue, item) -> bool:
        try:
            handoff.put(item, timeout=0.1)
            return True
        except queue.Full:
            return False

    def _maybe_status(self) -> None:
        if self.status is not None and time.monotonic() >= self._next_status:
            self._print_status()
            self._next_status = time.monotonic() + self.status_interval_s

    def drain_outbox(self, timeout_s: float) -> bool:
        """Give the sender up to ``timeout_s`` to deliver what is queued (events stay queued otherwise)."""
        if self.sender is None:
            return self.outbox.depth() == 0
        return self.sender.drain(timeout_s)

    def close(self) -> None:
        if self.health is not None:
            self.health.stop()
        if self.sender is not None:
            self.sender.stop()
        if self.publisher is not None:
            self.publisher.close()
        self.outbox.close()

    # --- reporting -----------------------------------------------------------------------

    def fps(self) -> float:
        elapsed = self._elapsed_s or (time.monotonic() - self._started_mono if self._started_mono else 0.0)
        return self.processor.counters.frames / elapsed if elapsed > 0 else 0.0

    def camera_health(self) -> dict[str, CameraHealth]:
        """Each running camera: state since when, current fps and drops over the recent window
        (a camera unplugged a few seconds ago reads 0, not its lifetime average)."""
        with self._lock:
            captures = sorted(self.captures.values(), key=lambda capture: capture.camera_id)
        report = {}
        for capture in captures:
            state, since, error = capture.state()
            report[capture.camera_id] = CameraHealth(
                state=state,
                since=datetime.fromtimestamp(since, UTC),
                fps=round(min(capture.taken.rate(), 1000.0), 2),
                dropped=capture.dropped_recent.count(),
                skipped_no_motion=self.processor.motion.skipped_recently(capture.camera_id),
                error=None if state == "up" else error,
            )
        return report

    def health_report(self) -> HealthReport:
        c = self.processor.counters
        cameras = self.camera_health()
        return HealthReport(
            device_id=self.config.device_id,
            gallery_version=self.live_gallery.version,
            fps=round(sum(camera.fps for camera in cameras.values()), 2),
            fps_window_s=RATE_WINDOW_S,
            outbox_depth=self.outbox.depth(),
            cameras=sorted(cameras),
            camera_health=cameras,
            storage=StorageHealth(**vars(self.outbox.storage())),
            interval_s=float(self.config.health_interval_s),
            detail={"frames": c.frames, "events": c.events, "dropped": self._all_captures_sum("dropped")},
        )

    def summary(self) -> dict:
        c = self.processor.counters
        read = self._all_captures_sum("frames_read")
        fps_by_camera = {cap.camera_id: cap.source.fps for cap in self._all_captures()}
        to_confirm_s = []
        for record in self.processor.events:
            fps = fps_by_camera.get(record.camera_id)
            if fps:
                to_confirm_s.append((record.confirm_frame - record.first_frame) / fps)
        model_s = c.detect_s + c.embed_s
        return {
            "schema": SUMMARY_SCHEMA,
            "interrupted": self.interrupted,
            "frames_read": read,
            "frames_processed": c.frames,
            "frames_dropped": self._all_captures_sum("dropped"),
            "frames_skipped_no_motion": c.skipped_no_motion,
            "elapsed_s": round(self._elapsed_s, 3),
            "fps": round(self.fps(), 2),
            "faces": c.faces,
            "faces_embedded": c.embedded,
            "faces_rejected_by_gate": c.rejected,
            "tracks": sum(t.tracks_started for t in self.processor.trackers.values()),
            "confirmations": c.confirmations,
            "suppressed_by_cooldown": c.suppressed,
            "events": c.events,
            "event_ids": [r.event_id for r in self.processor.events],
            "persons": sorted({r.person_id for r in self.processor.events}),
            # Per event, where in its camera's stream it was confirmed (for benchmarks; no face data).
            "confirmed_at": [
                {
                    "camera_id": r.camera_id,
                    "person_id": r.person_id,
                    "first_frame": r.first_frame,
                    "confirm_frame": r.confirm_frame,
                    "latency_s": round(r.latency_s, 3),
                }
                for r in self.processor.events
            ],  # fmt: skip
            "latency_s": {
                "median": _round(statistics.median(c.latencies_s)) if c.latencies_s else None,
                "p95": _round(_percentile(c.latencies_s, 0.95)),
                "max": _round(max(c.latencies_s, default=None)),
            },
            "video_s_to_confirm": {
                "median": _round(statistics.median(to_confirm_s)) if to_confirm_s else None,
                "max": _round(max(to_confirm_s, default=None)),
            },
            "model_s": {"detect": round(c.detect_s, 3), "embed": round(c.embed_s, 3), "total": round(model_s, 3)},
            "outbox_depth": self.outbox.depth(),
            "storage": vars(self.outbox.storage()),
            "cameras": {
                cap.camera_id: {
                    "frames_read": cap.frames_read,
                    "dropped": cap.dropped,
                    "state": cap.state()[0],
                    "reconnects": max(0, cap.connects - 1),
                }
                for cap in self._all_captures()
            },
            "gallery_version": self.live_gallery.version,
            "errors": [f"{cap.camera_id}: {cap.error}" for cap in self._all_captures() if cap.error]
            + [f"{cap.camera_id}: skipped {s}" for cap in self._all_captures() for s in cap.source.skipped],
        }

    def _print_status(self, final: bool = False) -> None:
        c = self.processor.counters
        with self._lock:
            captures = list(self.captures.values())
        up = sum(1 for capture in captures if capture.state()[0] == "up")
        line = (
            f"fps {self.fps():5.1f} | cameras up {up}/{len(captures)} | faces {self.processor.last_faces} "
            f"| tracks {self.processor.active_tracks()} "
            f"| confirmed {c.events} | outbox {self.outbox.depth()} | gallery {self.live_gallery.version}"
        )
        if self.status.isatty():
            self.status.write("\r" + line + ("\n" if final else ""))
        else:
            self.status.write(line + "\n")
        self.status.flush()

    # --- cameras -----------------------------------------------------------------------

    def _set_cameras(self, cameras: list[CameraConfig], start: bool = True) -> None:
        wanted = {camera.id: camera for camera in cameras}
        with self._lock:
            current = dict(self.captures)
        opened = {}
        for camera in cameras:  # open new sources first: a bad one changes nothing
            running = current.get(camera.id)
            if running is None or running.source.spec != camera.source:
                opened[camera.id] = Capture(
                    camera.id,
                    FrameSource(camera.source),
                    realtime=self.realtime,
                    max_frames=self.max_frames,
                    reconnect=self._reconnect(),
                    buffer_frames=self.config.capture.buffer_frames,
                )
        with self._lock:
            for camera_id, capture in current.items():
                if camera_id not in wanted or camera_id in opened:
                    capture.stop()
                    del self.captures[camera_id]
                    self.finished_captures.append(capture)
                    self.scheduler.forget(camera_id)
            for camera_id, capture in opened.items():
                self.captures[camera_id] = capture
                if start:
                    capture.start()

    def _reconnect(self) -> Reconnect:
        settings = self.config.capture
        return Reconnect(settings.reconnect_initial_s, settings.reconnect_max_s, settings.down_after_s)

    def _retire(self, capture: Capture) -> None:
        with self._lock:
            if self.captures.get(capture.camera_id) is capture:
                del self.captures[capture.camera_id]
                self.finished_captures.append(capture)
                self.scheduler.forget(capture.camera_id)

    def _shutdown_captures(self) -> None:
        for capture in self._all_captures():
            capture.stop()
        for capture in self._all_captures():
            if capture.is_alive():
                capture.join(timeout=2)

    def _all_captures(self) -> list[Capture]:
        with self._lock:
            return list(self.captures.values()) + list(self.finished_captures)

    def _all_captures_sum(self, attribute: str) -> int:
        return sum(getattr(capture, attribute) for capture in self._all_captures())


def motion_settings(config) -> MotionSettings:
    """The gate's settings from the ``motion`` configuration section."""
    return MotionSettings(**config.model_dump())


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
