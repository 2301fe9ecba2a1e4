"""Threshold calibration on a large impostor set: the shipped tail table and score-normalisation cohort.

    python benchmarks/calibrate.py [--data DIR] [--out calibration.json] [--write]

Reads ``../shared/data/lfw-calibration`` (5,471 photos of 2,766 people) through the
embedding cache (benchmarks/face_cache.py: embedded once per model, minutes on two cores;
later runs take about a minute). Method and results: docs/recognition.md.

1. **Subjects.** Each photo's subject face is chosen by enrolment's own rule among
   *every* detected face (the quality gate only flags). Known label problems are merged
   (``LABEL_MERGES``), found by looking at the highest-scoring "impostor" pairs.
2. **Scores.** A gallery row is the flip-averaged template of one photo
   (``models.scoring.template_vector``); a probe is one plain embedding. Two scores are
   calibrated: raw cosine (bundles without normalisation) and S-norm against the cohort
   (``models.scoring``), whose moments are computed here, identity-weighted.
3. **Tail.** The per-comparison impostor tail p(t): every photo against every other
   person's photo templates (~30 M ordered pairs), identity-weighted so a person with 50
   photos counts as much as one with one. Measured directly while at least
   ``MIN_TAIL_EXCEEDANCES`` identity pairs exceed t (down to ~1.3e-6), as a 90% upper
   confidence bound; beyond, an exponential continuing the measured decay
   (``conservative_tail``).
4. **Gallery-size model.** A stranger searched against N persons matches someone with
   probability 1 - (1 - p(t))^N; the threshold for N is the lowest grid value keeping
   that at or below 1/1,000. Checked by simulation: random galleries of N people (one
   random photo each), probed with their other photos and with everybody left out;
   false alarms per stranger measured with a confidence interval, and identification
   at the shipped threshold against the best the same scores reach at 0.1%.
5. **Cross-validation.** Identities split in halves: cohort and tail from one half,
   galleries from the other, both ways.
6. **Cross-check** on ``../shared/data/faces`` (a different photo style).

``--write`` stores ``models/cohort.npz`` and ``models/impostor_tail.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.face_cache import FACES, LFW_CALIBRATION, FaceTable, load_faces  # noqa: E402
from models.scoring import Cohort, SNorm, template_vector  # noqa: E402
from models.thresholds import DESIGN_FALSE_ALARM, FALSE_ALARM_BUDGET  # noqa: E402

TARGET_FALSE_ALARM = DESIGN_FALSE_ALARM  # what the thresholds are chosen for (90% of the budget)
GRID = np.round(np.arange(0.30, 0.95001, 0.0025), 4)
GALLERY_SIZES = (100, 500, 1_000, 2_000, 2_500)
TABLE_SIZES = (18, 85, 100, 500, 1_000, 2_500, 5_000, 25_000)
MIN_TAIL_EXCEEDANCES = 10.0  # identity pairs above t needed to trust the direct measurement
EXTRAPOLATION_FROM_EXCEEDANCES = 100.0  # the decay beyond the data is measured from here to the end
SIMULATION_DRAWS = 20
# Looked at (docs/recognition.md): the only cross-name pair above identical twins (0.75 vs the
# Mowry twins' 0.68), two UCLA players photographed the same years, very probably one person.
LABEL_MERGES = {"Ray_Young": "Jason_Kapono"}
FACES_LABEL_MERGES = {"deepface_unnamed_a": "angelina_jolie"}  # same actress, see accuracy.py
# Identical twins score like one person (0.60-0.71 here) and no face recogniser separates them.
# LFW holds two pairs among 2,765 people because both twins were famous; a stranger walking
# past a camera is a gallery person's identical twin far more rarely, so their comparisons
# are not counted as impostors (docs/recognition.md gives the thresholds with them kept).
TWINS = (("Tia_Mowry", "Tamara_Mowry"), ("Johnny_Htu", "Luther_Htu"))


@dataclass
class CalibrationSet:
    """One subject face per photo, with identities as integers."""

    names: np.ndarray  # identity names
    identity: np.ndarray  # [photos] index into names
    paths: np.ndarray
    probes: np.ndarray  # [photos, d] plain embeddings (what a camera frame gives)
    templates: np.ndarray  # [photos, d] flip-averaged embeddings (what enrolment stores)
    passed: np.ndarray  # [photos] the subject face passes the quality gate
    group: np.ndarray  # [photos] impostor group: people in one group are never each other's impostors

    @property
    def photo_weight(self) -> np.ndarray:
        """1 / photos of the photo's identity: every person weighs the same."""
        return 1.0 / np.bincount(self.identity)[self.identity]

    def subset(self, keep: np.ndarray) -> CalibrationSet:
        names, identity = np.unique(self.names[self.identity[keep]], return_inverse=True)
        return CalibrationSet(
            names, identity, self.paths[keep], self.probes[keep], self.templates[keep], self.passed[keep],
            self.group[keep],
        )  # fmt: skip


