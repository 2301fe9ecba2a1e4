"""The gallery-size threshold read from the shipped calibration table (models/impostor_tail.json)."""

from __future__ import annotations

import numpy as np
import pytest

from models.thresholds import (
    CALIBRATED_FALSE_MATCH_TARGET,
    CALIBRATED_GALLERY_SIZE,
    DEFAULT_THRESHOLD,
    SFACE_PAIR_THRESHOLD,
    false_match_rate,
    impostor_tail,
    threshold_for_gallery,
)

SIZES = [1, 2, 10, 18, 100, 1_000, 5_000, 25_000, 100_000, 10**6, 10**9]


def test_the_shipped_tail_is_a_decreasing_probability_over_an_ascending_grid():
    thresholds, p = impostor_tail()
    assert len(thresholds) == len(p) >= 2
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(p) <= 0) and all(0 < value < 1 for value in p)


def test_threshold_rises_with_gallery_size_and_stays_on_the_grid():
    thresholds, _ = impostor_tail()
    chosen = [threshold_for_gallery(n) for n in SIZES]
    assert chosen == sorted(chosen)
    assert all(SFACE_PAIR_THRESHOLD <= t <= thresholds[-1] for t in chosen)
    assert all(t in thresholds or t == SFACE_PAIR_THRESHOLD for t in chosen)
    assert threshold_for_gallery(0) == threshold_for_gallery(1)


def test_the_calibrated_size_gives_the_default_and_a_small_gallery_a_lower_threshold():
    assert threshold_for_gallery(CALIBRATED_GALLERY_SIZE) == DEFAULT_THRESHOLD
    assert threshold_for_gallery(1_000) < DEFAULT_THRESHOLD


@pytest.mark.parametrize("persons", [18, 1_000, 25_000])
def test_the_chosen_threshold_is_the_lowest_meeting_the_target(persons):
    thresholds, _ = impostor_tail()
    k = thresholds.index(threshold_for_gallery(persons))
    assert false_match_rate(k, persons) <= CALIBRATED_FALSE_MATCH_TARGET
    if k > 0 and thresholds[k - 1] >= SFACE_PAIR_THRESHOLD:
        assert false_match_rate(k - 1, persons) > CALIBRATED_FALSE_MATCH_TARGET


def test_a_stricter_target_needs_a_higher_threshold():
    assert threshold_for_gallery(1_000, 1e-4) > threshold_for_gallery(1_000, 1e-3)
