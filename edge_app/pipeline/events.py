"""From a confirmed track to the match event (edge_app/match_event.py) and its optional crop."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import cv2
import numpy as np

from edge_app.gallery.gallery import Gallery
from edge_app.match_event import MAX_CROP_BYTES, MatchEvent
from edge_app.pipeline.tracking import Box, Confirmation

CROP_MARGIN = 0.2  # context around the face box so a responder recognises the person


def face_crop(image: np.ndarray, box: Box, max_px: int) -> np.ndarray:
    """A small copy of the face region (never a view into the frame), at most ``max_px`` a side."""
    x, y, w, h = box
    mx, my = w * CROP_MARGIN, h * CROP_MARGIN
    height, width = image.shape[:2]
    x0, y0 = max(0, int(x - mx)), max(0, int(y - my))
    x1, y1 = min(width, int(x + w + mx)), min(height, int(y + h + my))
    region = image[y0:y1, x0:x1]
    if region.size == 0:
        return np.zeros((1, 1, 3), np.uint8)
    scale = min(1.0, max_px / max(region.shape[:2]))
    if scale < 1.0:
        return cv2.resize(region, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return region.copy()


def encode_crop(crop: np.ndarray, max_bytes: int = MAX_CROP_BYTES) -> str | None:
    """Base64 JPEG under ``max_bytes``: lower quality first, then a smaller size; None if impossible."""
    image = crop
    while min(image.shape[:2]) >= 16:
        for quality in (85, 70, 55, 40):
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(data) <= max_bytes:
                return base64.b64encode(data.tobytes()).decode()
        image = cv2.resize(image, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    return None


def build_event(
    confirmation: Confirmation,
    gallery: Gallery,
    device_id: str,
    camera_id: str,
    threshold: float,
    send_crop: bool,
) -> MatchEvent:
    track = confirmation.track
    person = gallery.person(confirmation.person_id)
    crop_b64 = None
    if send_crop and confirmation.person_id in track.best_crops:
        crop_b64 = encode_crop(track.best_crops[confirmation.person_id][1])
    return MatchEvent(
        device_id=device_id,
        camera_id=camera_id,
        person_id=person.person_id,
        source=person.source or "local",
        case_id=person.case_id or person.person_id,
        display_name=person.display_name,
        best_similarity=round(min(1.0, confirmation.best_similarity), 4),
        mean_similarity=round(min(1.0, confirmation.mean_similarity), 4),
        frames_used=confirmation.frames_used,
        first_seen=datetime.fromtimestamp(track.first_seen_wall, UTC),
        last_seen=datetime.fromtimestamp(track.last_seen_wall, UTC),
        gallery_version=gallery.version,
        model_id=gallery.model_id,
        threshold=threshold,
        crop_jpeg_b64=crop_b64,
    )
