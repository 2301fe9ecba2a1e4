"""FaceModels: detect (YuNet), gate, align and embed (SFace) on OpenCV DNN.

The device and the cloud gallery builder both use this class, so a face is embedded
the same way on both sides. Models are loaded from the exact bytes whose sha256 was
checked (models/weights.py): what was verified is what runs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from models import weights
from models.faces import Face
from models.quality import DEFAULT_POLICY, QualityPolicy, assess
from models.scoring import template_vector
from models.weights import ModelFileError

__all__ = ["FaceModels", "ModelFileError"]

# Photos larger than this (long side) are downscaled for detection; coordinates are
# mapped back. 1280 keeps a 720p frame at full resolution, where distant faces are small.
DETECT_MAX_SIDE = 1280
# YuNet finds faces of roughly 10 to 300 px. A photo whose face fills the frame (a
# 150 px chip with no margin, a close portrait) is retried padded and smaller.
RETRY_SIDE = 480
# Faces larger than this in the detector's input get low scores and loose boxes
# (measured: a 550 px face scored 0.69, the same face at 140 px 0.95); they are
# re-detected on a copy scaled so the face is about TARGET_FACE_PX.
LARGE_FACE_PX = 300
TARGET_FACE_PX = 160
PAD_FRACTION = 0.5
DETECT_SCORE = 0.6  # the gate applies the stricter limit; low-score detections are reported as rejected
NMS_THRESHOLD = 0.3
TOP_K = 5000


class FaceModels:
    """The pinned detector and embedder, ready to run. Create with ``FaceModels.load()``."""

    def __init__(self, detector, recognizer, detector_ref: dict, embedder_ref: dict, paths: dict[str, Path]):
        self._detector = detector
        self._recognizer = recognizer
        self.detector_ref = detector_ref
        self.embedder_ref = embedder_ref
        self.paths = paths
        self.dimension = weights.EMBEDDING_DIM

    @classmethod
    def load(cls, cache_dir: Path | None = None) -> FaceModels:
        """Verify both files against their pinned sha256 and load them; raises ``ModelFileError``.

        Also limits numpy's BLAS to one thread for the process: its threads spin after each
        matrix product and took the cores from OpenCV's, making detect, embed and a
        25,000-person search 1.8x slower per frame on 2 cores (benchmarks/bench_blas_threads.py).
        The products that run beside the models (faces against a gallery) are small.
        """
        threadpool_limits(limits=1, user_api="blas")
        detector_path, detector_bytes = weights.detector_bytes()
        embedder_path, embedder_bytes = weights.embedder_bytes(cache_dir)
        # OpenCV 5 warns "Targets are not supported by the new graph engine" at every
        # create; it is harmless and would bury real messages.
        previous_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            detector = cv2.FaceDetectorYN.create(
                "onnx",
                np.frombuffer(detector_bytes, np.uint8),
                np.empty(0, np.uint8),
                (320, 320),
                DETECT_SCORE,
                NMS_THRESHOLD,
                TOP_K,
            )
            recognizer = cv2.FaceRecognizerSF.create(
                "onnx", np.frombuffer(embedder_bytes, np.uint8), np.empty(0, np.uint8)
            )
        except cv2.error as error:
            raise ModelFileError(f"OpenCV {cv2.__version__} cannot load the pinned models: {error}") from None
        finally:
            cv2.utils.logging.setLogLevel(previous_level)
        return cls(
            detector,
            recognizer,
            detector_ref={"id": weights.DETECTOR.model_id, "sha256": weights.DETECTOR.sha256},
            embedder_ref={"id": weights.EMBEDDER.model_id, "sha256": weights.EMBEDDER_CLEAN_SHA256},
            paths={"detector": detector_path, "embedder": embedder_path},
        )

    # --- detection -----------------------------------------------------------------

    def detect(self, image: np.ndarray, thorough: bool = False) -> list[Face]:
        """Every face with box, five landmarks and score, in ``image``'s coordinates.

        ``thorough`` (for photos, not video frames) retries padded and smaller when
        nothing is found, so face chips and close portraits are found too.
        """
        image = as_bgr(image)
        height, width = image.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        faces = self._detect_scaled(image, scale, pad=0)
        largest = max((max(face.box[2], face.box[3]) * scale for face in faces), default=0.0)
        if largest > LARGE_FACE_PX:
            faces = self._redetect_large(image, faces, scale * TARGET_FACE_PX / largest)
        if faces or not thorough:
            return faces
        pad = int(PAD_FRACTION * max(height, width))
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        for side in (RETRY_SIDE, RETRY_SIDE // 2):
            faces = self._detect_scaled(padded, side / max(padded.shape[:2]), pad=pad)
            if faces:
                return [face for face in faces if _inside(face, width, height)]
        return []

    def _redetect_large(self, image: np.ndarray, faces: list[Face], scale: float) -> list[Face]:
        """Large faces from a smaller copy, plus the small faces the first pass found."""
        large = [face for face in self._detect_scaled(image, scale, pad=0) if max(face.box[2:]) * scale > 40]
        small = [face for face in faces if all(_iou(face.box, other.box) < 0.3 for other in large)]
        return sorted(large + small, key=lambda face: face.score, reverse=True)

    def _detect_scaled(self, image: np.ndarray, scale: float, pad: int) -> list[Face]:
        if scale != 1.0:
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            work = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation)
        else:
            work = image
        self._detector.setInputSize((work.shape[1], work.shape[0]))
        _, rows = self._detector.detect(work)
        if rows is None:
            return []
        faces = []
        for row in rows:
            values = row[:14].astype(np.float32) / scale
            values[0] -= pad
            values[1] -= pad
            landmarks = values[4:14].reshape(5, 2) - pad
            faces.append(Face(box=tuple(float(v) for v in values[:4]), landmarks=landmarks, score=float(row[14])))
        faces.sort(key=lambda face: face.score, reverse=True)
        return faces

    # --- quality, alignment, embedding --------------------------------------------

    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The 112x112 BGR crop SFace expects, rotated and scaled from the landmarks."""
        return self._recognizer.alignCrop(as_bgr(image), face.as_yunet_row())

    def gate(self, faces: list[Face], image: np.ndarray, policy: QualityPolicy = DEFAULT_POLICY) -> list[Face]:
        """Set ``quality`` and ``rejected`` on every face; returns the same faces."""
        image = as_bgr(image)
        for face in faces:
            assess(face, self.align(image, face), policy)
        return faces

    def embed_aligned(self, aligned: np.ndarray) -> np.ndarray:
        feature = self._recognizer.feature(aligned).reshape(-1).astype(np.float32)
        norm = float(np.linalg.norm(feature))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("the embedder returned a zero or non-finite vector")
        return feature / norm

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """128-d float32 L2-normalised embedding of ``face`` (cosine = dot product)."""
        return self.embed_aligned(self.align(image, face))

    def embed_template(self, image: np.ndarray, face: Face) -> np.ndarray:
        """A gallery photo's template: the face and its mirror image embedded and averaged
        (models.scoring.template_vector). Twice the embedding cost, paid once in the builder;
        probes on the device are embedded once (``embed``)."""
        aligned = self.align(image, face)
        return template_vector(self.embed_aligned(aligned), self.embed_aligned(cv2.flip(aligned, 1)))


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Accept BGR, grayscale or BGRA uint8 arrays; anything else is a clear ``ValueError``."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy image, got {type(image).__name__} {getattr(image, 'dtype', '')}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"expected an image of shape (h, w), (h, w, 3) or (h, w, 4), got {image.shape}")


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    overlap_w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    overlap_h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    overlap = overlap_w * overlap_h
    union = aw * ah + bw * bh - overlap
    return overlap / union if union > 0 else 0.0


def _inside(face: Face, width: int, height: int) -> bool:
    """A face found in padding must overlap the real image (replicated borders can echo one)."""
    x, y, w, h = face.box
    cx, cy = x + w / 2, y + h / 2
    return 0 <= cx < width and 0 <= cy < height
