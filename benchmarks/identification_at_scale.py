"""Identification rate against false alarms per stranger, by gallery size, on real photos.

    python benchmarks/identification_at_scale.py [--draws 10] [--json scale.json] [--plot docs/identification_at_scale.png]

Galleries of N people drawn at random from ../shared/data/lfw-calibration (one random photo
each, enrolled as the builder does: flip-averaged template, S-norm against the shipped
cohort) are searched with the people's other photos and with everybody left out
(benchmarks/calibrate.py ``simulate``). For each N one curve: identification rate (right
person on top and at or above the threshold) against measured false alarms per stranger
(every left-out person counts once), over the threshold grid; the shipped operating point
(``models.thresholds.threshold_for_gallery(N)``) is marked. N = 25,000 cannot be drawn from
2,765 people: its curve is the tail model's estimate (genuine scores measured, distractors
from the shipped p(t)), drawn dotted. The plain pipeline (raw cosine, plain templates) is
shown at the largest simulated N for comparison. Writes one JSON and one PNG.

Note: the shipped table was calibrated on these same photos, so the simulated points check
the gallery-size model and the threshold's tightness in-sample; benchmarks/calibrate.py
reports the cross-validated (held-out people) figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import calibrate  # noqa: E402
from benchmarks.face_cache import LFW_CALIBRATION, load_faces  # noqa: E402
from models.scoring import shipped_cohort  # noqa: E402
from models.thresholds import FALSE_ALARM_BUDGET, impostor_tail, threshold_for_gallery  # noqa: E402

SIMULATED = (100, 500, 1_000, 2_500)
NATIONAL = 25_000
TYPICAL_STATE = 500  # NamUs holds ~25,000 open cases; a median state holds a few hundred


def simulated_curves(data, score, sizes, draws: int) -> dict[int, dict]:
    curves = {}
    grid = calibrate.GRID
    for persons in sizes:
        shipped = threshold_for_gallery(persons)
        sim = calibrate.simulate(data, score, persons, grid, draws, seed=persons)
        fa, identified = sim["fa_person"].mean(0), sim["identified"].mean(0)
        k = int(np.searchsorted(grid, shipped))
        ok = np.flatnonzero(fa <= FALSE_ALARM_BUDGET)
        curves[persons] = {
            "persons": persons,
            "draws": draws,
            "strangers_per_draw": len(data.names) - persons,
            "thresholds": grid.tolist(),
            "false_alarms_per_stranger": np.round(fa, 7).tolist(),
            "identified": np.round(identified, 4).tolist(),
            "rank1": round(float(sim["rank1"].mean()), 4),
            "shipped": {
                "threshold": shipped,
                "false_alarms_per_stranger": round(float(fa[k]), 6),
                "false_alarms_ci95": [round(v, 6) for v in calibrate.mean_ci(sim["fa_person"][:, k])],
                "identified": round(float(identified[k]), 4),
                "identified_ci95": [round(v, 4) for v in calibrate.mean_ci(sim["identified"][:, k])],
            },
            "best_at_budget": {"threshold": float(grid[ok[0]]), "identified": round(float(identified[ok[0]]), 4)},
        }
    return curves


def genuine_scores(data, score) -> np.ndarray:
    """Each photo of a person with 2+ photos against a template of another of their photos."""
    scores = []
    for k in range(len(data.names)):
        photos = np.flatnonzero(data.identity == k)
        if len(photos) < 2:
            continue
        template = data.templates[photos[:1]]
        scores.append(score(data.probes[photos[1:]], template)[:, 0])
    return np.concatenate(scores)


def model_curve(genuine: np.ndarray, persons: int) -> dict:
    """The tail model's estimate for a gallery too large to draw: a probe is identified if its
    genuine score reaches t and none of persons - 1 distractors (shipped p) beats it."""
    grid, p = (np.asarray(v) for v in impostor_tail())
    log_p = np.log(np.maximum(p, 1e-300))
    p_at_genuine = np.exp(np.interp(genuine, grid, log_p, left=0.0))
    survive = np.exp((persons - 1) * np.log1p(-np.clip(p_at_genuine, 0, 1 - 1e-16)))
    identified = np.array([np.mean((genuine >= t) * survive) for t in grid])
    fa = -np.expm1(persons * np.log1p(-np.clip(p, 0, 1 - 1e-16)))
    shipped = threshold_for_gallery(persons)
    k = int(np.searchsorted(grid, shipped))
    return {
        "persons": persons,
        "estimate": "tail model (genuine scores measured; distractors from the shipped p(t))",
        "thresholds": grid.tolist(),
        "false_alarms_per_stranger": np.round(fa, 7).tolist(),
        "identified": np.round(identified, 4).tolist(),
        "shipped": {
            "threshold": shipped,
            "false_alarms_per_stranger": round(float(fa[k]), 6),
            "identified": round(float(identified[k]), 4),
        },
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=110)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(result["simulated"]) + 1))
    for colour, curve in zip(colours, [*result["simulated"].values(), result["national_estimate"]], strict=True):
        fa, identified = np.asarray(curve["false_alarms_per_stranger"]), np.asarray(curve["identified"])
        keep = fa > 0
        estimate = "estimate" in curve
        label = f"N = {curve['persons']:,}" + (" (tail-model estimate)" if estimate else "")
        ax.plot(fa[keep], identified[keep], ":" if estimate else "-", color=colour, label=label, lw=1.8)
        point = curve["shipped"]
        if point["false_alarms_per_stranger"] > 0:
            ax.plot(point["false_alarms_per_stranger"], point["identified"], "o", color=colour, ms=7, mec="black")
    base = result["plain_pipeline"]
    fa, identified = np.asarray(base["false_alarms_per_stranger"]), np.asarray(base["identified"])
    keep = fa > 0
    ax.plot(fa[keep], identified[keep], "--", color="grey", lw=1.3, label=f"plain cosine, N = {base['persons']:,}")
    ax.axvline(FALSE_ALARM_BUDGET, color="firebrick", lw=1, alpha=0.7)
    ax.text(
        FALSE_ALARM_BUDGET * 1.08, 0.03, "budget: 1 false alarm\nper 1,000 strangers", color="firebrick", fontsize=8,
        transform=ax.get_xaxis_transform(),
    )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 0.3)
    ax.set_ylim(0.7, 1.0)
    ax.set_xlabel("false alarms per stranger (measured; dotted: estimated)")
    ax.set_ylabel("gallery people's other photos identified")
    ax.set_title("Identification against false alarms by gallery size (dots: shipped thresholds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=LFW_CALIBRATION)
    parser.add_argument("--draws", type=int, default=10, help="random galleries per size")
    parser.add_argument("--json", type=Path, default=Path("identification_at_scale.json"))
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "identification_at_scale.png")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"calibration photos not found at {args.data}")
    started = time.perf_counter()
    data = calibrate.calibration_set(load_faces(args.data), calibrate.LABEL_MERGES, calibrate.TWINS)
    normalised = calibrate.scorer("snorm", shipped_cohort())
    simulated = simulated_curves(data, normalised, SIMULATED, args.draws)
    national = model_curve(genuine_scores(data, normalised), NATIONAL)
    # The plain pipeline: raw cosine against plain (not mirror-averaged) templates.
    plain = calibrate.CalibrationSet(**{**vars(data), "templates": data.probes})
    grid = calibrate.GRID
    sim = calibrate.simulate(plain, calibrate.scorer("cosine", None), SIMULATED[-1], grid, args.draws, SIMULATED[-1])
    fa = sim["fa_person"].mean(0)
    ok = np.flatnonzero(fa <= FALSE_ALARM_BUDGET)
    result = {
        "data": f"{args.data.name}: {len(data.paths)} photos of {len(data.names)} people",
        "load_average": os.getloadavg(),
        "simulated": {str(n): curve for n, curve in simulated.items()},
        "national_estimate": national,
        "plain_pipeline": {
            "persons": SIMULATED[-1],
            "false_alarms_per_stranger": np.round(fa, 7).tolist(),
            "identified": np.round(sim["identified"].mean(0), 4).tolist(),
            "rank1": round(float(sim["rank1"].mean()), 4),
            "best_at_budget": {
                "threshold": float(grid[ok[0]]),
                "identified": round(float(sim["identified"].mean(0)[ok[0]]), 4),
            },
        },
        "typical_state_vs_national": {
            "state_persons": TYPICAL_STATE,
            "state_identified_measured": simulated[TYPICAL_STATE]["shipped"]["identified"],
            "state_threshold": simulated[TYPICAL_STATE]["shipped"]["threshold"],
            "national_persons": NATIONAL,
            "national_identified_estimated": national["shipped"]["identified"],
            "national_threshold": national["shipped"]["threshold"],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    result["simulated"] = {str(k): v for k, v in simulated.items()}
    args.json.write_text(json.dumps(result, indent=1))
    plot({**result, "simulated": simulated}, args.plot)
    summary = {
        n: {"threshold": c["shipped"]["threshold"], "identified": c["shipped"]["identified"],
            "false_alarms": c["shipped"]["false_alarms_per_stranger"], "best_at_budget": c["best_at_budget"],
            "rank1": c["rank1"]}
        for n, c in simulated.items()
    }  # fmt: skip
    print(json.dumps({"summary": summary, "national_estimate": national["shipped"], **{
        k: result[k] for k in ("typical_state_vs_national", "load_average", "seconds")},
        "plain_pipeline_best_at_budget": result["plain_pipeline"]["best_at_budget"]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