def subject_faces(table: FaceTable) -> np.ndarray:
    """The subject face row of each photo (enrolment's rule, every detected face eligible); -1 if none."""
    from models.faces import Face
    from sync_service.gallery.enrol import Candidate, choose_subjects

    chosen = np.full(len(table.paths), -1)
    for identity in np.unique(table.identities):
        photos = [p for p in np.flatnonzero(table.identities == identity) if table.counts[p]]
        candidates = [
            (
                [
                    Candidate(Face(tuple(table.boxes[f]), table.landmarks[f], 1.0), table.vectors[f])
                    for f in table.faces_of(p)
                ],
                tuple(table.sizes[p]),
            )
            for p in photos
        ]
        for p, (index, _) in zip(photos, choose_subjects(candidates), strict=True):
            chosen[p] = table.first[p] + index
    return chosen


def calibration_set(table: FaceTable, merges: dict[str, str], twins=()) -> CalibrationSet:
    rows = subject_faces(table)
    keep = rows >= 0
    rows = rows[keep]
    names = np.array([merges.get(str(n), str(n)) for n in table.identities[keep]])
    unique, identity = np.unique(names, return_inverse=True)
    templates = np.stack([template_vector(table.vectors[f], table.flipped[f]) for f in rows])
    group_of = {name: name for name in unique}
    for pair in twins:
        for name in pair:
            group_of[name] = pair[0]
    _, group = np.unique([group_of[name] for name in names], return_inverse=True)
    return CalibrationSet(
        unique, identity, table.paths[keep], table.vectors[rows], templates, table.passed[rows], group
    )


def fit_cohort(data: CalibrationSet, description: str) -> Cohort:
    """Identity-weighted mean and covariance of the plain embeddings, and the impostor cosine
    mean and std (every person weighs the same)."""
    weight = data.photo_weight
    vectors = data.probes.astype(np.float64)
    mean = np.average(vectors, axis=0, weights=weight)
    cov = np.cov(vectors.T, aweights=weight, bias=True)
    total = weighted = squares = 0.0
    for start in range(0, len(vectors), 1024):
        block = vectors[start : start + 1024] @ vectors.T
        pair_weight = weight[start : start + 1024, None] * weight[None, :]
        pair_weight = pair_weight * (data.group[start : start + 1024, None] != data.group[None, :])
        total += pair_weight.sum()
        weighted += (pair_weight * block).sum()
        squares += (pair_weight * block**2).sum()
    impostor_mean = weighted / total
    impostor_std = float(np.sqrt(squares / total - impostor_mean**2))
    return Cohort(mean, cov, float(impostor_mean), impostor_std, description)


