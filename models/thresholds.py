"""Decision thresholds, by gallery size, from the impostor tail measured on ~5,500 real photos.

A false SMS about a stranger is the costliest error, and a device searches a whole
gallery: the chance that a stranger resembles *someone* grows with the number of persons
searched. The per-comparison impostor tail p(t) was measured once on 5,471 photos of
2,765 people (~30 million different-person pairs; benchmarks/calibrate.py, stored in
``impostor_tail.json``); a stranger searched against N persons matches someone with
probability 1 - (1 - p(t))^N, so a gallery of one state's cases runs a lower threshold
than a national one at the same budget.

Three tails are shipped: ``snorm`` (a photo's normalised score against galleries built
with a cohort, models/scoring.py; what ``mpd identify`` applies), ``track`` (a video
track's fused votes under the device's confirmation rule, measured on people walking past
a camera, benchmarks/bench_tracks.py) and ``cosine`` (raw cosine, for bundles from before
normalisation). Method, tables and limits: docs/recognition.md.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

# The budget: a stranger may match someone in at most 1 of 1,000 searches.
FALSE_ALARM_BUDGET = 1e-3
# Thresholds are chosen for 90% of it: the tail estimate carries sampling noise (a few
# dozen pairs of look-alike people decide it), and at the simulated gallery sizes this
# margin kept every measured rate under the budget for about half a point of identification.
DESIGN_FALSE_ALARM = 0.9 * FALSE_ALARM_BUDGET
SCORE_KINDS = ("snorm", "track", "cosine")
DEFAULT_SCORE = "snorm"
# Authors' pairwise threshold (opencv_zoo sface.py) for raw cosine: never go below it.
SFACE_PAIR_THRESHOLD = 0.363
# The threshold for a 25,000-person national gallery with the normalised score: an
# extrapolation past the measured tail (docs/recognition.md gives its uncertainty).
# tests/test_thresholds.py checks it equals threshold_for_gallery(CALIBRATED_GALLERY_SIZE).
DEFAULT_THRESHOLD = 0.5875
CALIBRATED_GALLERY_SIZE = 25_000

IMPOSTOR_TAIL_FILE = Path(__file__).with_name("impostor_tail.json")


@functools.cache
def _table() -> dict:
    return json.loads(IMPOSTOR_TAIL_FILE.read_text())


def impostor_tail(score: str = DEFAULT_SCORE) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(threshold grid ascending, per-comparison impostor tail p(t)) of one score kind."""
    table = _table()
    if score not in table["scores"]:
        raise ValueError(f"no calibrated tail for score {score!r}; known: {sorted(table['scores'])}")
    return tuple(table["thresholds"]), tuple(table["scores"][score]["p"])


def calibrated_cohort_id(score: str = DEFAULT_SCORE) -> str | None:
    """The cohort a normalised tail (``snorm``, ``track``) was measured with (models/cohort.npz);
    None if the table has no such tail."""
    return _table()["scores"].get(score, {}).get("cohort")


def false_match_rate(threshold_index: int, persons: int, score: str = DEFAULT_SCORE) -> float:
    """P(a stranger reaches grid threshold ``threshold_index`` against any of ``persons``)."""
    p = impostor_tail(score)[1][threshold_index]
    return -math.expm1(persons * math.log1p(-min(p, 1.0 - 1e-16)))


@functools.cache
def threshold_for_gallery(
    persons: int, false_match_target: float = DESIGN_FALSE_ALARM, score: str = DEFAULT_SCORE
) -> float:
    """The lowest grid threshold at which a stranger searched against ``persons`` gallery
    persons (one row each) matches someone with probability at most ``false_match_target``.

    This is the one function a gallery builder calls for a gallery's (or a scope's)
    threshold. The top of the grid if no grid threshold meets the target.
    """
    thresholds, _ = impostor_tail(score)
    persons = max(int(persons), 1)
    chosen = next(
        (t for k, t in enumerate(thresholds) if false_match_rate(k, persons, score) <= false_match_target),
        thresholds[-1],
    )
    return max(chosen, SFACE_PAIR_THRESHOLD) if score == "cosine" else chosen
