"""What a detected face is, shared by detection, the quality gate and embedding."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    """One detected face, in the original image's pixel coordinates.

    ``landmarks`` are five (x, y) points in YuNet/SFace order: right eye, left eye,
    nose tip, right mouth corner, left mouth corner (as seen in the image).
    """

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: np.ndarray  # shape (5, 2), float32
    score: float
    quality: dict[str, float | str | bool] = field(default_factory=dict)
    rejected: str | None = None  # why the quality gate refused it, or None

    def as_yunet_row(self) -> np.ndarray:
        """The 15-value row that ``cv2.FaceRecognizerSF.alignCrop`` expects."""
        x, y, w, h = self.box
        return np.array([x, y, w, h, *self.landmarks.reshape(-1), self.score], dtype=np.float32)

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])


def layout_score(face: Face, width: int, height: int) -> float:
    """Large and central scores high: the subject of a portrait or a press photo."""
    x, y, w, h = face.box
    centre_offset = np.hypot((x + w / 2) / width - 0.5, (y + h / 2) / height - 0.5) / np.hypot(0.5, 0.5)
    return float(np.sqrt(face.area / (width * height)) * (1.0 - 0.7 * centre_offset))


def subject_first(faces: list[Face], width: int, height: int, min_score: float) -> list[Face]:
    """The faces of one photo, its likely subject first: confident detections (``score`` at
    least ``min_score``) before doubtful ones, each by ``layout_score`` (enrolment's rule for
    a photo with no other photo of the person to compare with)."""
    return sorted(faces, key=lambda face: (face.score < min_score, -layout_score(face, width, height)))