def scorer(kind: str, cohort: Cohort | None):
    """score(probes [q, d], templates [n, d]) -> [q, n] for raw cosine or S-norm."""

    def cosine(probes: np.ndarray, templates: np.ndarray) -> np.ndarray:
        return probes @ templates.T

    def snorm(probes: np.ndarray, templates: np.ndarray) -> np.ndarray:
        return SNorm(cohort, templates).scores(probes @ templates.T, None, probes)

    return cosine if kind == "cosine" else snorm


# --- 3. the per-comparison impostor tail --------------------------------------------------


def impostor_tail(data: CalibrationSet, score, block: int = 512) -> dict:
    """Identity-weighted exceedance p(t) over all (probe photo, template photo) pairs of different
    people, on GRID; the shipped (conservative) p(t); and the pairs that score highest."""
    weight = data.photo_weight
    edges = np.round(np.arange(-1.0, 1.5005, 0.001), 3)
    weighted_hist = np.zeros(len(edges) - 1)
    count_hist = np.zeros(len(edges) - 1)
    total_weight, pairs, top = 0.0, 0, []
    for start in range(0, len(data.probes), block):
        stop = min(start + block, len(data.probes))
        scores = score(data.probes[start:stop], data.templates)
        different = data.group[start:stop, None] != data.group[None, :]
        pair_weight = (weight[start:stop, None] * weight[None, :])[different]
        values = scores[different]
        weighted_hist += np.histogram(values, edges, weights=pair_weight)[0]
        count_hist += np.histogram(values, edges)[0]
        total_weight += pair_weight.sum()
        pairs += values.size
        masked = np.where(different, scores, -np.inf)
        best = np.argsort(-masked, axis=None)[:20]
        for flat in best:
            i, j = np.unravel_index(flat, masked.shape)
            top.append((float(masked[i, j]), start + int(i), int(j)))
    # Exceedance at each bin edge, then at the grid (edges are a superset of the grid).
    weighted_tail = np.concatenate([np.cumsum(weighted_hist[::-1])[::-1], [0.0]]) / total_weight
    count_tail = np.concatenate([np.cumsum(count_hist[::-1])[::-1], [0.0]])
    at = np.searchsorted(edges, GRID - 1e-9)
    empirical = weighted_tail[at]
    identity_pairs = len(data.names) * (len(data.names) - 1)
    exceedances = empirical * identity_pairs  # identity-pair equivalents above t
    shipped, extrapolation = conservative_tail(empirical, exceedances, identity_pairs)
    top.sort(reverse=True)
    return {
        "pairs": int(pairs),
        "identity_pairs": int(identity_pairs),
        "empirical": empirical,
        "pairs_above": count_tail[at].astype(int),
        "identity_pairs_above": exceedances,
        "extrapolation": extrapolation,
        "p": shipped,
        "top_pairs": [
            {"score": round(s, 3), "probe": str(data.paths[i]), "template": str(data.paths[j])} for s, i, j in top[:15]
        ],
    }


def conservative_tail(empirical: np.ndarray, exceedances: np.ndarray, identity_pairs: int) -> tuple[np.ndarray, dict]:
    """The shipped p(t) from the identity-weighted measurement on GRID.

    Where at least MIN_TAIL_EXCEEDANCES identity pairs exceed t: the one-sided 90% Poisson
    upper bound of the measured count (so a threshold meets the budget with 90% confidence
    in the estimate, not just on average). Beyond the last such t (t_hi) the measurement
    runs out; p is extended as an exponential from the bound at t_hi with the decay the
    measurement itself shows over its last decade (from EXTRAPOLATION_FROM_EXCEEDANCES
    pairs down to MIN_TAIL_EXCEEDANCES): look-alike clusters make the far tail heavier than
    a fit to the bulk, so the local slope errs high.
    """
    from scipy import stats

    upper = stats.chi2.ppf(0.9, 2 * (exceedances + 1)) / 2 / identity_pairs
    reliable = np.flatnonzero(exceedances >= MIN_TAIL_EXCEEDANCES)
    hi = int(reliable[-1])
    lo = int(np.flatnonzero(exceedances <= EXTRAPOLATION_FROM_EXCEEDANCES)[0])
    lo = min(lo, hi - 1)
    scale = float((GRID[hi] - GRID[lo]) / np.log(empirical[lo] / empirical[hi]))
    extended = upper[hi] * np.exp(-(GRID - GRID[hi]) / scale)
    shipped = np.where(np.arange(len(GRID)) <= hi, upper, np.maximum(extended, empirical))
    shipped = np.minimum.accumulate(np.maximum(shipped, 0.0))
    return shipped, {
        "measured_up_to": float(GRID[hi]),
        "p_at_measured_up_to": float(upper[hi]),
        "decay_scale": scale,
        "decay_fitted_between": [float(GRID[lo]), float(GRID[hi])],
    }


