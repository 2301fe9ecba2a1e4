"""The quality gate: which detected faces are good enough to embed and search.

A bad crop (tiny, blurred, turned away) gives an embedding that lands anywhere,
which is how a stranger scores high. The gate refuses such faces and records why.
Measures come from the box, the five landmarks and the aligned 112x112 crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from models.faces import Face


@dataclass(frozen=True)
class QualityPolicy:
    """Limits a face must meet.

    Starting limits, checked against the shared real photos rather than tuned on them:
    of 288 faces detected in gallery/ photos they refuse 8 profile views and 6
    low-score detections (gallery sharpness: 1st percentile 71, so 25 refuses no
    portrait); in group/ they refuse 174 faces under 32 px of 457.
    """

    min_face_px: float = 32.0  # shorter side of the box; SFace aligns to 112 px
    min_score: float = 0.75  # YuNet confidence
    min_sharpness: float = 25.0  # variance of the Laplacian on the aligned grey crop
    max_yaw: float = 0.45  # nose offset from the eye midpoint, in eye distances
    max_roll_deg: float = 40.0  # eye-line angle (alignment removes roll, but extreme roll is rare and odd)
    pitch_range: tuple[float, float] = (0.15, 0.85)  # nose height between eye and mouth lines


DEFAULT_POLICY = QualityPolicy()
# Video frames: the same limits without the blur check. A camera's frames are softer than
# photos (focus, motion, compression); refusing those below sharpness 25 left 17% of the
# people walking past a camera never searched at all, and searching them (fused with the
# track's other frames, against a threshold calibrated on such tracks) confirmed 76% of
# gallery people within 2 s instead of 67% at 1,000 persons, with no stranger confirmed
# (benchmarks/bench_tracks.py, docs/recognition.md).
FRAME_POLICY = QualityPolicy(min_sharpness=0.0)


def pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll_deg) estimated from the five landmarks; (0, 0.5, 0) is frontal."""
    # Plain floats, not numpy: ten numbers, and this runs for every face the device embeds
    # (right after a model call, numpy's per-call overhead made it 0.12 ms; this takes 0.045).
    (ax, ay), (bx, by), (nx, ny), (max_, may), (mbx, mby) = np.asarray(landmarks, np.float64).tolist()
    eye_mid_x, eye_mid_y = (ax + bx) / 2, (ay + by) / 2
    mouth_mid_x, mouth_mid_y = (max_ + mbx) / 2, (may + mby) / 2
    eye_x, eye_y = bx - ax, by - ay
    eye_distance = math.hypot(eye_x, eye_y) or 1e-6
    roll = math.degrees(math.atan2(eye_y, eye_x))
    # Work in the face's own frame so that roll does not look like yaw.
    axis_x = (eye_x / eye_distance, eye_y / eye_distance)
    axis_y = (-axis_x[1], axis_x[0])
    nose_x, nose_y = nx - eye_mid_x, ny - eye_mid_y
    yaw = (nose_x * axis_x[0] + nose_y * axis_x[1]) / eye_distance
    eye_to_mouth = ((mouth_mid_x - eye_mid_x) * axis_y[0] + (mouth_mid_y - eye_mid_y) * axis_y[1]) or 1e-6
    pitch = (nose_x * axis_y[0] + nose_y * axis_y[1]) / eye_to_mouth
    return yaw, pitch, roll


def sharpness(aligned_bgr: np.ndarray) -> float:
    """Variance of the Laplacian over the aligned crop: low means blurred."""
    gray = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2GRAY)
    # int16 holds an 8-bit image's Laplacian exactly; OpenCV's meanStdDev takes one pass where
    # numpy's var took several over a float64 copy (0.18 -> 0.08 ms right after a model call).
    _, std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))
    return float(std[0, 0]) ** 2


def assess(face: Face, aligned_bgr: np.ndarray, policy: QualityPolicy = DEFAULT_POLICY) -> None:
    """Fill ``face.quality`` and set ``face.rejected`` to the first failed check (or None)."""
    yaw, pitch, roll = pose(face.landmarks)
    size = float(min(face.box[2], face.box[3]))
    sharp = sharpness(aligned_bgr)
    face.quality = {
        "size_px": round(size, 1),
        "score": round(float(face.score), 3),
        "sharpness": round(sharp, 1),
        "yaw": round(yaw, 3),
        "pitch": round(pitch, 3),
        "roll_deg": round(roll, 1),
    }
    reasons = []
    if size < policy.min_face_px:
        reasons.append(f"too small ({size:.0f} px < {policy.min_face_px:.0f})")
    if face.score < policy.min_score:
        reasons.append(f"low detector score ({face.score:.2f} < {policy.min_score:.2f})")
    if abs(yaw) > policy.max_yaw:
        reasons.append(f"turned sideways (yaw {yaw:+.2f}, limit {policy.max_yaw:.2f})")
    if not policy.pitch_range[0] <= pitch <= policy.pitch_range[1]:
        reasons.append(f"tilted up or down (pitch {pitch:.2f} outside {policy.pitch_range})")
    if abs(roll) > policy.max_roll_deg:
        reasons.append(f"head rolled {roll:+.0f} degrees (limit {policy.max_roll_deg:.0f})")
    if sharp < policy.min_sharpness:
        reasons.append(f"blurred (sharpness {sharp:.0f} < {policy.min_sharpness:.0f})")
    face.rejected = "; ".join(reasons) or None
    face.quality["passed"] = face.rejected is None
