"""The threshold calibration: its tail arithmetic, and the shipped default and tail table against real photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from models.thresholds import (
    CALIBRATED_GALLERY_SIZE,
    CALIBRATED_TEMPLATE,
    DEFAULT_THRESHOLD,
    SFACE_PAIR_THRESHOLD,
    impostor_tail,
    threshold_for_gallery,
)

ACCURACY = Path(__file__).resolve().parent.parent / "benchmarks" / "accuracy.py"


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("bench_accuracy", ACCURACY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_max_over_n_matches_simulation(accuracy):
    # P(max of n draws >= t) from the pairwise rate, against brute-force simulation.
    rng = np.random.default_rng(0)
    n, trials, t = 200, 4000, 2.5
    simulated = np.mean(rng.standard_normal((trials, n)).max(axis=1) >= t)
    from scipy import stats

    predicted = accuracy.exceed_any(np.array([stats.norm.sf(t)]), n)[0]
    assert predicted == pytest.approx(simulated, abs=0.03)


def test_exponential_tail_fit_recovers_a_known_tail(accuracy):
    rng = np.random.default_rng(1)
    scores = rng.exponential(0.05, 200_000)
    thresholds = np.array([0.4, 0.6])
    estimated, fit = accuracy.gpd_tail(scores, thresholds, exponential=True)
    np.testing.assert_allclose(estimated, np.exp(-thresholds / 0.05), rtol=0.25)
    assert fit["scale"] == pytest.approx(0.05, rel=0.05)


def test_operating_point_is_the_lowest_threshold_meeting_the_target(accuracy):
    rows = [{"threshold": 0.5, "false_match_rate": 0.01}, {"threshold": 0.6, "false_match_rate": 0.0009}]
    rows.append({"threshold": 0.7, "false_match_rate": 0.0001})
    assert accuracy.operating_point(rows)["threshold"] == 0.6
    assert accuracy.operating_point(rows[:1]) is None


@pytest.fixture(scope="module")
def fresh_calibration(accuracy, faces_dir) -> dict:
    """Re-embeds the shared photos and re-runs the calibration (as benchmarks/accuracy.py)."""
    from models.recognizer import FaceModels

    # group/ faces are not impostors (gallery people appear in them); skip embedding them.
    data = accuracy.embed_dataset(faces_dir, FaceModels.load(), extra_kinds=("noface",))
    return accuracy.analyse(data, CALIBRATED_GALLERY_SIZE, photos_per_person=2.0, subset_rounds=0)


@pytest.mark.slow
def test_default_threshold_meets_the_target_on_the_real_photos(accuracy, fresh_calibration):
    """Fails if a change to detection, gate or embedding moves the calibrated operating
    point away from DEFAULT_THRESHOLD."""
    report = fresh_calibration
    chosen = report["templates"][CALIBRATED_TEMPLATE]
    row = next(r for r in chosen["table"] if abs(r["threshold"] - DEFAULT_THRESHOLD) < 1e-9)
    assert row["false_match_rate"] <= accuracy.TARGET_FALSE_MATCH
    assert chosen["operating_point"]["threshold"] == pytest.approx(DEFAULT_THRESHOLD, abs=0.011)
    assert chosen["rank1"] >= 0.98
    # Known label merges are applied: no cross-label pair looks like the same person.
    assert report["top_cross_label_pairs"][0]["similarity"] < 0.6
    # The photos enrol: the original system found a face in 94% of case photos.
    assert report["counts"]["gallery_photos_embedded"] / 280 >= 0.94


@pytest.mark.slow
def test_the_shipped_tail_table_matches_a_fresh_calibration(fresh_calibration):
    """models/impostor_tail.json (the device's size-based thresholds) must be the table this
    code measures on the real photos; regenerate it with ``accuracy.py --write-tail``."""
    chosen = fresh_calibration["templates"][CALIBRATED_TEMPLATE]
    stored_thresholds, stored_p = impostor_tail()
    assert chosen["pairwise_tail"]["thresholds"] == pytest.approx(stored_thresholds, abs=1e-9)
    np.testing.assert_allclose(chosen["pairwise_tail"]["p"], stored_p, rtol=0.25)
    for size in chosen["by_gallery_size"]:
        fresh = size["operating_point"]["threshold"] if size["operating_point"] else stored_thresholds[-1]
        expected = max(fresh, SFACE_PAIR_THRESHOLD)
        assert threshold_for_gallery(size["persons"]) == pytest.approx(expected, abs=0.011), size["persons"]