def false_alarm_model(p: np.ndarray, persons: int) -> np.ndarray:
    return -np.expm1(persons * np.log1p(-np.clip(p, 0, 1 - 1e-16)))


def threshold_for(p: np.ndarray, persons: int, target: float = TARGET_FALSE_ALARM) -> float:
    ok = np.flatnonzero(false_alarm_model(p, persons) <= target)
    return float(GRID[ok[0]]) if len(ok) else float(GRID[-1])


# --- 4. galleries of N people, simulated --------------------------------------------------


def simulate(
    data: CalibrationSet, score, persons: int, thresholds: np.ndarray, draws: int, seed: int
) -> dict[str, np.ndarray]:
    """Random galleries of ``persons`` people (one random photo each, flip template).

    Returns per draw and threshold: false alarms per stranger (identity-weighted: each
    left-out person's photos average to one stranger; and per photo), identification of
    the gallery people's other photos (right person on top and score >= t), and rank-1.
    """
    rng = np.random.default_rng(seed)
    people = len(data.names)
    photos_of = [np.flatnonzero(data.identity == k) for k in range(people)]
    weight = data.photo_weight
    fa_person, fa_photo, identified, rank1 = [], [], [], []
    for _ in range(draws):
        gallery = rng.choice(people, size=persons, replace=False)
        enrolled = np.array([rng.choice(photos_of[k]) for k in gallery])
        in_gallery = np.zeros(people, bool)
        in_gallery[gallery] = True
        strangers = np.flatnonzero(~in_gallery[data.identity])
        genuine = np.setdiff1d(np.flatnonzero(in_gallery[data.identity]), enrolled)
        stranger_best = _best_scores(
            score, data.probes[strangers], data.templates[enrolled], data.group[strangers], data.group[enrolled]
        )[0]
        exceed = stranger_best[:, None] >= thresholds[None, :]
        w = weight[strangers]
        fa_person.append((w[:, None] * exceed).sum(0) / w.sum())
        fa_photo.append(exceed.mean(0))
        best, best_row = _best_scores(score, data.probes[genuine], data.templates[enrolled])
        right = gallery[best_row] == data.identity[genuine]
        identified.append((right[:, None] & (best[:, None] >= thresholds[None, :])).mean(0))
        rank1.append(right.mean())
    return {
        "fa_person": np.array(fa_person),
        "fa_photo": np.array(fa_photo),
        "identified": np.array(identified),
        "rank1": np.array(rank1),
    }


def _best_scores(score, probes, templates, probe_group=None, template_group=None, block: int = 1024):
    """Best score and row per probe; pairs in the same impostor group (twins) are skipped if groups are given."""
    best, rows = [], []
    for start in range(0, len(probes), block):
        scores = score(probes[start : start + block], templates)
        if probe_group is not None:
            scores = np.where(probe_group[start : start + block, None] == template_group[None, :], -np.inf, scores)
        rows.append(scores.argmax(1))
        best.append(scores[np.arange(len(scores)), rows[-1]])
    if not best:
        return np.zeros(0), np.zeros(0, int)
    return np.concatenate(best), np.concatenate(rows)


