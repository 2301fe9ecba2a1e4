"""Accuracy on the shared real photos (../shared/data/faces): the earlier, small-set calibration.

    python benchmarks/accuracy.py [--faces DIR] [--cache FILE] [--gallery-size 25000] > accuracy.json

The shipped thresholds no longer come from here: benchmarks/calibrate.py measures them on
5,471 photos of 2,765 people (and cross-checks this set). This script remains for its
rank-1 and template comparisons on these photos, and its ``--cache`` npz of real
embeddings feeds benchmarks/bench_search.py --real. Its tail model (75 identities,
extrapolated three to four orders of magnitude) is far too conservative; see
docs/recognition.md.

What it measures (method and limits in docs/recognition.md):

1. Closed-set rank-1: each photo of an identity with 2+ photos is a probe against a
   gallery holding every other photo (one row per photo, or one mean per person).
2. Impostor scores: every probe against every photo of *other* identities, plus the
   faces in group/ (against everyone) and false detections in noface/.
3. Large-gallery false-match rate: a stranger searched against N gallery vectors is
   a false match if the maximum of N impostor similarities reaches t. Each probe's
   own impostor scores give a Gaussian model of its tail (some faces resemble
   everybody more than others do), so FM_N(t) = mean_i [1 - (1 - p_i(t))^N]; a
   generalised-Pareto fit of the pooled tail is reported beside it as a check.
4. Identification rate at t: a genuine probe is identified if its best genuine
   similarity g reaches t and no distractor among N exceeds g.
5. Empirical open set at the real (small) gallery: leave one identity out, its
   photos become impostor probes against everyone else.
6. The conservative per-comparison tail p(t) of the mean template over the threshold
   grid, and the operating point it gives for several gallery sizes (for comparison only).

Photos are read in place and never copied. Output is one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.images import ImageError, load_image  # noqa: E402
from models.recognizer import FaceModels  # noqa: E402
from sync_service.gallery.enrol import enrol_person, photo_candidates  # noqa: E402

DEFAULT_FACES = REPO.parent / "shared" / "data" / "faces"
THRESHOLDS = np.round(np.arange(0.30, 0.9501, 0.01), 3)
TARGET_FALSE_MATCH = 1e-3
# Gallery sizes (persons) reported in ``by_gallery_size``: a few states' caseloads up to
# the national 25,000 the default is calibrated for.
REPORTED_GALLERY_SIZES = (18, 100, 1_000, 5_000, 25_000)
# Opaque labels from different sources that are the same person. Found as the highest
# cross-label pairs (0.60-0.81 against every photo of the other label) and confirmed by
# looking: serengil/deepface's unnamed test set is the same actress as timesler's.
SAME_PERSON = {"deepface_unnamed_a": "angelina_jolie"}


def embed_dataset(faces_dir: Path, models: FaceModels, extra_kinds: tuple[str, ...] = ("group", "noface")) -> dict:
    """Subject embedding per gallery photo; every usable face in group/ and noface/."""
    identities, paths, vectors, status = [], [], [], {"no_face": [], "ambiguous": []}
    for person_dir in sorted((faces_dir / "gallery").iterdir()):
        photos = sorted(person_dir.glob("*.jpg"))
        for result in enrol_person(models, photos):
            if result.vector is None:
                status["no_face"].append(f"{result.photo}: {result.reason}")
                continue
            if result.status == "ambiguous":
                status["ambiguous"].append(f"{result.photo}: {result.reason}")
            identities.append(person_dir.name)
            paths.append(str(Path(result.photo).relative_to(faces_dir)))
            vectors.append(result.vector)
    extra = {}
    for kind in ("group", "noface"):
        kind_paths, kind_vectors = [], []
        if kind not in extra_kinds:
            extra[kind] = ([], np.empty((0, 128), np.float32))
            continue
        for photo in sorted((faces_dir / kind).glob("*.jpg")):
            try:
                usable, _ = photo_candidates(models, load_image(photo))
            except ImageError:
                continue
            for candidate in usable:
                kind_paths.append(str(photo.relative_to(faces_dir)))
                kind_vectors.append(candidate.vector)
        extra[kind] = (kind_paths, np.asarray(kind_vectors, np.float32).reshape(-1, 128))
    return {
        "identities": np.asarray(identities),
        "paths": np.asarray(paths),
        "vectors": np.asarray(vectors, np.float32),
        "group_paths": np.asarray(extra["group"][0]),
        "group_vectors": extra["group"][1],
        "noface_paths": np.asarray(extra["noface"][0]),
        "noface_vectors": extra["noface"][1],
        "gallery_no_face": np.asarray(status["no_face"]),
        "gallery_ambiguous": np.asarray(status["ambiguous"]),
    }


def rank1(vectors: np.ndarray, identities: np.ndarray, template: str) -> dict:
    """Leave-one-photo-out rank-1 identification over identities with 2+ photos."""
    counts = defaultdict(int)
    for identity in identities:
        counts[identity] += 1
    hits, genuine_scores = 0, []
    probes = [i for i, identity in enumerate(identities) if counts[identity] >= 2]
    for probe in probes:
        keep = np.arange(len(identities)) != probe
        gallery_vectors, gallery_ids = vectors[keep], identities[keep]
        if template == "mean":
            names = np.unique(gallery_ids)
            means = np.stack([gallery_vectors[gallery_ids == name].mean(axis=0) for name in names])
            gallery_vectors = means / np.linalg.norm(means, axis=1, keepdims=True)
            gallery_ids = names
        scores = gallery_vectors @ vectors[probe]
        best = int(np.argmax(scores))
        hits += gallery_ids[best] == identities[probe]
        genuine_scores.append(float(scores[gallery_ids == identities[probe]].max()))
    return {"template": template, "probes": len(probes), "rank1": hits / len(probes), "genuine": genuine_scores}


def gaussian_tail(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    mean, sd = float(np.mean(scores)), float(np.std(scores, ddof=1))
    return stats.norm.sf((thresholds - mean) / sd)


def false_match_at_n(per_probe_scores: list[np.ndarray], thresholds: np.ndarray, n: int) -> np.ndarray:
    """Mean over probes of P(max of n impostor similarities >= t), Gaussian per-probe tails."""
    rates = np.zeros(len(thresholds))
    for scores in per_probe_scores:
        p = gaussian_tail(scores, thresholds)
        rates += -np.expm1(n * np.log1p(-np.clip(p, 0, 1 - 1e-16)))
    return rates / len(per_probe_scores)


def gpd_tail(
    pooled: np.ndarray, thresholds: np.ndarray, quantile: float = 0.99, exponential: bool = False
) -> tuple[np.ndarray, dict]:
    """Pooled pairwise exceedance from a generalised-Pareto fit above the ``quantile``.

    ``exponential`` fixes the shape at 0. Similarities are bounded, so the true shape
    is negative; a fitted shape from a few hundred exceedances swings by several
    hundredths, which moves the 25k-gallery threshold by about 0.1. Shape 0 is the
    conservative choice: it never assumes the tail ends.
    """
    u = float(np.quantile(pooled, quantile))
    excess = pooled[pooled > u] - u
    if exponential:
        shape, scale = 0.0, float(np.mean(excess))
    else:
        shape, _, scale = stats.genpareto.fit(excess, floc=0)
    tail = (1 - quantile) * stats.genpareto.sf(np.maximum(thresholds - u, 0), shape, loc=0, scale=scale)
    return np.where(thresholds > u, tail, np.mean(pooled[:, None] >= thresholds[None, :], axis=0)), {
        "u": u,
        "shape": shape,
        "scale": scale,
        "exceedances": int(len(excess)),
    }


def exceed_any(pairwise: np.ndarray, n: int) -> np.ndarray:
    """P(at least one of n independent comparisons exceeds), from the pairwise rate."""
    return -np.expm1(n * np.log1p(-np.clip(pairwise, 0, 1 - 1e-16)))


def template_scores(vectors: np.ndarray, identities: np.ndarray, template: str) -> tuple[np.ndarray, np.ndarray]:
    """(best genuine similarity per probe, pooled impostor similarities) for one template.

    Probes are photos of identities with 2+ photos; the probe's own photo is left out
    of its identity's template. Impostor scores compare every photo with every other
    identity's template rows.
    """
    names = np.unique(identities)
    genuine, impostor = [], []
    means = {name: vectors[identities == name].mean(axis=0) for name in names}
    for i, identity in enumerate(identities):
        if template == "mean":
            others = np.stack([means[name] for name in names if name != identity])
            others /= np.linalg.norm(others, axis=1, keepdims=True)
            impostor.append(others @ vectors[i])
            rest = vectors[(identities == identity) & (np.arange(len(vectors)) != i)]
            if len(rest):
                own = rest.mean(axis=0)
                genuine.append(float(own @ vectors[i] / np.linalg.norm(own)))
        else:
            impostor.append(vectors[identities != identity] @ vectors[i])
            rest = (identities == identity) & (np.arange(len(vectors)) != i)
            if rest.any():
                genuine.append(float((vectors[rest] @ vectors[i]).max()))
    return np.asarray(genuine), np.concatenate(impostor)


def conservative_tail(impostor: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Per-comparison impostor exceedance p(t): the larger of the exponential-tail and the
    fitted-shape estimates (the shape is too uncertain to trust either alone)."""
    return np.maximum(gpd_tail(impostor, thresholds, exponential=True)[0], gpd_tail(impostor, thresholds)[0])


