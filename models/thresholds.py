"""Decision thresholds on SFace cosine similarity.

A false SMS about a stranger is the costliest error, and a device searches a large
gallery: the chance that a stranger resembles *someone* among 25,000 people is far
higher than for one pair. ``DEFAULT_THRESHOLD`` is calibrated for search against a
25,000-person gallery of mean templates (benchmarks/accuracy.py), not taken from the
pairwise 0.363 SFace's authors recommend. Method, table and limits: docs/recognition.md.
"""

from __future__ import annotations

# Authors' pairwise threshold (opencv_zoo sface.py); for reference only: at 25,000
# persons nearly every stranger would exceed it against someone.
SFACE_PAIR_THRESHOLD = 0.363
# Lowest threshold (0.01 steps) at which a stranger searched against 25,000 mean
# templates is estimated to match someone at most once per 1,000 (estimated 0.00092,
# the larger of two tail models). The price: about 36% of in-gallery probe photos of
# the shared set reach it. With 75 identities the estimate is loose: over random 80%
# subsets of identities the operating point ranged 0.71-0.90 (5th-95th percentile).
DEFAULT_THRESHOLD = 0.82
CALIBRATED_GALLERY_SIZE = 25_000
CALIBRATED_TEMPLATE = "mean"
CALIBRATED_FALSE_MATCH_TARGET = 1e-3