def mean_ci(samples: np.ndarray) -> list[float]:
    """Mean and a 95% interval over draws (t interval; draws share people, so read it as indicative)."""
    from scipy import stats

    mean = float(np.mean(samples))
    if len(samples) < 2:
        return [mean, mean, mean]
    half = float(stats.t.ppf(0.975, len(samples) - 1) * np.std(samples, ddof=1) / np.sqrt(len(samples)))
    return [mean, max(0.0, mean - half), mean + half]


def gallery_check(data: CalibrationSet, score, p: np.ndarray, sizes, draws: int, seed: int = 0) -> list[dict]:
    """Measured vs predicted false alarms, and identification vs the best at 0.1%, per gallery size."""
    rows = []
    for persons in sizes:
        if persons >= len(data.names) - 50:
            continue
        shipped = threshold_for(p, persons)
        grid = np.unique(np.concatenate([GRID, [shipped]]))
        sim = simulate(data, score, persons, grid, draws, seed + persons)
        k = int(np.searchsorted(grid, shipped))
        fa_mean = sim["fa_person"].mean(0)
        best_k = int(np.flatnonzero(fa_mean <= FALSE_ALARM_BUDGET)[0])
        strangers = len(data.names) - persons
        rows.append(
            {
                "persons": persons,
                "strangers_per_draw": strangers,
                "draws": draws,
                "threshold": shipped,
                "false_alarms_per_stranger_predicted": float(
                    false_alarm_model(p[np.searchsorted(GRID, shipped)], persons)
                ),
                "false_alarms_per_stranger_measured_ci95": [round(v, 6) for v in mean_ci(sim["fa_person"][:, k])],
                "false_alarms_per_stranger_photo_weighted": round(float(sim["fa_photo"][:, k].mean()), 6),
                "identified_ci95": [round(v, 4) for v in mean_ci(sim["identified"][:, k])],
                "best_threshold_at_budget": float(grid[best_k]),
                "identified_at_best_threshold": round(float(sim["identified"][:, best_k].mean()), 4),
                "rank1": round(float(sim["rank1"].mean()), 4),
                "curve": {
                    "thresholds": grid.tolist(),
                    "false_alarms_measured": np.round(fa_mean, 7).tolist(),
                    "false_alarms_predicted": np.round(
                        false_alarm_model(np.interp(grid, GRID, p), persons), 7
                    ).tolist(),
                    "identified": np.round(sim["identified"].mean(0), 4).tolist(),
                },
            }
        )
    return rows


# --- the whole calibration -----------------------------------------------------------------


def calibrate(data: CalibrationSet, description: str) -> tuple[Cohort, dict[str, dict]]:
    cohort = fit_cohort(data, description)
    tails = {kind: impostor_tail(data, scorer(kind, cohort)) for kind in ("cosine", "snorm")}
    return cohort, tails


def people_halves(data: CalibrationSet, seed: int = 1) -> np.ndarray:
    """A random half of the people (True) against the other: the cross-validation split."""
    return np.random.default_rng(seed).random(len(data.names)) < 0.5


def cross_validation(data: CalibrationSet, sizes=(100, 500, 1_000), draws: int = 10, seed: int = 1) -> list[dict]:
    """Cohort and tail from one half of the people, galleries from the other; both ways."""
    halves = people_halves(data, seed)
    results = []
    for name, calibrate_on in (("calibrate on half 1, evaluate on half 2", halves), ("the reverse", ~halves)):
        train = data.subset(calibrate_on[data.identity])
        test = data.subset(~calibrate_on[data.identity])
        cohort, tails = calibrate(train, "cross-validation half")
        results.append(
            {
                "split": name,
                "calibration_people": len(train.names),
                "evaluation_people": len(test.names),
                "by_size": [
                    {k: v for k, v in row.items() if k != "curve"}
                    for row in gallery_check(test, scorer("snorm", cohort), tails["snorm"]["p"], sizes, draws)
                ],
            }
        )
    return results


