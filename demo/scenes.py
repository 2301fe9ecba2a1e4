"""Synthetic camera scenes from real face photos, with ground truth.

Each actor is a face cut from a photo (found with the pinned detector, feathered
edges) that walks across a background while its size, light and sharpness change;
strangers are simply actors whose identity is not in the gallery. The result is a
video file plus ground truth: who is visible in which frames, and where.

    from demo.scenes import Actor, make_scene, walk
    truth = make_scene(
        [walk("photos/anna/2.jpg", "anna", enter_s=1.0, seconds=3.0),
         walk("photos/stranger.jpg", "stranger-1", enter_s=2.0, seconds=2.5, direction=-1)],
        out="scene.avi", seconds=6.0,
    )
    truth.appearances()     # {"anna": (15, 59), "stranger-1": (30, 67)} first/last frame
    truth.save("scene.json")

``.avi`` is written as MJPEG (sharp, fast to decode), ``.mp4`` as MPEG-4 part 2.
Nothing here is private: use photos you may use (the demo uses package sample photos).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

FOURCC = {".avi": "MJPG", ".mp4": "mp4v"}
CUTOUT_MARGIN = 0.6  # around the face box, so hair and chin come along


@dataclass
class Actor:
    """One face moving through the scene. Positions are fractions of the frame (face centre)."""

    photo: Path | str
    identity: str
    enter_s: float
    exit_s: float
    start: tuple[float, float] = (0.15, 0.45)
    end: tuple[float, float] = (0.85, 0.5)
    face_px: tuple[float, float] = (90.0, 120.0)  # face box height at entry and exit
    light: tuple[float, float] = (1.0, 1.0)  # brightness gain at entry and exit
    blur_px: float = 0.0  # motion blur length in the middle third of the walk (0 = sharp)
    defocus_px: float = 0.0  # Gaussian blur (sigma, px at the drawn size) for the whole walk: focus, distance


@dataclass
class SceneTruth:
    fps: float
    size: tuple[int, int]
    frames: int
    video: str
    actors: list[dict] = field(default_factory=list)
    # frame -> [(identity, x, y, w, h)] of the faces drawn in it (face box, not the cutout)
    boxes: dict[int, list[tuple[str, float, float, float, float]]] = field(default_factory=dict)

    def appearances(self) -> dict[str, tuple[int, int]]:
        """identity -> (first frame, last frame) in which that face is visible."""
        spans: dict[str, tuple[int, int]] = {}
        for frame in sorted(self.boxes):
            for identity, *_ in self.boxes[frame]:
                first, _ = spans.get(identity, (frame, frame))
                spans[identity] = (first, frame)
        return spans

    def save(self, path: Path | str) -> None:
        data = asdict(self)
        data["boxes"] = {str(k): v for k, v in self.boxes.items()}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path | str) -> SceneTruth:
        data = json.loads(Path(path).read_text())
        data["boxes"] = {int(k): [tuple(b) for b in v] for k, v in data["boxes"].items()}
        data["size"] = tuple(data["size"])
        return cls(**data)


def walk(
    photo: Path | str,
    identity: str,
    enter_s: float,
    seconds: float,
    direction: int = 1,
    height: float = 0.45,
    face_px: tuple[float, float] = (90.0, 120.0),
    light: tuple[float, float] = (1.0, 1.0),
    blur_px: float = 0.0,
    defocus_px: float = 0.0,
) -> Actor:
    """An actor crossing the frame left to right (``direction=1``) or right to left (-1)."""
    start, end = (0.18, height), (0.82, height + 0.05)
    if direction < 0:
        start, end = end, start
    return Actor(photo, identity, enter_s, enter_s + seconds, start, end, face_px, light, blur_px, defocus_px)


@dataclass
class _Cutout:
    image: np.ndarray  # BGR
    alpha: np.ndarray  # float32 0..1
    face_box: tuple[float, float, float, float]  # within the cutout


def cut_face(photo: np.ndarray, models) -> _Cutout:
    """The most prominent face of ``photo`` with a margin and a feathered elliptical mask."""
    faces = models.detect(photo, thorough=True)
    if not faces:
        raise ValueError("no face found in the photo")
    face = max(faces, key=lambda f: f.area * f.score)
    x, y, w, h = face.box
    side = max(w, h) * (1 + 2 * CUTOUT_MARGIN)
    cx, cy = x + w / 2, y + h / 2
    pad = int(side)
    padded = cv2.copyMakeBorder(photo, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    x0, y0 = int(cx - side / 2) + pad, int(cy - side / 2) + pad
    image = padded[y0 : y0 + int(side), x0 : x0 + int(side)].copy()
    n = image.shape[0]
    alpha = np.zeros(image.shape[:2], np.float32)
    cv2.ellipse(alpha, (n // 2, int(n * 0.52)), (int(n * 0.36), int(n * 0.46)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), n * 0.05)
    face_box = (x + pad - x0, y + pad - y0, w, h)
    return _Cutout(image, alpha, face_box)


def default_background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A plain indoor-looking wall: gradient, a few dark and light panels, sensor-like texture."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.75, 1.0, width, dtype=np.float32)[None, :] * np.linspace(1.0, 0.8, height)[:, None]
    base = np.array(rng.uniform(90, 170, 3), np.float32)
    image = ramp[..., None] * base[None, None, :]
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        x1, y1 = x0 + rng.integers(30, width // 3), y0 + rng.integers(30, height // 2)
        image[y0:y1, x0:x1] *= rng.uniform(0.6, 1.3)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _motion_blur(image: np.ndarray, length: float) -> np.ndarray:
    k = max(1, int(round(length)))
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0 / k
    return cv2.filter2D(image, -1, kernel)


def _paste(
    frame: np.ndarray,
    cutout: _Cutout,
    centre: tuple[float, float],
    face_px: float,
    gain: float,
    blur: float,
    defocus: float = 0.0,
):
    """Composite the cutout scaled so its face is ``face_px`` high; returns the face box drawn."""
    scale = face_px / cutout.face_box[3]
    size = max(8, int(round(cutout.image.shape[0] * scale)))
    image = cv2.resize(cutout.image, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    alpha = cv2.resize(cutout.alpha, (size, size), interpolation=cv2.INTER_LINEAR)
    image = np.clip(image.astype(np.float32) * gain, 0, 255)
    if blur > 0:
        image = _motion_blur(image, blur)
    if defocus > 0:
        image = cv2.GaussianBlur(image, (0, 0), defocus)
    fx, fy, fw, fh = (v * scale for v in cutout.face_box)
    # Place the cutout so the face centre lands on ``centre``.
    x0 = int(round(centre[0] - (fx + fw / 2)))
    y0 = int(round(centre[1] - (fy + fh / 2)))
    height, width = frame.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x0 + size), min(height, y0 + size)
    if cx0 >= cx1 or cy0 >= cy1:
        return None
    region = frame[cy0:cy1, cx0:cx1].astype(np.float32)
    a = alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
    src = image[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    frame[cy0:cy1, cx0:cx1] = (a * src + (1 - a) * region).astype(np.uint8)
    box = (x0 + fx, y0 + fy, fw, fh)
    visible = box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= width and box[1] + box[3] <= height
    return box if visible else None


def make_scene(
    actors: list[Actor],
    out: Path | str,
    seconds: float | None = None,
    size: tuple[int, int] = (640, 480),
    fps: float = 15.0,
    background: np.ndarray | Path | str | None = None,
    models=None,
    seed: int = 0,
    light_wave: float = 0.15,
    jpeg_quality: int | None = None,
) -> SceneTruth:
    """Render ``actors`` over ``background`` into the video ``out``; returns the ground truth.

    ``light_wave``: amplitude of a slow whole-frame brightness change (clouds, lamps).
    ``jpeg_quality``: each frame is JPEG-compressed at this quality first (a camera's encoder).
    ``models``: a loaded ``FaceModels`` (loaded here if None) used to find each photo's face.
    """
    from models.images import load_image

    out = Path(out)
    if out.suffix.lower() not in FOURCC:
        raise ValueError(f"video {out}: use .avi (MJPEG) or .mp4")
    if models is None:
        from models.recognizer import FaceModels

        models = FaceModels.load()
    width, height = size
    if background is None:
        back = default_background(size, seed)
    else:
        back = load_image(background) if isinstance(background, str | Path) else background
        back = cv2.resize(back, size, interpolation=cv2.INTER_AREA)
    cutouts = {}
    for actor in actors:
        key = str(actor.photo)
        if key not in cutouts:
            try:
                cutouts[key] = cut_face(load_image(actor.photo), models)
            except ValueError as error:
                raise ValueError(f"{actor.photo}: {error}") from None
    seconds = seconds if seconds is not None else max((a.exit_s for a in actors), default=1.0)
    frames = int(round(seconds * fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*FOURCC[out.suffix.lower()]), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {out}")
    rng = np.random.default_rng(seed)
    truth = SceneTruth(fps=fps, size=size, frames=frames, video=str(out))
    truth.actors = [
        {"identity": a.identity, "photo": Path(a.photo).name, "enter_s": a.enter_s, "exit_s": a.exit_s} for a in actors
    ]
    try:
        for index in range(frames):
            t = index / fps
            frame = back.copy()
            for actor in actors:
                if not actor.enter_s <= t < actor.exit_s:
                    continue
                u = (t - actor.enter_s) / max(1e-6, actor.exit_s - actor.enter_s)
                centre = (
                    (actor.start[0] + u * (actor.end[0] - actor.start[0])) * width,
                    (actor.start[1] + u * (actor.end[1] - actor.start[1])) * height,
                )
                face_px = actor.face_px[0] + u * (actor.face_px[1] - actor.face_px[0])
                gain = actor.light[0] + u * (actor.light[1] - actor.light[0])
                blur = actor.blur_px if 1 / 3 <= u < 2 / 3 else 0.0
                box = _paste(frame, cutouts[str(actor.photo)], centre, face_px, gain, blur, actor.defocus_px)
                if box is not None:
                    truth.boxes.setdefault(index, []).append((actor.identity, *(round(v, 1) for v in box)))
            light = 1.0 + light_wave * np.sin(2 * np.pi * t / 7.0)
            noisy = frame.astype(np.float32) * light + rng.normal(0, 3, frame.shape).astype(np.float32)
            frame = np.clip(noisy, 0, 255).astype(np.uint8)
            if jpeg_quality is not None:
                _, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                frame = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
            writer.write(frame)
    finally:
        writer.release()
    return truth
