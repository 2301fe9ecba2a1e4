"""Which scoring and which template: the measurements behind S-norm, mirror-averaged templates and mean templates.

    python benchmarks/scoring_study.py [--splits 8] > scoring_study.json

1. **Scores.** The calibration people are split in two halves at random (``--splits``
   times, both ways); the cohort comes from one half, galleries from the other. For each
   way of scoring, identification at 1 false alarm per 1,000 strangers (and rank-1) is
   the exact expectation over random galleries of N people from the evaluation half
   (every person enrolled with their first photo; a stranger is every photo of a person
   left out): for a stranger whose score reaches t against k of the other M people's
   templates, the chance that a random N-person gallery holds none of them is
   C(M - k, N) / C(M, N). Differences are reported against plain cosine, with the number
   of evaluations in which each method won.
2. **Templates for people with several photos.** People with 3+ photos: two enrolled, the
   rest probed; the mean of the two templates against both kept as rows (best of
   photos), at equal per-person false-alarm rates (identity-weighted).
3. **Poor photos.** Subject faces the quality gate would refuse, against those it passes:
   as strangers (how often their best score over everybody else's template reaches t) and
   as templates (how many other people's photos reach t against them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import gammaln

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import calibrate  # noqa: E402
from benchmarks.face_cache import LFW_CALIBRATION, load_faces  # noqa: E402
from models.scoring import Cohort, SNorm  # noqa: E402

GALLERY_SIZES = (500, 1_000)
TARGETS = (1e-3, 1e-2)


def _log_comb(n, k):
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def p_none(population: int, marked: np.ndarray, drawn: int) -> np.ndarray:
    """P(a random ``drawn``-subset of ``population`` avoids all ``marked`` items)."""
    marked = np.asarray(marked, float)
    out = np.zeros_like(marked)
    ok = population - marked >= drawn
    out[ok] = np.exp(_log_comb(population - marked[ok], drawn) - _log_comb(population, drawn))
    return out


def expected_curves(scores: np.ndarray, own: np.ndarray, genuine: np.ndarray, thresholds: np.ndarray, persons: int):
    """Exact expectation over random ``persons``-galleries: (false alarms per stranger photo,
    identification, rank-1) per threshold. ``scores`` [photos, people], ``own`` marks each
    photo's own person, ``genuine`` the photos probed as gallery people."""
    people = scores.shape[1]
    impostor = -np.sort(-np.where(own, -np.inf, scores), axis=1)[:, : people - 1]
    fa = np.array([np.mean(1 - p_none(people - 1, (impostor >= t).sum(1), persons)) for t in thresholds])
    own_score = np.where(own[genuine], scores[genuine], -np.inf).max(1)
    beaten = (impostor[genuine] > own_score[:, None]).sum(1)
    survive = p_none(people - 1, beaten, persons - 1)
    identified = np.array([np.mean((own_score >= t) * survive) for t in thresholds])
    return fa, identified, float(np.mean(survive))


def method_scores(method: str, data: calibrate.CalibrationSet, cohort: Cohort, first: np.ndarray) -> np.ndarray:
    templates = data.probes[first] if method.startswith("plain") else data.templates[first]
    cosine = data.probes @ templates.T
    if method.endswith("cosine"):
        return cosine
    norm = SNorm(cohort, templates)
    if method.endswith("snorm"):
        return norm.scores(cosine, None, data.probes)
    # Z-norm: the row side only.
    return cosine / norm.row_std - norm.row_mean / norm.row_std


METHODS = ("plain cosine", "mirror cosine", "mirror znorm", "plain snorm", "mirror snorm")


