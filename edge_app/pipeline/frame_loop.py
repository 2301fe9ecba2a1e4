"""The per-frame work: detect, track, and only for faces that need it gate, embed, search,
vote and confirm; a confirmed match goes into the durable outbox.

Kept lean on purpose (it runs for every frame): faces of a confirmed track are not
aligned or embedded again except for a periodic recheck, settled strangers are
re-embedded only every few frames, and all faces embedded in a frame are searched
in one batch. Model time (detection, embedding) is accounted separately so the
benchmark can compare the pipeline with the bare model calls.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from edge_app.config import RecognitionConfig
from edge_app.gallery.gallery import Gallery
from edge_app.gallery.live import LiveGallery
from edge_app.match_event import match_topic
from edge_app.outbox import Outbox
from edge_app.pipeline.capture import Frame
from edge_app.pipeline.events import build_event, face_crop
from edge_app.pipeline.motion import MotionGate
from edge_app.pipeline.tracking import Confirmation, Tracker, fuse_weight, vote_from_matches
from models.faces import Face
from models.quality import FRAME_POLICY, assess

log = logging.getLogger(__name__)

DETECT = object()  # process(): no detection result given, detect first


@dataclass
class Counters:
    frames: int = 0
    skipped_no_motion: int = 0  # frames not searched for faces: nothing moved (counted in frames)
    faces: int = 0  # detections summed over frames
    embedded: int = 0
    rejected: int = 0  # faces the quality gate refused (when they needed an embedding)
    confirmations: int = 0
    events: int = 0
    suppressed: int = 0  # confirmations inside a person's cooldown on that camera
    detect_s: float = 0.0
    embed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # a track's first frame -> event in the outbox
    frames_to_confirm: list[int] = field(default_factory=list)  # source frames from a track's first to its event


@dataclass(frozen=True)
class EventRecord:
    """What the device did, for the summary and tests (no face data)."""

    event_id: str
    camera_id: str
    person_id: str
    first_frame: int
    confirm_frame: int
    latency_s: float


class FrameProcessor:
    def __init__(
        self,
        models,
        live_gallery: LiveGallery,
        outbox: Outbox,
        device_id: str,
        settings: RecognitionConfig,
        motion: MotionGate | None = None,
    ) -> None:
        self.models = models
        self.live_gallery = live_gallery
        self.outbox = outbox
        self.device_id = device_id
        self.topic = match_topic(device_id)
        self.settings = settings  # replaced whole by a live update; read once per frame
        self.motion = motion  # None: detect on every frame
        self.trackers: dict[str, Tracker] = {}
        self.counters = Counters()
        self.events: list[EventRecord] = []
        self.last_faces = 0

    def threshold(self, settings: RecognitionConfig | None = None, gallery: Gallery | None = None) -> float:
        """The threshold a track's fused votes need: the configured one, or (none configured) the
        gallery's own track threshold, calibrated by its builder for its number of persons on
        stranger tracks (the same false-match budget allows a lower threshold for fewer persons),
        so it follows a live gallery swap."""
        settings = settings or self.settings
        if settings.threshold is not None:
            return settings.threshold
        if gallery is None:  # not ``or``: an empty Gallery is falsy (len 0)
            gallery = self.live_gallery.current()
        return gallery.track_threshold

    def tracker(self, camera_id: str) -> Tracker:
        tracker = self.trackers.get(camera_id)
        if tracker is None:
            tracker = self.trackers[camera_id] = Tracker(camera_id)
        return tracker

    def deciding(self, camera_id: str) -> bool:
        """The camera has a track still collecting its votes (the frame scheduler serves it first)."""
        tracker = self.trackers.get(camera_id)
        return tracker is not None and tracker.deciding(self.settings)

    def active_tracks(self) -> int:
        return sum(len(t.tracks) for t in self.trackers.values())

    def detect(self, frame: Frame) -> list[Face] | None:
        """The faces in the frame, or None when the motion gate skips it (nothing moved)."""
        if self.motion is not None:
            tracker = self.trackers.get(frame.camera_id)
            if not self.motion.worth_detecting(
                frame.camera_id, frame.image, frame.clock, bool(tracker and tracker.tracks)
            ):
                self.counters.skipped_no_motion += 1
                return None
        started = time.perf_counter()
        faces = self.models.detect(frame.image)
        self.counters.detect_s += time.perf_counter() - started
        return faces

    def process(self, frame: Frame, faces: list[Face] | None | object = DETECT) -> list[EventRecord]:
        """Everything after detection (detects first unless ``faces`` are given; None: gated out)."""
        settings = self.settings
        counters = self.counters
        counters.frames += 1
        if faces is DETECT:
            faces = self.detect(frame)
        if faces is None:  # nothing moved: nothing new to look at
            self.last_faces = 0
            return []
        gallery = self.live_gallery.current()  # one gallery for the whole frame, even during a swap
        threshold = self.threshold(settings, gallery)
        counters.faces += len(faces)
        self.last_faces = len(faces)

        tracker = self.tracker(frame.camera_id)
        tracks = tracker.associate(
            [face.box for face in faces], frame.index, frame.clock, frame.captured_wall, settings
        )
        work = []
        for face, track in zip(faces, tracks, strict=True):
            if track.started_mono is None:
                track.started_mono = frame.captured_mono
            if not track.needs_embedding(settings):
                continue
            aligned = self.models.align(frame.image, face)
            assess(face, aligned, FRAME_POLICY)
            if face.rejected:
                counters.rejected += 1
                continue
            work.append((face, track, aligned))
        if not work:
            return []

        started = time.perf_counter()
        vectors = np.stack([self.models.embed_aligned(aligned) for _, _, aligned in work])
        counters.embed_s += time.perf_counter() - started
        counters.embedded += len(work)
        # Each face joins its track's fused embedding; the fused embeddings are searched in one batch.
        tracks, fused = [], []
        for (face, track, _), vector in zip(work, vectors, strict=True):
            track = tracker.split_if_other_person(
                track, vector, frame.index, frame.clock, frame.captured_wall, settings
            )
            if track.started_mono is None:
                track.started_mono = frame.captured_mono
            tracks.append(track)
            fused.append(track.fuse(vector, fuse_weight(face.quality)))
        results = gallery.search(np.stack(fused), k=2)

        records = []
        for (face, _, _), track, vector, matches in zip(work, tracks, vectors, results, strict=True):
            vote = vote_from_matches(matches, threshold, settings.margin)
            crop = None
            if vote.person_id is not None and settings.send_crop:
                crop = face_crop(frame.image, face.box, settings.crop_max_px)
            confirmation = tracker.add_vote(track, vector, vote, frame.clock, settings, crop)
            if confirmation is not None:
                record = self._confirmed(confirmation, frame, gallery, threshold, settings)
                if record is not None:
                    records.append(record)
        return records

    def _confirmed(self, confirmation: Confirmation, frame: Frame, gallery, threshold, settings) -> EventRecord | None:
        counters = self.counters
        counters.confirmations += 1
        if confirmation.in_cooldown:
            counters.suppressed += 1
            return None
        event = build_event(confirmation, gallery, self.device_id, frame.camera_id, threshold, settings.send_crop)
        self.outbox.put(str(event.event_id), self.topic, event.to_json())
        track = confirmation.track
        latency = time.monotonic() - track.started_mono
        counters.events += 1
        counters.latencies_s.append(latency)
        counters.frames_to_confirm.append(frame.index - track.first_frame)
        # Drop the kept crops: the event has its one crop; nothing else of this face is needed.
        track.best_crops.clear()
        record = EventRecord(
            event_id=str(event.event_id),
            camera_id=frame.camera_id,
            person_id=confirmation.person_id,
            first_frame=track.first_frame,
            confirm_frame=frame.index,
            latency_s=latency,
        )
        self.events.append(record)
        log.info("confirmed %s on %s (event %s)", confirmation.person_id, frame.camera_id, record.event_id)
        return record
