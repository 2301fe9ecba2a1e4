"""Decision thresholds on SFace cosine similarity.

A false SMS about a stranger is the costliest error, and a device searches a whole
gallery: the chance that a stranger resembles *someone* grows with the number of
persons searched. The per-comparison impostor tail p(t) is measured once on real
photos (benchmarks/accuracy.py, stored in ``impostor_tail.json``); a stranger searched
against N persons matches someone with probability 1 - (1 - p(t))^N, so a gallery of
one state's cases can run a lower threshold than a national one at the same false-match
budget. Method, table and limits: docs/recognition.md.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

# Authors' pairwise threshold (opencv_zoo sface.py): the floor; at 25,000 persons nearly
# every stranger would exceed it against someone.
SFACE_PAIR_THRESHOLD = 0.363
# Lowest threshold (0.01 steps) at which a stranger searched against 25,000 mean
# templates is estimated to match someone at most once per 1,000 (estimated 0.00092,
# the larger of two tail models). The price: about 36% of in-gallery probe photos of
# the shared set reach it. With 75 identities the estimate is loose: over random 80%
# subsets of identities the operating point ranged 0.71-0.90 (5th-95th percentile).
# tests/test_calibration.py checks it equals threshold_for_gallery(25_000).
DEFAULT_THRESHOLD = 0.82
CALIBRATED_GALLERY_SIZE = 25_000
CALIBRATED_TEMPLATE = "mean"
CALIBRATED_FALSE_MATCH_TARGET = 1e-3

IMPOSTOR_TAIL_FILE = Path(__file__).with_name("impostor_tail.json")


@functools.cache
def impostor_tail() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(threshold grid ascending, conservative per-comparison impostor tail p(t))."""
    table = json.loads(IMPOSTOR_TAIL_FILE.read_text())
    return tuple(table["thresholds"]), tuple(table["p"])


def false_match_rate(threshold_index: int, persons: int) -> float:
    """P(a stranger exceeds grid threshold ``threshold_index`` against any of ``persons``)."""
    p = impostor_tail()[1][threshold_index]
    return -math.expm1(persons * math.log1p(-min(p, 1.0 - 1e-16)))


@functools.cache
def threshold_for_gallery(persons: int, false_match_target: float = CALIBRATED_FALSE_MATCH_TARGET) -> float:
    """The lowest grid threshold at which a stranger searched against ``persons`` mean
    templates matches someone with probability at most ``false_match_target``.

    Never below SFACE_PAIR_THRESHOLD; the top of the grid if no grid threshold meets the
    target (the estimate there is already an extrapolation).
    """
    thresholds, _ = impostor_tail()
    persons = max(int(persons), 1)
    chosen = next(
        (t for k, t in enumerate(thresholds) if false_match_rate(k, persons) <= false_match_target), thresholds[-1]
    )
    return max(chosen, SFACE_PAIR_THRESHOLD)