def compare_scores(data: calibrate.CalibrationSet, splits: int) -> dict:
    rows: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    for seed in range(splits):
        halves = np.random.default_rng(seed).random(len(data.names)) < 0.5
        for cohort_half in (halves, ~halves):
            cohort = calibrate.fit_cohort(data.subset(cohort_half[data.identity]), "half")
            test = data.subset(~cohort_half[data.identity])
            first = np.array([np.flatnonzero(test.identity == k)[0] for k in range(len(test.names))])
            own = test.identity[:, None] == np.arange(len(test.names))[None, :]
            genuine = np.setdiff1d(np.arange(len(test.identity)), first)
            genuine = genuine[np.isin(test.identity[genuine], test.identity[first])]
            for method in METHODS:
                scores = method_scores(method, test, cohort, first)
                thresholds = np.quantile(scores[~own], 1 - np.logspace(-1.5, -7, 240))
                row = []
                for persons in GALLERY_SIZES:
                    fa, identified, rank1 = expected_curves(scores, own, genuine, thresholds, persons)
                    for target in TARGETS:
                        ok = np.flatnonzero(fa <= target)
                        row.append(float(identified[ok[0]]) if len(ok) else 0.0)
                    row.append(rank1)
                rows[method].append(row)
    columns = [
        f"N={n} {name}" for n in GALLERY_SIZES for name in ("identified at 1e-3", "identified at 1e-2", "rank-1")
    ]
    base = np.array(rows["plain cosine"])
    return {
        "evaluations": 2 * splits,
        "columns": columns,
        "methods": {
            method: {
                "mean": np.round(np.mean(values, 0), 4).tolist(),
                "difference_from_plain_cosine": np.round(np.mean(np.array(values) - base, 0), 4).tolist(),
                "evaluations_won": (np.array(values) - base > 0).sum(0).tolist(),
            }
            for method, values in rows.items()
        },
    }


def compare_templates(data: calibrate.CalibrationSet, cohort: Cohort) -> dict:
    counts = np.bincount(data.identity)
    persons = np.flatnonzero(counts >= 3)
    photos = {k: np.flatnonzero(data.identity == k) for k in persons}
    rows = np.concatenate([data.templates[photos[k][:2]] for k in persons])
    means = data.templates[np.stack([photos[k][:2] for k in persons])].mean(1)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    norm_rows, norm_means = SNorm(cohort, rows), SNorm(cohort, means)
    best_of = norm_rows.scores(data.probes @ rows.T, None, data.probes).reshape(len(data.probes), len(persons), 2)
    scored = {
        "mean of photos": norm_means.scores(data.probes @ means.T, None, data.probes),
        "best of photos": best_of.max(2),
    }
    own = data.group[:, None] == data.group[[photos[k][0] for k in persons]][None, :]
    probe = np.zeros(len(data.probes), bool)
    for k in persons:
        probe[photos[k][2:]] = True
    weight = np.broadcast_to(data.photo_weight[:, None], own.shape)[~own]
    result = {"people": len(persons), "probes": int(probe.sum())}
    for name, scores in scored.items():
        impostor = scores[~own]
        order = np.argsort(-impostor)
        cumulative = np.cumsum(weight[order]) / weight.sum()
        genuine = scores[probe][own[probe] & (data.identity[probe][:, None] == persons[None, :])]
        points = {}
        for p in (1e-5, 1e-6):
            t = float(impostor[order][np.searchsorted(cumulative, p)])
            points[f"{p:g}"] = {"threshold": round(t, 4), "probes_reaching_it": round(float(np.mean(genuine >= t)), 4)}
        result[name] = points
    return result


def compare_quality(data: calibrate.CalibrationSet, cohort: Cohort) -> dict:
    first = np.array([np.flatnonzero(data.identity == k)[0] for k in range(len(data.names))])
    templates = data.templates[first]
    scores = SNorm(cohort, templates).scores(data.probes @ templates.T, None, data.probes)
    scores[data.group[:, None] == data.group[first][None, :]] = -np.inf
    best = scores.max(1)
    result = {}
    for name, mask in (("pass", data.passed), ("fail", ~data.passed)):
        result[f"as strangers: subject faces that {name} the gate"] = {
            "photos": int(mask.sum()),
            **{f"best of {len(first)} reaches {t}": round(float(np.mean(best[mask] >= t)), 4) for t in (0.45, 0.5)},
        }
    hits = {t: (scores >= t).sum(0) for t in (0.40, 0.45)}
    for name, mask in (("pass", data.passed[first]), ("fail", ~data.passed[first])):
        result[f"as templates: first photos that {name} the gate"] = {
            "templates": int(mask.sum()),
            **{
                f"other people's photos reaching {t}, mean per template": round(float(hits[t][mask].mean()), 3)
                for t in hits
            },
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=LFW_CALIBRATION)
    parser.add_argument("--splits", type=int, default=8)
    parser.add_argument("--skip-scores", action="store_true", help="only the template and quality studies (seconds)")
    args = parser.parse_args()
    data = calibrate.calibration_set(load_faces(args.data), calibrate.LABEL_MERGES, calibrate.TWINS)
    cohort = calibrate.fit_cohort(data, "all")
    result = {} if args.skip_scores else {"scores": compare_scores(data, args.splits)}
    result.update(templates=compare_templates(data, cohort), quality=compare_quality(data, cohort))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
