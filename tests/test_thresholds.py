"""The gallery-size threshold read from the shipped calibration table (models/impostor_tail.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.scoring import shipped_cohort
from models.thresholds import (
    CALIBRATED_GALLERY_SIZE,
    DEFAULT_THRESHOLD,
    DESIGN_FALSE_ALARM,
    FALSE_ALARM_BUDGET,
    SCORE_KINDS,
    SFACE_PAIR_THRESHOLD,
    calibrated_cohort_id,
    false_match_rate,
    impostor_tail,
    threshold_for_gallery,
)

SIZES = [1, 2, 10, 18, 85, 100, 1_000, 5_000, 25_000, 100_000, 10**6, 10**9]


@pytest.mark.parametrize("score", SCORE_KINDS)
def test_the_shipped_tail_is_a_non_increasing_probability_over_an_ascending_grid(score):
    thresholds, p = impostor_tail(score)
    assert len(thresholds) == len(p) >= 2
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(p) <= 0) and all(0 <= value < 1 for value in p)


@pytest.mark.parametrize("score", SCORE_KINDS)
def test_threshold_rises_with_gallery_size_and_stays_on_the_grid(score):
    thresholds, _ = impostor_tail(score)
    chosen = [threshold_for_gallery(n, score=score) for n in SIZES]
    assert chosen == sorted(chosen)
    assert chosen[0] < chosen[-1]
    assert all(t in thresholds or t == SFACE_PAIR_THRESHOLD for t in chosen)
    assert threshold_for_gallery(0, score=score) == threshold_for_gallery(1, score=score)


def test_the_calibrated_size_gives_the_default_and_a_state_sized_gallery_a_lower_threshold():
    assert threshold_for_gallery(CALIBRATED_GALLERY_SIZE) == DEFAULT_THRESHOLD
    assert threshold_for_gallery(500) < threshold_for_gallery(CALIBRATED_GALLERY_SIZE)


@pytest.mark.parametrize("persons", [18, 1_000, 25_000])
@pytest.mark.parametrize("score", SCORE_KINDS)
def test_the_chosen_threshold_is_the_lowest_meeting_the_design_target(persons, score):
    thresholds, _ = impostor_tail(score)
    k = thresholds.index(threshold_for_gallery(persons, score=score))
    assert false_match_rate(k, persons, score) <= DESIGN_FALSE_ALARM < FALSE_ALARM_BUDGET
    if k > 0 and thresholds[k - 1] >= SFACE_PAIR_THRESHOLD:
        assert false_match_rate(k - 1, persons, score) > DESIGN_FALSE_ALARM


def test_a_stricter_target_needs_a_higher_threshold():
    assert threshold_for_gallery(1_000, 1e-4) > threshold_for_gallery(1_000, 1e-3)


def test_an_unknown_score_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="no calibrated tail for score 'zscore'"):
        threshold_for_gallery(100, score="zscore")


def test_the_normalised_tables_were_calibrated_with_the_shipped_cohort():
    assert calibrated_cohort_id() == shipped_cohort().id
    from models.thresholds import _table

    assert _table()["scores"]["track"]["cohort"] == shipped_cohort().id


@pytest.mark.parametrize("stale", ["missing", "other cohort"])
def test_a_gallery_build_refuses_a_stale_track_tail_and_names_the_command(monkeypatch, stale):
    import models.thresholds as thresholds
    from edge_app.gallery.bundle import BundleError
    from sync_service.gallery.enrol import score_spec

    table = json.loads(json.dumps(thresholds._table()))
    if stale == "missing":
        del table["scores"]["track"]
    else:
        table["scores"]["track"]["cohort"] = "cohort-0000000000000000"
    monkeypatch.setattr(thresholds, "_table", lambda: table)
    with pytest.raises(BundleError, match=r"track tail .* rerun benchmarks/bench_tracks.py --write"):
        score_spec(500)


def test_video_tracks_need_more_than_photos_at_every_size():
    # Stranger tracks (many looks, camera quality) reach higher than single photos: the track
    # table's thresholds are above the photo table's, and rise with the gallery too.
    for persons in (18, 500, 2_500, 25_000):
        assert threshold_for_gallery(persons, score="track") > threshold_for_gallery(persons, score="snorm")
