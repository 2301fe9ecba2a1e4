"""Tracking and confirmation logic on plain boxes and vectors (no models needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from edge_app.config import RecognitionConfig
from edge_app.pipeline.tracking import Tracker, Vote, fuse_weight, iou, vote_from_matches


@dataclass(frozen=True)
class M:  # the shape of edge_app.gallery.gallery.Match
    person_id: str
    similarity: float


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


SETTINGS = RecognitionConfig(threshold=0.5, margin=0.03, confirm_frames=3, confirm_window=5, cooldown_s=60)


def feed(tracker: Tracker, votes: list[Vote], settings=SETTINGS, start_frame=0, start_time=0.0, box=(100, 100, 80, 80)):
    """One face standing still, one embedded vote per frame at 15 fps; returns confirmations."""
    out = []
    vector = unit(0)
    for i, vote in enumerate(votes):
        t = start_time + i / 15
        (track,) = tracker.associate([box], start_frame + i, t, 1000 + t, settings)
        confirmation = tracker.add_vote(track, vector, vote, t, settings)
        if confirmation is not None:
            out.append((i, confirmation))
    return out


def test_vote_needs_threshold_and_a_margin_over_the_next_person():
    assert vote_from_matches([M("a", 0.6), M("b", 0.3)], 0.5, 0.03) == Vote("a", 0.6)
    assert vote_from_matches([M("a", 0.45)], 0.5, 0.03).person_id is None
    assert vote_from_matches([M("a", 0.60), M("b", 0.59)], 0.5, 0.03).person_id is None, "near tie: no one"
    assert vote_from_matches([], 0.5, 0.03) == Vote(None, 0.0)


def test_confirms_after_enough_agreeing_frames_in_the_window():
    tracker = Tracker("cam")
    votes = [Vote("a", 0.7), Vote(None, 0.3), Vote("a", 0.8), Vote("a", 0.6), Vote("a", 0.9)]
    confirmations = feed(tracker, votes)
    assert len(confirmations) == 1
    frame, c = confirmations[0]
    assert frame == 3, "the third agreeing vote confirms"
    assert (c.person_id, c.frames_used, c.best_similarity) == ("a", 3, 0.8)
    assert c.mean_similarity == pytest.approx((0.7 + 0.8 + 0.6) / 3)
    assert not c.in_cooldown


def test_votes_for_two_people_confirm_no_one():
    tracker = Tracker("cam")
    votes = [Vote("a", 0.7), Vote("b", 0.7), Vote("a", 0.7), Vote("b", 0.7), Vote("a", 0.7)]
    assert feed(tracker, votes) == []


def test_too_few_agreeing_frames_inside_the_window_confirm_no_one():
    tracker = Tracker("cam")
    votes = [Vote("a", 0.7), Vote(None, 0.2), Vote(None, 0.2), Vote(None, 0.2), Vote("a", 0.7), Vote(None, 0.2)]
    assert feed(tracker, votes) == []


def test_cooldown_per_person_per_camera():
    settings = SETTINGS
    tracker = Tracker("cam")
    first = feed(tracker, [Vote("a", 0.8)] * 4, start_time=0)
    assert len(first) == 1 and not first[0][1].in_cooldown
    # The person leaves (track times out) and comes back 10 s later: confirmed, but in cooldown.
    again = feed(tracker, [Vote("a", 0.8)] * 4, start_frame=200, start_time=10)
    assert len(again) == 1 and again[0][1].in_cooldown
    # After the cooldown a new visit is a new event.
    later = feed(tracker, [Vote("a", 0.8)] * 4, start_frame=2000, start_time=10 + settings.cooldown_s + 1)
    assert len(later) == 1 and not later[0][1].in_cooldown
    # Another camera has its own cooldown.
    other = feed(Tracker("cam2"), [Vote("a", 0.8)] * 4, start_time=11)
    assert len(other) == 1 and not other[0][1].in_cooldown


def test_a_confirmed_track_is_not_confirmed_twice():
    tracker = Tracker("cam")
    assert len(feed(tracker, [Vote("a", 0.8)] * 30)) == 1


def test_association_follows_a_moving_face_and_separates_two():
    tracker = Tracker("cam")
    ids = []
    for i in range(20):
        boxes = [(50 + 12 * i, 100, 80, 80), (500 - 12 * i, 300, 60, 60)]
        tracks = tracker.associate(boxes, i, i / 15, i / 15, SETTINGS)
        ids.append(tuple(t.track_id for t in tracks))
    assert len(set(ids)) == 1, "each face keeps its track while moving"
    assert ids[0][0] != ids[0][1]
    assert tracker.tracks_started == 2


def test_tracks_expire_after_the_timeout():
    tracker = Tracker("cam")
    (first,) = tracker.associate([(100, 100, 80, 80)], 0, 0.0, 0.0, SETTINGS)
    (later,) = tracker.associate([(100, 100, 80, 80)], 30, SETTINGS.track_timeout_s + 0.5, 0.0, SETTINGS)
    assert later.track_id != first.track_id


def test_a_different_person_in_the_same_place_starts_a_new_track():
    tracker = Tracker("cam")
    (track,) = tracker.associate([(100, 100, 80, 80)], 0, 0.0, 0.0, SETTINGS)
    tracker.add_vote(track, unit(1), Vote("a", 0.8), 0.0, SETTINGS)
    (same_place,) = tracker.associate([(102, 100, 80, 80)], 1, 0.07, 0.07, SETTINGS)
    assert same_place is track
    assert tracker.split_if_other_person(track, unit(1), 1, 0.07, 0.07, SETTINGS) is track
    split = tracker.split_if_other_person(track, unit(2), 1, 0.07, 0.07, SETTINGS)
    assert split is not track and not split.votes


def test_lean_embedding_schedule():
    settings = RecognitionConfig(threshold=0.5, confirm_frames=2, confirm_window=3, recheck_every=5, stranger_every=3)
    tracker = Tracker("cam")
    box = (100, 100, 80, 80)
    # A gallery person: embedded each frame until confirmed, then only every `recheck_every` frames.
    embedded = []
    for i in range(20):
        (track,) = tracker.associate([box], i, i / 15, i / 15, settings)
        if track.needs_embedding(settings):
            embedded.append(i)
            tracker.add_vote(track, unit(0), Vote("a", 0.8), i / 15, settings)
    assert embedded == [0, 1, 6, 11, 16]
    # A stranger: embedded until a full window says "no one", then every `stranger_every` frames.
    tracker = Tracker("cam")
    embedded = []
    for i in range(15):
        (track,) = tracker.associate([box], i, i / 15, i / 15, settings)
        if track.needs_embedding(settings):
            embedded.append(i)
            tracker.add_vote(track, unit(0), Vote(None, 0.2), i / 15, settings)
    assert embedded == [0, 1, 2, 5, 8, 11, 14]


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_a_tracks_fused_embedding_is_the_weighted_mean_of_its_frames():
    tracker = Tracker("cam")
    (track,) = tracker.associate([(0, 0, 80, 80)], 0, 0.0, 0.0, SETTINGS)
    a, b = np.eye(128, dtype=np.float32)[0], np.eye(128, dtype=np.float32)[1]
    np.testing.assert_allclose(track.fuse(a, 1.0), a)
    fused = track.fuse(b, 3.0)  # a better look weighs three times as much
    np.testing.assert_allclose(fused, (a + 3 * b) / np.linalg.norm(a + 3 * b), rtol=1e-6)
    assert track.fused_frames == 2 and abs(np.linalg.norm(fused) - 1) < 1e-6


def test_fusing_noisy_looks_lands_closer_to_the_face_than_a_typical_look():
    rng = np.random.default_rng(5)
    face = unit(7)
    tracker = Tracker("cam")
    (track,) = tracker.associate([(0, 0, 80, 80)], 0, 0.0, 0.0, SETTINGS)
    looks = [face + 0.12 * rng.standard_normal(128).astype(np.float32) for _ in range(12)]
    looks = [v / np.linalg.norm(v) for v in looks]
    for look in looks:
        fused = track.fuse(look, 1.0)
    assert float(fused @ face) > max(float(look @ face) for look in looks)


def test_sharper_larger_frontal_faces_weigh_more_and_every_frame_keeps_some_weight():
    good = {"size_px": 90.0, "sharpness": 150.0, "yaw": 0.05}
    small = {**good, "size_px": 36.0}
    soft = {**good, "sharpness": 30.0}
    turned = {**good, "yaw": 0.4}
    assert fuse_weight(good) == pytest.approx(max(fuse_weight(q) for q in (good, small, soft, turned)))
    assert all(0 < fuse_weight(q) < fuse_weight(good) for q in (small, soft, turned))


def test_a_different_face_in_the_same_place_starts_a_new_fused_track():
    tracker = Tracker("cam")
    (track,) = tracker.associate([(0, 0, 80, 80)], 0, 0.0, 0.0, SETTINGS)
    track.embedding = unit(1)
    track.fuse(unit(1), 1.0)
    other = tracker.split_if_other_person(track, -unit(1), 1, 0.1, 0.1, SETTINGS)
    assert other is not track and other.fused_sum is None and other.fused_frames == 0
