"""The threshold calibration: its arithmetic, and the shipped tail table and cohort against real photos.

The full calibration (benchmarks/calibrate.py) embeds 5,471 photos once into a cache outside
git. Here a fixed sample of ../shared/data/lfw-calibration is checked against the shipped
table and cohort (embedded on first use, then cached), and, when the full cache exists, a
fresh calibration from it must reproduce the shipped table.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from benchmarks import calibrate, face_cache
from models.scoring import shipped_cohort
from models.thresholds import DESIGN_FALSE_ALARM, impostor_tail, threshold_for_gallery

SAMPLE_EVERY = 12  # every 12th person (sorted by name), up to 3 photos each: ~230 people, ~330 photos


def test_max_over_n_matches_simulation():
    rng = np.random.default_rng(0)
    n, trials, t = 200, 4000, 2.5
    simulated = np.mean(rng.standard_normal((trials, n)).max(axis=1) >= t)
    predicted = calibrate.false_alarm_model(np.array([stats.norm.sf(t)]), n)[0]
    assert predicted == pytest.approx(simulated, abs=0.03)


def test_the_conservative_tail_bounds_the_measurement_and_never_rises():
    grid = calibrate.GRID
    pairs = 7_000_000
    # A measured tail that decays, then flattens at a few look-alike pairs, then ends.
    measured = np.where(grid < 0.55, 1e-2 * np.exp(-(grid - 0.30) / 0.025), 3 / pairs)
    measured[grid > 0.6] = 0.0
    shipped, info = calibrate.conservative_tail(measured, measured * pairs, pairs)
    assert np.all(np.diff(shipped) <= 0)
    assert np.all(shipped >= measured * 0.999)
    assert shipped[-1] > 0, "beyond the data the tail is extrapolated, never zero"
    reliable = measured * pairs >= calibrate.MIN_TAIL_EXCEEDANCES
    assert np.all(shipped[reliable] > measured[reliable]), "an upper confidence bound where measured"
    assert info["measured_up_to"] < 0.55


def test_threshold_for_is_the_lowest_grid_value_meeting_the_target():
    p = np.linspace(1e-3, 1e-9, len(calibrate.GRID))
    chosen = calibrate.threshold_for(p, 1_000, 1e-3)
    k = int(np.searchsorted(calibrate.GRID, chosen))
    assert calibrate.false_alarm_model(p[k], 1_000) <= 1e-3 < calibrate.false_alarm_model(p[k - 1], 1_000)


def test_a_recalibration_keeps_the_track_tail_only_while_it_still_holds():
    # The track tail comes from bench_tracks.py, not from this calibration: --write must not
    # silently drop it (every gallery build needs it), nor keep it once its cohort is replaced.
    grid = calibrate.GRID.tolist()
    track = {"cohort": "cohort-a", "p": [0.0] * len(grid)}
    previous = {"thresholds": grid, "scores": {"snorm": {"cohort": "cohort-a"}, "track": track}}
    kept, dropped = calibrate.carried_over(previous, "cohort-a")
    assert kept == {"track": track} and dropped == {}
    kept, dropped = calibrate.carried_over(previous, "cohort-b")
    assert kept == {} and "cohort-a" in dropped["track"]
    kept, dropped = calibrate.carried_over({**previous, "thresholds": grid[1:]}, "cohort-a")
    assert kept == {} and "grid" in dropped["track"]
    assert calibrate.carried_over(None, "cohort-a") == ({}, {})


def test_the_walk_recording_cache_is_keyed_by_content_not_location(tmp_path):
    # A clone elsewhere (or data mounted elsewhere) must find the same 25-minute recording.
    from types import SimpleNamespace

    from benchmarks.bench_tracks import recording_key

    models = SimpleNamespace(detector_ref={"id": "d", "sha256": "1"}, embedder_ref={"id": "e", "sha256": "2"})
    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here, there):
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"photo a")
        (folder / "b.jpg").write_bytes(b"photo b")
    people = [("Ann", here / "a.jpg", "lfw"), ("Bob", here / "b.jpg", "lfw")]
    moved = [("Ann", there / "a.jpg", "lfw"), ("Bob", there / "b.jpg", "lfw")]
    assert recording_key(models, people) == recording_key(models, moved)
    (there / "b.jpg").write_bytes(b"another photo")
    assert recording_key(models, people) != recording_key(models, moved)
    assert recording_key(models, people) != recording_key(models, people[::-1]), "the walk order is recorded too"
    other_models = SimpleNamespace(detector_ref=models.detector_ref, embedder_ref={"id": "e", "sha256": "3"})
    assert recording_key(models, people) != recording_key(other_models, people)


@pytest.fixture(scope="module")
def face_models():
    from models.recognizer import FaceModels

    return FaceModels.load()


@pytest.fixture(scope="module")
def lfw_root():
    if not face_cache.LFW_CALIBRATION.is_dir():
        pytest.skip(f"calibration photos not found at {face_cache.LFW_CALIBRATION} (../shared/data/lfw-calibration)")
    return face_cache.LFW_CALIBRATION


@pytest.fixture(scope="module")
def sample(lfw_root, face_models):
    """A fixed sample of the calibration set through the embedding cache (embedded on first use)."""
    photos = face_cache.labelled_photos(lfw_root)
    names = sorted({identity for identity, _ in photos})[::SAMPLE_EVERY]
    chosen = {name: [] for name in names}
    for identity, photo in photos:
        if identity in chosen and len(chosen[identity]) < 3:
            chosen[identity].append(photo)
    table = face_cache.load_faces(lfw_root, face_models, progress=False, only=[p for ps in chosen.values() for p in ps])
    return table, calibrate.calibration_set(table, calibrate.LABEL_MERGES, calibrate.TWINS)


@pytest.mark.slow
def test_cached_embeddings_are_what_the_pinned_models_compute_now(sample, face_models):
    table, _ = sample
    for p in range(0, len(table.paths), 40):
        fresh = face_cache._photo_entry(face_models, (table.root / table.paths[p]).read_bytes())
        cached = [table.vectors[f] for f in table.faces_of(p)]
        assert len(fresh["vectors"]) == len(cached), table.paths[p]
        assert np.min(np.sum(fresh["vectors"] * np.asarray(cached), axis=1)) > 0.9999, table.paths[p]


@pytest.mark.slow
def test_the_shipped_cohort_describes_the_sample(sample):
    _, data = sample
    cohort = shipped_cohort()
    fitted = calibrate.fit_cohort(data, "sample")
    assert fitted.impostor_mean == pytest.approx(cohort.impostor_mean, abs=0.01)
    assert fitted.impostor_std == pytest.approx(cohort.impostor_std, abs=0.01)
    assert float(np.dot(fitted.mean, cohort.mean) / np.linalg.norm(fitted.mean) / np.linalg.norm(cohort.mean)) > 0.97


@pytest.mark.slow
@pytest.mark.parametrize("score", ["snorm", "cosine"])
def test_the_shipped_tail_matches_the_sample_where_the_sample_can_measure_it(sample, score):
    """Identity-weighted exceedance of the sample at 0.30 and 0.35 (hundreds and dozens of pairs
    of people) agrees with the shipped p(t) within Poisson noise."""
    _, data = sample
    tail = calibrate.impostor_tail(data, calibrate.scorer(score, shipped_cohort()))
    thresholds, shipped = impostor_tail(score)
    for t in (0.30, 0.35):
        k = thresholds.index(t)
        expected = shipped[k] * tail["identity_pairs"]
        observed = tail["empirical"][int(np.searchsorted(calibrate.GRID, t))] * tail["identity_pairs"]
        assert abs(observed - expected) <= 4 * np.sqrt(expected) + 3, (score, t, observed, expected)


@pytest.mark.slow
def test_a_fresh_calibration_from_the_full_cache_reproduces_the_shipped_table(lfw_root, face_models):
    if not face_cache.is_cached(lfw_root, face_models):
        pytest.skip("the full calibration cache is absent: run `python benchmarks/calibrate.py` once to create it")
    data = calibrate.calibration_set(
        face_cache.load_faces(lfw_root, face_models, progress=False), calibrate.LABEL_MERGES, calibrate.TWINS
    )
    cohort, tails = calibrate.calibrate(data, "check")
    assert cohort.id == shipped_cohort().id
    for score in ("snorm", "cosine"):
        _, shipped = impostor_tail(score)
        np.testing.assert_allclose(tails[score]["p"], shipped, rtol=1e-3, atol=1e-12)
        for persons in calibrate.TABLE_SIZES:
            assert calibrate.threshold_for(tails[score]["p"], persons, DESIGN_FALSE_ALARM) == threshold_for_gallery(
                persons, score=score
            )
