"""Every face of every photo in a labelled folder, embedded once and cached by model and photo hash.

The calibration (benchmarks/calibrate.py), the scale study (identification_at_scale.py)
and the tests read the same cache, so the ~5,500 calibration photos are detected and
embedded once per model (minutes on two cores), not once per study.

    from benchmarks.face_cache import load_faces
    table = load_faces(Path("../shared/data/lfw-calibration"))   # embeds what is not cached yet
    table.identities, table.photos, table.faces                   # see FaceTable

Layout of a labelled folder: ``<identity>/<photo>``. Photos are read in place, never
copied. The cache lives outside git: ``$MPD_CALIBRATION_CACHE`` or
``~/.cache/mpd/calibration/``, one ``.npz`` per (detector, embedder, pipeline version),
holding one entry per photo sha256. A photo whose bytes change is embedded again; a
damaged cache file is ignored and rebuilt.

For each photo every detected face is kept (not only the ones the quality gate passes),
with its box, landmarks, detector score, the gate's measures and verdict, the embedding
of the aligned crop and of its mirror image. The studies decide what to use.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.images import ImageError, load_image  # noqa: E402
from models.quality import assess  # noqa: E402

# Bump when detection, alignment or the stored fields change: old cache files are then unused.
PIPELINE_VERSION = 1
SHARED_DATA = Path(os.environ.get("MPD_SHARED_DATA", REPO.parent / "shared" / "data"))
LFW_CALIBRATION = SHARED_DATA / "lfw-calibration"
FACES = SHARED_DATA / "faces"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
QUALITY_FIELDS = ("size_px", "score", "sharpness", "yaw", "pitch", "roll_deg")
SAVE_EVERY = 400  # photos between cache writes: bounds the work lost to an interruption


def cache_dir() -> Path:
    return Path(os.environ.get("MPD_CALIBRATION_CACHE", Path.home() / ".cache" / "mpd" / "calibration"))


def cache_path(models) -> Path:
    key = f"{models.detector_ref['sha256'][:12]}-{models.embedder_ref['sha256'][:12]}-v{PIPELINE_VERSION}"
    return cache_dir() / f"faces-{key}.npz"


@dataclass
class FaceTable:
    """Photos and their faces, as flat arrays.

    Photos (index p): ``identities[p]``, ``paths[p]`` (relative to the folder),
    ``sizes[p]`` (width, height), ``first[p]``/``counts[p]`` (their faces' rows).
    Faces (index f): ``photo[f]``, ``boxes[f]`` (x, y, w, h), ``landmarks[f]`` (5, 2),
    ``quality[f]`` (QUALITY_FIELDS), ``passed[f]`` (the gate's verdict), ``vectors[f]``
    and ``flipped[f]`` (unit embeddings of the aligned crop and of its mirror).
    """

    root: Path
    identities: np.ndarray
    paths: np.ndarray
    sizes: np.ndarray
    first: np.ndarray
    counts: np.ndarray
    photo: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    quality: np.ndarray
    passed: np.ndarray
    vectors: np.ndarray
    flipped: np.ndarray

    def faces_of(self, p: int) -> range:
        return range(int(self.first[p]), int(self.first[p] + self.counts[p]))

    def quality_of(self, f: int) -> dict[str, float]:
        return dict(zip(QUALITY_FIELDS, (float(v) for v in self.quality[f]), strict=True))


def _photo_entry(models, data: bytes) -> dict[str, np.ndarray]:
    """Every detected face of one photo: geometry, gate measures, plain and mirrored embeddings."""
    try:
        image = load_image(data)
    except ImageError:
        return _empty_entry((0, 0))
    faces = models.detect(image, thorough=True)
    rows = {"boxes": [], "landmarks": [], "quality": [], "passed": [], "vectors": [], "flipped": []}
    for face in faces:
        aligned = models.align(image, face)
        assess(face, aligned)
        rows["boxes"].append(face.box)
        rows["landmarks"].append(face.landmarks)
        rows["quality"].append([face.quality[name] for name in QUALITY_FIELDS])
        rows["passed"].append(face.rejected is None)
        rows["vectors"].append(models.embed_aligned(aligned))
        rows["flipped"].append(models.embed_aligned(cv2.flip(aligned, 1)))
    entry = _empty_entry((image.shape[1], image.shape[0]))
    if faces:
        entry.update(
            boxes=np.asarray(rows["boxes"], np.float32),
            landmarks=np.asarray(rows["landmarks"], np.float32),
            quality=np.asarray(rows["quality"], np.float32),
            passed=np.asarray(rows["passed"], bool),
            vectors=np.asarray(rows["vectors"], np.float32),
            flipped=np.asarray(rows["flipped"], np.float32),
        )
    return entry


def _empty_entry(size: tuple[int, int]) -> dict[str, np.ndarray]:
    return {
        "size": np.asarray(size, np.int32),
        "boxes": np.zeros((0, 4), np.float32),
        "landmarks": np.zeros((0, 5, 2), np.float32),
        "quality": np.zeros((0, len(QUALITY_FIELDS)), np.float32),
        "passed": np.zeros(0, bool),
        "vectors": np.zeros((0, 128), np.float32),
        "flipped": np.zeros((0, 128), np.float32),
    }


def _read_cache(path: Path) -> dict[str, dict[str, np.ndarray]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        print(f"ignoring damaged cache {path}: {error}", file=sys.stderr)
        return {}
    ends = np.cumsum(arrays["counts"])
    entries = {}
    for i, sha in enumerate(arrays["shas"]):
        start, end = int(ends[i] - arrays["counts"][i]), int(ends[i])
        entries[str(sha)] = {
            "size": arrays["sizes"][i],
            **{
                name: arrays[name][start:end]
                for name in ("boxes", "landmarks", "quality", "passed", "vectors", "flipped")
            },
        }
    return entries


def _write_cache(path: Path, entries: dict[str, dict[str, np.ndarray]]) -> None:
    shas = sorted(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        shas=np.asarray(shas, dtype="<U64"),
        counts=np.asarray([len(entries[s]["vectors"]) for s in shas], np.int32),
        sizes=np.asarray([entries[s]["size"] for s in shas], np.int32).reshape(-1, 2),
        **{
            name: np.concatenate([entries[s][name] for s in shas]) if shas else np.zeros(0)
            for name in ("boxes", "landmarks", "quality", "passed", "vectors", "flipped")
        },
    )
    os.replace(tmp, path)


def labelled_photos(root: Path) -> list[tuple[str, Path]]:
    """(identity, photo) for ``root/<identity>/<photo>``, sorted; hidden entries skipped."""
    photos = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for photo in sorted(folder.iterdir()):
            if photo.suffix.lower() in IMAGE_SUFFIXES and not photo.name.startswith("."):
                photos.append((folder.name, photo))
    return photos


def is_cached(root: Path, models) -> bool:
    """Whether every photo of ``root`` is already in the cache for these models."""
    entries = _read_cache(cache_path(models))
    return all(hashlib.sha256(photo.read_bytes()).hexdigest() in entries for _, photo in labelled_photos(Path(root)))


def load_faces(
    root: Path, models=None, progress: bool = True, limit: int | None = None, only: list[Path] | None = None
) -> FaceTable:
    """The face table of ``root`` (a labelled folder; ``only`` these photos if given), embedding
    only photos not in the cache."""
    from tqdm import tqdm

    if models is None:
        from models.recognizer import FaceModels

        models = FaceModels.load()
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of labelled photos")
    photos = labelled_photos(root)[:limit]
    if only is not None:
        wanted = {Path(p) for p in only}
        photos = [(identity, photo) for identity, photo in photos if photo in wanted]
    path = cache_path(models)
    entries = _read_cache(path)
    shas = [hashlib.sha256(photo.read_bytes()).hexdigest() for _, photo in photos]
    todo = [(sha, photo) for sha, (_, photo) in zip(shas, photos, strict=True) if sha not in entries]
    if todo:
        started, done = time.perf_counter(), 0
        for sha, photo in tqdm(
            todo, desc=f"embedding {root.name}", unit="photo", disable=not progress, file=sys.stderr
        ):
            entries[sha] = _photo_entry(models, photo.read_bytes())
            done += 1
            if done % SAVE_EVERY == 0:
                _write_cache(path, entries)
        _write_cache(path, entries)
        print(f"embedded {done} photos in {time.perf_counter() - started:.0f} s -> {path}", file=sys.stderr)
    chosen = [entries[sha] for sha in shas]
    counts = np.asarray([len(e["vectors"]) for e in chosen], np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return FaceTable(
        root=root,
        identities=np.asarray([identity for identity, _ in photos]),
        paths=np.asarray([str(photo.relative_to(root)) for _, photo in photos]),
        sizes=np.asarray([e["size"] for e in chosen], np.int32).reshape(-1, 2),
        first=first,
        counts=counts,
        photo=np.repeat(np.arange(len(photos)), counts),
        boxes=np.concatenate([e["boxes"] for e in chosen]),
        landmarks=np.concatenate([e["landmarks"] for e in chosen]),
        quality=np.concatenate([e["quality"] for e in chosen]),
        passed=np.concatenate([e["passed"] for e in chosen]),
        vectors=np.concatenate([e["vectors"] for e in chosen]),
        flipped=np.concatenate([e["flipped"] for e in chosen]),
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Embed a labelled photo folder into the calibration cache.")
    parser.add_argument("root", type=Path, nargs="?", default=LFW_CALIBRATION)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    table = load_faces(args.root, limit=args.limit)
    print(
        f"{len(table.paths)} photos, {len(np.unique(table.identities))} identities, {len(table.vectors)} faces, "
        f"{int((table.counts == 0).sum())} photos without a face, {int(table.passed.sum())} faces pass the gate"
    )
