"""Face photos for the demo, taken only from images that installed packages ship.

Never real missing persons: the "missing person" of the demo is scikit-image's
astronaut photo (a public NASA portrait), the strangers are scikit-image's
cameraman and faces from its small LFW sample (25x25 px, upscaled: blurry, the way
distant passers-by look to a field camera).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DemoFace:
    name: str
    image: np.ndarray  # BGR uint8, a portrait containing one face


def _rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)


def missing_person() -> DemoFace:
    from skimage import data

    return DemoFace("astronaut", _rgb_to_bgr(data.astronaut()))


def strangers(count: int = 5, seed: int = 7) -> list[DemoFace]:
    """The cameraman plus ``count - 1`` distinct LFW sample faces, upscaled onto a plain surround."""
    from skimage import data

    faces = [DemoFace("cameraman", _rgb_to_bgr(data.camera()))]
    lfw = data.lfw_subset()[:100]  # the first 100 entries are faces, the rest are not
    picks = np.random.default_rng(seed).choice(len(lfw), size=max(count - 1, 0), replace=False)
    for index in picks:
        face = cv2.resize((lfw[index] * 255).astype(np.uint8), (120, 120), interpolation=cv2.INTER_CUBIC)
        portrait = np.full((220, 180), 128, np.uint8)
        portrait[40:160, 30:150] = face
        faces.append(DemoFace(f"passer-by-{int(index)}", _rgb_to_bgr(portrait)))
    return faces