def operating_table(genuine: np.ndarray, impostor: np.ndarray, comparisons: int) -> tuple[list[dict], dict]:
    """Identification and false-match rates at N per threshold. The rate used for
    decisions (``false_match_rate``) is the larger of the exponential-tail and the
    fitted-shape estimates: the shape is too uncertain to trust either alone."""
    pairwise, fit = gpd_tail(impostor, THRESHOLDS, exponential=True)
    pairwise_fitted, fitted = gpd_tail(impostor, THRESHOLDS)
    false_match = exceed_any(pairwise, comparisons)
    false_match_fitted = exceed_any(pairwise_fitted, comparisons)
    # A genuine probe is identified if g >= t and no distractor among N beats g.
    survive = 1.0 - exceed_any(gpd_tail(impostor, genuine, exponential=True)[0], comparisons)
    rows = [
        {
            "threshold": float(t),
            "identification_rate": round(float(np.mean((genuine >= t) * survive)), 4),
            "false_match_rate": float(max(false_match[k], false_match_fitted[k])),
            "false_match_rate_exponential_tail": float(false_match[k]),
            "false_match_rate_fitted_shape": float(false_match_fitted[k]),
            "pairwise_false_match_empirical": float(np.mean(impostor >= t)),
        }
        for k, t in enumerate(THRESHOLDS)
    ]
    return rows, {"exponential": fit, "fitted": fitted}


