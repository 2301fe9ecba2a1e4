"""Tracks faces across frames and decides when a track is a confirmed match.

Pure logic on boxes, vectors and gallery results (no OpenCV, no models), so it is
tested on plain numbers and runs the same on any source.

- **Association**: a detection joins the track whose last box overlaps it most (IoU),
  or, for a fast mover, whose centre is within one face width. When the detection is
  embedded and its vector disagrees with the track's last vector (another person
  stepped into the same place), it starts a new track instead.
- **Fusion**: a track's frames are many looks at one face. Each embedded frame joins the
  track's fused embedding (the quality-weighted mean of its frames' embeddings,
  ``fuse_weight``), and the fused embedding is what is searched: set-to-set matching, so
  one bad frame moves the decision less and good frames add up.
- **Votes**: after each embedded frame the fused embedding votes for the best gallery
  person when the score reaches the track threshold and beats the next person by
  ``margin``; otherwise for no one.
- **Confirmation**: among the last ``confirm_window`` votes, one person needs at least
  ``confirm_frames`` votes and no other person may have any (disagreement confirms no one).
- **Cooldown**: a person confirmed on a camera is not confirmed again there within
  ``cooldown_s``; the track stays confirmed but emits nothing.
- **Lean**: a confirmed track is re-embedded only every ``recheck_every`` frames and a
  settled stranger (a full window of no-one votes) every ``stranger_every`` frames.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from edge_app.config import RecognitionConfig

Box = tuple[float, float, float, float]  # x, y, width, height
# Times (``now_t``, ``*_seen_t``, timeouts, cooldowns) are seconds on the frame clock
# (``Frame.clock``): the video's own time for a file, the monotonic clock for a camera.
# Below this cosine two embeddings are treated as different people for association.
SAME_TRACK_MIN_SIMILARITY = 0.25


@dataclass(frozen=True)
class Vote:
    person_id: str | None
    similarity: float  # best gallery similarity of this frame, whoever it was


@dataclass
class Track:
    track_id: int
    box: Box
    first_frame: int
    first_seen_t: float
    first_seen_wall: float
    last_frame: int
    last_seen_t: float
    last_seen_wall: float
    votes: deque = field(default_factory=deque)
    embedding: np.ndarray | None = None  # the last frame's embedding (to notice a different face)
    fused_sum: np.ndarray | None = None  # quality-weighted sum of the frames' embeddings
    fused_frames: int = 0
    frames_since_embed: int = 0
    looks: int = 1  # processed frames in which the track was found
    confirmed_person: str | None = None
    started_mono: float | None = None  # monotonic time of the track's first frame, for latency
    # Best frame per voted person: (similarity, crop). Kept in memory only, and only for
    # faces that matched a gallery person: no stranger's face is retained.
    best_crops: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)

    def fuse(self, embedding: np.ndarray, weight: float) -> np.ndarray:
        """Add one frame's embedding with ``weight``; returns the fused unit embedding."""
        weighted = np.asarray(embedding, np.float32) * np.float32(weight)
        self.fused_sum = weighted if self.fused_sum is None else self.fused_sum + weighted
        self.fused_frames += 1
        norm = float(np.linalg.norm(self.fused_sum))
        return self.fused_sum / norm if norm > 0 else np.asarray(embedding, np.float32)

    def needs_embedding(self, settings: RecognitionConfig) -> bool:
        if self.embedding is None:
            return True
        if self.confirmed_person is not None:
            return self.frames_since_embed >= settings.recheck_every
        settled_stranger = len(self.votes) >= settings.confirm_window and all(v.person_id is None for v in self.votes)
        if settled_stranger:
            return self.frames_since_embed >= settings.stranger_every
        return True

    def deciding(self, settings: RecognitionConfig) -> bool:
        """Still collecting its first window of votes (the track a busy device looks at first).
        Bounded by looks too: a face the quality gate always refuses decides nothing."""
        return (
            self.confirmed_person is None
            and len(self.votes) < settings.confirm_window
            and self.looks <= 2 * settings.confirm_window
        )


@dataclass(frozen=True)
class Confirmation:
    track: Track
    person_id: str
    best_similarity: float
    mean_similarity: float
    frames_used: int
    in_cooldown: bool


def iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = min(ax2, bx2) - max(a[0], b[0])
    h = min(ay2, by2) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _centre_distance(a: Box, b: Box) -> float:
    return float(np.hypot(a[0] + a[2] / 2 - b[0] - b[2] / 2, a[1] + a[3] / 2 - b[1] - b[3] / 2))


def fuse_weight(quality: dict) -> float:
    """How much one frame counts in its track's fused embedding, from the quality gate's measures.

    Sharp, large, frontal faces embed reliably; small, soft or turned ones less so
    (measured on walk-through clips, benchmarks/bench_tracks.py). Every gated frame keeps
    some weight: a poor look is still evidence.
    """
    size = float(quality.get("size_px", 64.0))
    sharpness = float(quality.get("sharpness", 100.0))
    yaw = abs(float(quality.get("yaw", 0.0)))
    weight = min(1.0, max(0.2, (size - 24.0) / 56.0)) * min(1.0, max(0.2, sharpness / 120.0))
    return weight * max(0.3, 1.0 - yaw)