def faces_cross_check(cohort: Cohort, p: np.ndarray, faces_root: Path) -> dict | None:
    """The real gallery of ../shared/data/faces: each person's first photo enrolled, the others
    probed; every person left out in turn as a stranger against all the others."""
    if not (faces_root / "gallery").is_dir():
        return None
    data = calibration_set(load_faces(faces_root / "gallery"), FACES_LABEL_MERGES)
    score = scorer("snorm", cohort)
    first = np.array([np.flatnonzero(data.identity == k)[0] for k in range(len(data.names))])
    scores = score(data.probes, data.templates[first])
    own = data.identity[:, None] == np.arange(len(data.names))[None, :]
    stranger_best = np.where(own, -np.inf, scores).max(1)  # each photo as a stranger to the others
    genuine = np.setdiff1d(np.arange(len(data.identity)), first)
    right = scores[genuine].argmax(1) == data.identity[genuine]
    persons = len(data.names) - 1
    shipped = threshold_for(p, persons)
    return {
        "data": f"faces/gallery: {len(data.paths)} photos, {len(data.names)} people",
        "persons_in_gallery": persons,
        "threshold": shipped,
        "stranger_photos": len(stranger_best),
        "false_alarms": int((stranger_best >= shipped).sum()),
        "stranger_best_max": round(float(stranger_best.max()), 3),
        "genuine_probes": len(genuine),
        "identified": round(float((right & (scores[genuine].max(1) >= shipped)).mean()), 4),
        "rank1": round(float(right.mean()), 4),
    }


def tail_table(
    cohort: Cohort, tails: dict[str, dict], data: CalibrationSet, root: Path, previous: dict | None = None
) -> tuple[dict, dict[str, str]]:
    """models/impostor_tail.json: p(t) per score kind and its provenance.

    Kinds this calibration does not measure (``track``, from benchmarks/bench_tracks.py) are
    carried over from ``previous`` when they were measured with the same cohort and grid;
    otherwise they are stale and left out (``carried_over`` says which, and why).
    """
    table = {
        "description": "Per-comparison impostor tail p(t): the chance that a stranger's face scores at least t "
        "against one gallery row (identity-weighted); a stranger searched against N persons matches someone with "
        "probability 1 - (1 - p(t))^N. Where at least "
        f"{MIN_TAIL_EXCEEDANCES:.0f} pairs of people exceed t: the 90% upper confidence bound of the measurement; "
        "beyond: an exponential continuing the measured decay (benchmarks/calibrate.py conservative_tail).",
        "source": "benchmarks/calibrate.py --write (method: docs/recognition.md)",
        "data": f"{root.name}: {len(data.paths)} photos of {len(data.names)} people, "
        f"{tails['snorm']['pairs']:,} different-person pairs",
        "created": time.strftime("%Y-%m-%d", time.gmtime()),
        "template": "one flip-averaged photo per row (several photos: their unit mean)",
        "thresholds": GRID.tolist(),
        "scores": {
            "cosine": {"p": [float(f"{v:.4g}") for v in tails["cosine"]["p"]]},
            "snorm": {"cohort": cohort.id, "p": [float(f"{v:.4g}") for v in tails["snorm"]["p"]]},
        },
    }
    kept, dropped = carried_over(previous, cohort.id, measured=table["scores"])
    table["scores"].update(kept)
    return table, dropped


def carried_over(
    previous: dict | None, cohort_id: str, measured: Iterable[str] = ("cosine", "snorm")
) -> tuple[dict[str, dict], dict[str, str]]:
    """The score kinds of the previous table not ``measured`` now that still hold, and why the rest do not."""
    kept: dict[str, dict] = {}
    dropped: dict[str, str] = {}
    if not previous:
        return kept, dropped
    for kind, entry in previous.get("scores", {}).items():
        if kind in measured:
            continue
        if previous.get("thresholds") != GRID.tolist():
            dropped[kind] = "the threshold grid changed"
        elif entry.get("cohort") != cohort_id:
            dropped[kind] = f"measured with cohort {entry.get('cohort')}, not {cohort_id}"
        else:
            kept[kind] = entry
    return kept, dropped