def operating_point(rows: list[dict], target: float = TARGET_FALSE_MATCH) -> dict | None:
    """The lowest threshold whose (conservative) false-match rate is at most ``target``."""
    safe = [row for row in rows if row["false_match_rate"] <= target]
    return safe[0] if safe else None


def compare_templates(
    vectors: np.ndarray, identities: np.ndarray, gallery_size: int, photos_per_person: float, rounds: int = 40
) -> dict:
    """How often the mean template beats per-photo rows at the operating point, over
    random 80% subsets of identities: one run's difference is within estimator noise."""
    rng = np.random.default_rng(0)
    names = np.unique(identities)
    wins, differences, thresholds = 0, [], {"per_photo": [], "mean": []}
    for _ in range(rounds):
        keep = np.isin(identities, rng.choice(names, size=int(0.8 * len(names)), replace=False))
        rates = {}
        for template, comparisons in (("per_photo", int(gallery_size * photos_per_person)), ("mean", gallery_size)):
            rows, _ = operating_table(*template_scores(vectors[keep], identities[keep], template), comparisons)
            point = operating_point(rows)
            rates[template] = point["identification_rate"] if point else 0.0
            thresholds[template].append(point["threshold"] if point else float("nan"))
        differences.append(rates["mean"] - rates["per_photo"])
        wins += rates["mean"] > rates["per_photo"]
    return {
        "rounds": rounds,
        "mean_wins": wins,
        "difference_mean_minus_per_photo_median": round(float(np.median(differences)), 4),
        "difference_quartiles": np.round(np.quantile(differences, [0.25, 0.75]), 4).tolist(),
        "operating_threshold_range_5_50_95": {
            template: np.round(np.nanquantile(values, [0.05, 0.5, 0.95]), 3).tolist()
            for template, values in thresholds.items()
        },
    }