def vote_from_matches(matches: list, threshold: float, margin: float) -> Vote:
    """``matches``: the gallery's best persons for one face (objects with person_id, similarity)."""
    if not matches:
        return Vote(None, 0.0)
    best = matches[0]
    if best.similarity < threshold:
        return Vote(None, best.similarity)
    if len(matches) > 1 and best.similarity - matches[1].similarity < margin:
        return Vote(None, best.similarity)  # two persons about equally close: no one
    return Vote(best.person_id, best.similarity)


class Tracker:
    """Tracks and confirmations for one camera."""

    def __init__(self, camera_id: str) -> None:
        self.camera_id = camera_id
        self.tracks: dict[int, Track] = {}
        self.tracks_started = 0
        self._next_id = 1
        self._last_confirmed: dict[str, float] = {}  # person_id -> monotonic time

    def associate(
        self, boxes: list[Box], frame: int, now_t: float, now_wall: float, settings: RecognitionConfig
    ) -> list[Track]:
        """The track of each box (new tracks for unmatched boxes); stale tracks are dropped."""
        for track_id in [t for t, track in self.tracks.items() if now_t - track.last_seen_t > settings.track_timeout_s]:
            del self.tracks[track_id]
        candidates = []
        for box_index, box in enumerate(boxes):
            for track in self.tracks.values():
                overlap = iou(box, track.box)
                near = _centre_distance(box, track.box) < max(track.box[2], track.box[3])
                if overlap > 0.2 or near:
                    candidates.append((overlap, -_centre_distance(box, track.box), box_index, track.track_id))
        candidates.sort(reverse=True)
        assigned: dict[int, Track] = {}
        used_tracks: set[int] = set()
        for _, _, box_index, track_id in candidates:
            if box_index in assigned or track_id in used_tracks:
                continue
            assigned[box_index] = self.tracks[track_id]
            used_tracks.add(track_id)
        result = []
        for box_index, box in enumerate(boxes):
            track = assigned.get(box_index)
            if track is None:
                track = self._new_track(box, frame, now_t, now_wall, settings)
            else:
                track.box = box
                track.last_frame, track.last_seen_t, track.last_seen_wall = frame, now_t, now_wall
                track.frames_since_embed += 1
                track.looks += 1
            result.append(track)
        return result

    def split_if_other_person(
        self, track: Track, embedding: np.ndarray, frame: int, now_t: float, now_wall: float, settings
    ) -> Track:
        """A new track when ``embedding`` clearly belongs to someone else than ``track``."""
        if track.embedding is not None and float(np.dot(track.embedding, embedding)) < SAME_TRACK_MIN_SIMILARITY:
            del self.tracks[track.track_id]
            return self._new_track(track.box, frame, now_t, now_wall, settings)
        return track

    def add_vote(
        self,
        track: Track,
        embedding: np.ndarray,
        vote: Vote,
        now_t: float,
        settings: RecognitionConfig,
        crop: np.ndarray | None = None,
    ) -> Confirmation | None:
        """Record one embedded frame's vote; returns a Confirmation when the track becomes confirmed."""
        track.embedding = embedding
        track.frames_since_embed = 0
        if track.votes.maxlen != settings.confirm_window:  # the window changed by a live update
            track.votes = deque(track.votes, maxlen=settings.confirm_window)
        track.votes.append(vote)
        if vote.person_id is not None and crop is not None:
            best = track.best_crops.get(vote.person_id)
            if best is None or vote.similarity > best[0]:
                track.best_crops[vote.person_id] = (vote.similarity, crop)
        if track.confirmed_person is not None:
            if vote.person_id is not None and vote.person_id != track.confirmed_person:
                # A recheck now sees someone else: start confirming afresh.
                track.confirmed_person = None
                track.votes = deque([vote], maxlen=settings.confirm_window)
            return None
        person_id, agreeing = self._leader(track.votes)
        if person_id is None or len(agreeing) < settings.confirm_frames:
            return None
        track.confirmed_person = person_id
        last = self._last_confirmed.get(person_id)
        in_cooldown = last is not None and now_t - last < settings.cooldown_s
        if not in_cooldown:
            self._last_confirmed[person_id] = now_t
        return Confirmation(
            track=track,
            person_id=person_id,
            best_similarity=max(agreeing),
            mean_similarity=sum(agreeing) / len(agreeing),
            frames_used=len(agreeing),
            in_cooldown=in_cooldown,
        )

    def deciding(self, settings: RecognitionConfig) -> bool:
        """Some track of this camera is still deciding (``Track.deciding``)."""
        return any(track.deciding(settings) for track in self.tracks.values())

    def in_cooldown(self, person_id: str, now_t: float, settings: RecognitionConfig) -> bool:
        last = self._last_confirmed.get(person_id)
        return last is not None and now_t - last < settings.cooldown_s

    @staticmethod
    def _leader(votes) -> tuple[str | None, list[float]]:
        counts = Counter(v.person_id for v in votes if v.person_id is not None)
        if len(counts) != 1:
            return None, []  # no votes, or votes for two people (a tie or a disagreement): no one
        person_id = next(iter(counts))
        return person_id, [v.similarity for v in votes if v.person_id == person_id]

    def _new_track(self, box: Box, frame: int, now_t: float, now_wall: float, settings) -> Track:
        track = Track(
            track_id=self._next_id,
            box=box,
            first_frame=frame,
            first_seen_t=now_t,
            first_seen_wall=now_wall,
            last_frame=frame,
            last_seen_t=now_t,
            last_seen_wall=now_wall,
            votes=deque(maxlen=settings.confirm_window),
        )
        self._next_id += 1
        self.tracks_started += 1
        self.tracks[track.track_id] = track
        return track
