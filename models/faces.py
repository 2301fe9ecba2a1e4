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