def analyse(data: dict, gallery_size: int, photos_per_person: float, subset_rounds: int = 40) -> dict:
    vectors = data["vectors"]
    identities = np.asarray([SAME_PERSON.get(str(name), str(name)) for name in data["identities"]])
    similarity = vectors @ vectors.T
    same = identities[:, None] == identities[None, :]
    upper = np.triu(np.ones_like(same), k=1).astype(bool)
    genuine_pairs = similarity[same & upper]
    impostor_pairs = similarity[~same & upper]
    # Highest-scoring cross-label pairs: candidates for label errors (opaque labels).
    order = np.argsort(-np.where(~same & upper, similarity, -2), axis=None)[:10]
    top_cross = [
        {"a": str(data["paths"][i]), "b": str(data["paths"][j]), "similarity": round(float(similarity[i, j]), 3)}
        for i, j in zip(*np.unravel_index(order, similarity.shape), strict=True)
    ]
    # Impostor probes: each gallery photo against every other identity. Faces in group/
    # are NOT impostors: gallery people appear in them (Obama and Biden at 0.95) and they
    # carry no labels. False detections in noface/ that pass the gate are added.
    per_probe = [similarity[i][~same[i]] for i in range(len(vectors))]
    if len(data["noface_vectors"]):
        per_probe.extend(data["noface_vectors"] @ vectors.T)
    pooled = np.concatenate(per_probe)
    # Check the tail models where the truth is observable: the real gallery (about 270
    # impostor vectors per probe), open set by leaving each probe's identity out.
    pairwise_gpd, _ = gpd_tail(pooled, THRESHOLDS, exponential=True)
    observed_max = np.array([scores.max() for scores in per_probe])
    n_real = int(np.median([len(scores) for scores in per_probe]))
    validation = [
        {
            "threshold": float(t),
            "observed_false_match": round(float(np.mean(observed_max >= t)), 4),
            "predicted_exponential_tail": round(float(exceed_any(pairwise_gpd[k : k + 1], n_real)[0]), 4),
            "predicted_gaussian_per_probe": round(
                float(false_match_at_n(per_probe, THRESHOLDS[k : k + 1], n_real)[0]), 4
            ),
        }
        for k, t in enumerate(THRESHOLDS)
        if t <= 0.52 and k % 2 == 0
    ]
    results = {}
    for template, comparisons in (("per_photo", int(gallery_size * photos_per_person)), ("mean", gallery_size)):
        genuine, impostor = template_scores(vectors, identities, template)
        if template == "per_photo" and len(data["noface_vectors"]):
            impostor = np.concatenate([impostor, (data["noface_vectors"] @ vectors.T).ravel()])
        rows, fit = operating_table(genuine, impostor, comparisons)
        ranks = rank1(vectors, identities, template)
        by_size = []
        for persons in REPORTED_GALLERY_SIZES:
            # per_photo galleries search photos_per_person rows per person.
            n = int(persons * photos_per_person) if template == "per_photo" else persons
            point = operating_point(operating_table(genuine, impostor, n)[0])
            by_size.append({"persons": persons, "comparisons_per_stranger": n, "operating_point": point})
        results[template] = {
            "comparisons_per_stranger": comparisons,
            "rank1": round(ranks["rank1"], 4),
            "probes": ranks["probes"],
            "gpd_fit": fit,
            "operating_point": operating_point(rows),
            "at_false_match_1_percent": operating_point(rows, 0.01),
            "by_gallery_size": by_size,
            "pairwise_tail": {
                "thresholds": THRESHOLDS.tolist(),
                "p": [float(f"{p:.6g}") for p in conservative_tail(impostor)],
            },
            "table": rows,
        }
    return {
        "template_comparison": compare_templates(vectors, identities, gallery_size, photos_per_person, subset_rounds)
        if subset_rounds
        else None,
        "counts": {
            "identities": int(len(np.unique(identities))),
            "gallery_photos_embedded": int(len(vectors)),
            "genuine_pairs": int(len(genuine_pairs)),
            "impostor_pairs": int(len(impostor_pairs)),
            "group_faces_not_used_as_impostors": int(len(data["group_vectors"])),
            "noface_false_detections_passing_gate": int(len(data["noface_vectors"])),
            "impostor_probes": len(per_probe),
            "impostor_vectors_per_probe_median": n_real,
        },
        "gallery_no_face": data["gallery_no_face"].tolist(),
        "gallery_ambiguous": data["gallery_ambiguous"].tolist(),
        "genuine_pairs_quantiles_1_5_10_50": np.round(np.quantile(genuine_pairs, [0.01, 0.05, 0.1, 0.5]), 3).tolist(),
        "impostor_pairs_quantiles_50_99_999_9999_max": np.round(
            np.quantile(impostor_pairs, [0.5, 0.99, 0.999, 0.9999, 1.0]), 3
        ).tolist(),
        "gallery_size": gallery_size,
        "target_false_match": TARGET_FALSE_MATCH,
        "templates": results,
        "tail_model_check_at_real_gallery": validation,
        "top_cross_label_pairs": top_cross,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    parser.add_argument("--cache", type=Path, help="save/load embeddings here (npz) to re-run the analysis only")
    parser.add_argument("--gallery-size", type=int, default=25_000, help="persons in the gallery")
    parser.add_argument("--photos-per-person", type=float, default=2.0, help="gallery rows per person (per_photo)")
    args = parser.parse_args()
    if args.cache and args.cache.is_file():
        data = dict(np.load(args.cache, allow_pickle=False))
    else:
        started = time.perf_counter()
        data = embed_dataset(args.faces, FaceModels.load())
        print(f"embedded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if args.cache:
            np.savez(args.cache, **data)
    report = analyse(data, args.gallery_size, args.photos_per_person)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