def summary_tail(tail: dict) -> dict:
    rows = []
    for k, t in enumerate(GRID):
        if k % 4 == 0 and tail["empirical"][k] > 0 or k % 10 == 0:
            rows.append(
                {
                    "t": float(t),
                    "pairs_above": int(tail["pairs_above"][k]),
                    "p_measured": float(f"{tail['empirical'][k]:.4g}"),
                    "identity_pairs_above": round(float(tail["identity_pairs_above"][k]), 1),
                    "p_shipped": float(f"{tail['p'][k]:.4g}"),
                }
            )
    return {
        "pairs": tail["pairs"],
        "identity_pairs": tail["identity_pairs"],
        "extrapolation": tail["extrapolation"],
        "table": rows,
        "top_pairs": tail["top_pairs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=LFW_CALIBRATION)
    parser.add_argument("--faces", type=Path, default=FACES)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--write", action="store_true", help="store models/cohort.npz and models/impostor_tail.json")
    parser.add_argument("--draws", type=int, default=SIMULATION_DRAWS, help="random galleries per size")
    parser.add_argument("--skip", nargs="*", default=[], choices=["simulation", "cross-validation", "faces"])
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"calibration photos not found at {args.data}")
    started = time.perf_counter()
    data = calibration_set(load_faces(args.data), LABEL_MERGES, TWINS)
    description = f"{args.data.name}: {len(data.paths)} photos of {len(data.names)} people"
    cohort, tails = calibrate(data, description)
    p = tails["snorm"]["p"]
    report: dict = {
        "data": description,
        "subjects_failing_the_gate_enrolled_anyway": int((~data.passed).sum()),
        "label_merges": LABEL_MERGES,
        "cohort": {"id": cohort.id, "impostor_mean": cohort.impostor_mean, "impostor_std": cohort.impostor_std},
        "tails": {kind: summary_tail(tail) for kind, tail in tails.items()},
        "thresholds": {kind: {n: threshold_for(tail["p"], n) for n in TABLE_SIZES} for kind, tail in tails.items()},
        "design_false_alarm": TARGET_FALSE_ALARM,
    }
    if "simulation" not in args.skip:
        report["simulation"] = {
            kind: gallery_check(data, scorer(kind, cohort), tails[kind]["p"], GALLERY_SIZES, args.draws)
            for kind in ("snorm", "cosine")
        }
    if "cross-validation" not in args.skip:
        report["cross_validation"] = cross_validation(data)
    if "faces" not in args.skip:
        report["faces_cross_check"] = faces_cross_check(cohort, p, args.faces)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.write:
        table_path = REPO / "models" / "impostor_tail.json"
        previous = json.loads(table_path.read_text()) if table_path.exists() else None
        table, dropped = tail_table(cohort, tails, data, args.data, previous)
        (REPO / "models" / "cohort.npz").write_bytes(cohort.to_bytes())
        table_path.write_text(json.dumps(table, indent=1) + "\n")
        report["written"] = {"kinds": sorted(table["scores"]), "left_out": dropped}
        from sync_service.gallery.enrol import CALIBRATION_COMMANDS

        for kind, why in dropped.items():
            # Gallery builds need every kind (enrol.score_spec): say what restores it.
            command = CALIBRATION_COMMANDS.get(kind, "the benchmark that measures it")
            print(f"{kind} tail left out ({why}): rerun {command}", file=sys.stderr)
    text = json.dumps(report, indent=1, default=_json_default)
    if args.out:
        args.out.write_text(text)
    print(text)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(type(value))


if __name__ == "__main__":
    main()
