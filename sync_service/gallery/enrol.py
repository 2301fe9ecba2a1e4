"""Enrolment: from a person's case photos to gallery vectors, and ``mpd gallery build --photos``.

Reusable pieces for any builder (the nightly store-based builder calls them too):

- ``photo_candidates``: every detected face in one photo with its template embedding
  (face and mirror image averaged) and the quality gate's measures.
- ``enrol_person``: choose the subject's face in each of a person's photos. A case
  photo may show family or bystanders: take the face consistent with the person's
  other photos, else the most central and largest; flag close calls as ambiguous.
- ``templates``: the rows a person contributes to the gallery (``TEMPLATE``).
- ``score_spec``: how devices score the gallery and its calibrated threshold (the one
  call a builder makes for a gallery's or a scope's threshold).
- ``EnrolReport``: photos with no face at all (the 2018 system found a face in 94% of
  NamUs photos), poor-quality photos enrolled anyway, ambiguous choices, unreadable files.

**Everyone with a detectable face is enrolled.** For most missing persons the case photo
is the only one there is, so the quality gate's verdict on it (sideways, blurred, low
detector score) is reported, not enforced: the face is enrolled and the photo listed as
poor so an operator can add a better one. Measured on 5,471 calibration photos: the 72
subjects the gate would refuse attract no more strangers as templates than the others
(docs/recognition.md), so they get the same threshold.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import click
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from edge_app.gallery.bundle import BundleError, ModelRef, PersonRow, ScoreSpec, write_bundle
from edge_app.gallery.search import choose_search, index_files
from models.faces import Face, layout_score
from models.images import ImageError, load_image
from models.quality import DEFAULT_POLICY
from models.recognizer import FaceModels
from models.scoring import shipped_cohort
from models.thresholds import calibrated_cohort_id, threshold_for_gallery

log = logging.getLogger(__name__)

# Measured with benchmarks/accuracy.py on the shared real photos (docs/recognition.md):
# rank-1 is equal (0.996), and at 1 false match per 1,000 strangers against 25,000
# persons neither template is measurably better (mean ahead in 19 of 40 random
# subsets of identities, median difference 0). One mean per person is kept: the
# bundle and the search are smaller, and a stranger meets one row per person.
TEMPLATE: Literal["per_photo", "mean"] = "mean"
# What a cached photo embedding is: builders key their embedding caches with it, so a change
# in how templates are made re-embeds instead of mixing old and new vectors.
TEMPLATE_EMBEDDING = "flipmean1"
# A face in a multi-face photo is "the person" if it resembles their other photos at
# least this much, and clearly more than the next face (same-person cosines of SFace
# are mostly above 0.4; different people mostly below 0.25 on the shared photos).
CONSISTENT_MIN = 0.35
CONSISTENT_MARGIN = 0.10
# Without other photos: the central-and-large score of the runner-up must stay
# below this share of the winner's, or the choice is listed as ambiguous.
LAYOUT_AMBIGUOUS_RATIO = 0.7
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class Candidate:
    face: Face
    vector: np.ndarray


@dataclass
class PhotoResult:
    """What enrolment made of one photo. ``vector`` is None when nothing was enrolled."""

    photo: str
    status: Literal["ok", "ambiguous", "no_face", "error"]
    vector: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    faces: int = 0
    reason: str = ""
    quality: str = ""  # the quality gate's objections to the enrolled face ("" = none)


@dataclass
class EnrolReport:
    photos: int = 0
    persons: int = 0
    persons_enrolled: int = 0
    no_usable_face: list[dict] = field(default_factory=list)  # no face detected at all
    poor_quality: list[dict] = field(default_factory=list)  # enrolled; a better photo would help
    ambiguous: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    @property
    def face_rate(self) -> float:
        """Share of readable photos where a face was enrolled."""
        readable = self.photos - len(self.errors)
        return (readable - len(self.no_usable_face)) / readable if readable else 0.0

    def add(self, person_id: str, result: PhotoResult) -> None:
        self.photos += 1
        entry = {"person_id": person_id, "photo": result.photo, "faces": result.faces, "reason": result.reason}
        if result.quality:
            self.poor_quality.append({**entry, "reason": result.quality})
        if result.status == "no_face":
            self.no_usable_face.append(entry)
        elif result.status == "ambiguous":
            self.ambiguous.append(entry)
        elif result.status == "error":
            self.errors.append(entry)

    def summary(self) -> dict:
        return {
            "photos": self.photos,
            "persons": self.persons,
            "persons_enrolled": self.persons_enrolled,
            "no_usable_face": len(self.no_usable_face),
            "poor_quality": len(self.poor_quality),
            "ambiguous": len(self.ambiguous),
            "errors": len(self.errors),
            "face_rate": round(self.face_rate, 4),
        }

    def as_dict(self) -> dict:
        return {"summary": self.summary(), **{k: v for k, v in asdict(self).items() if isinstance(v, list)}}


def photo_candidates(models: FaceModels, image: np.ndarray) -> tuple[list[Candidate], list[Face]]:
    """(every detected face with its template embedding, the same faces) for one photo.

    The gate runs for its measures and verdict (``face.quality``, ``face.rejected``), which
    the report carries; it does not remove faces (see the module docstring). Only when the
    photo also holds a confidently detected face are low-score detections (often not faces
    at all) left out of the choice."""
    faces = models.gate(models.detect(image, thorough=True), image)
    confident = [face for face in faces if face.score >= DEFAULT_POLICY.min_score]
    return [Candidate(face, models.embed_template(image, face)) for face in confident or faces], faces


def choose_subject(
    candidates: list[Candidate], image_size: tuple[int, int], reference: np.ndarray | None
) -> tuple[int, str | None]:
    """Index of the subject's face and, when the choice is a close call, why."""
    if len(candidates) == 1:
        return 0, None
    if reference is not None:
        similarities = np.array([float(c.vector @ reference) for c in candidates])
        order = np.argsort(-similarities)
        best, second = similarities[order[0]], similarities[order[1]]
        if best >= CONSISTENT_MIN and best - second >= CONSISTENT_MARGIN:
            return int(order[0]), None
        # Not clearly consistent with the other photos: fall back to layout, but say so.
        index, _ = choose_subject(candidates, image_size, None)
        return index, (
            f"{len(candidates)} faces; none clearly matches the person's other photos "
            f"(best {best:.2f}, next {second:.2f}); took the most central and largest"
        )
    width, height = image_size
    scores = np.array([layout_score(c.face, width, height) for c in candidates])
    order = np.argsort(-scores)
    if scores[order[1]] >= LAYOUT_AMBIGUOUS_RATIO * scores[order[0]]:
        return int(order[0]), f"{len(candidates)} faces of similar size and position; took the most central and largest"
    return int(order[0]), None


def choose_subjects(photos: list[tuple[list[Candidate], tuple[int, int]]]) -> list[tuple[int, str]]:
    """``choose_subject`` for each of one person's photos (candidates, (width, height)),
    with the photos that show a single usable face defining what the person looks like."""
    singles = [candidates[0].vector for candidates, _ in photos if len(candidates) == 1]
    reference = _unit(np.mean(singles, axis=0)) if singles else None
    return [choose_subject(candidates, size, reference) for candidates, size in photos]


def enrol_person(models: FaceModels, photos: list[Path | str], images: dict | None = None) -> list[PhotoResult]:
    """Choose and embed the subject's face in each of one person's photos.

    ``images`` may map a photo to already-decoded BGR pixels or bytes (a store-based
    builder reads photos from S3); otherwise photos are read from disk.
    """
    decoded: dict[str, tuple[list[Candidate], list[Face], tuple[int, int]]] = {}
    results: dict[str, PhotoResult] = {}
    for photo in photos:
        name = str(photo)
        try:
            source = (images or {}).get(photo, photo)
            image = source if isinstance(source, np.ndarray) else load_image(source)
            usable, faces = photo_candidates(models, image)
        except ImageError as error:
            results[name] = PhotoResult(name, "error", reason=str(error))
            continue
        except Exception as error:  # noqa: BLE001 - one bad photo must not stop a gallery build
            results[name] = PhotoResult(name, "error", reason=f"{type(error).__name__}: {error}")
            continue
        if not usable:
            results[name] = PhotoResult(name, "no_face", faces=0, reason="no face found")
            continue
        decoded[name] = (usable, faces, (image.shape[1], image.shape[0]))
    choices = choose_subjects([(usable, size) for usable, _, size in decoded.values()])
    for (name, (usable, faces, _)), (index, doubt) in zip(decoded.items(), choices, strict=True):
        chosen = usable[index]
        results[name] = PhotoResult(
            name,
            "ambiguous" if doubt else "ok",
            vector=chosen.vector,
            box=tuple(round(v, 1) for v in chosen.face.box),
            faces=len(faces),
            reason=doubt or "",
            quality=chosen.face.rejected or "",
        )
    return [results[str(photo)] for photo in photos]


def templates(vectors: list[np.ndarray], template: str = TEMPLATE) -> np.ndarray:
    """The gallery rows for one person: each photo's vector, or their normalised mean."""
    stacked = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if template == "mean" and len(stacked):
        return _unit(stacked.mean(axis=0))[None, :]
    return stacked


# The normalised tails a gallery's thresholds come from, and the command that measures each.
CALIBRATION_COMMANDS = {
    "snorm": "benchmarks/calibrate.py --write",
    "track": "benchmarks/bench_tracks.py --write",
}


def score_spec(persons: int) -> ScoreSpec:
    """How devices score a gallery of ``persons`` built with this code: S-norm against the
    shipped cohort, with the thresholds calibrated for that many persons (a scope's own size
    for a regional gallery), for photos and for video tracks. Goes into the manifest as ``score``."""
    cohort = shipped_cohort()
    for kind, command in CALIBRATION_COMMANDS.items():
        calibrated = calibrated_cohort_id(kind)
        if calibrated != cohort.id:
            measured = f"was calibrated with {calibrated}" if calibrated else "has none"
            raise BundleError(
                f"models/cohort.npz is {cohort.id}, but the {kind} tail in models/impostor_tail.json {measured}; "
                f"rerun {command}"
            )
    return ScoreSpec(
        kind="snorm",
        cohort=cohort.id,
        threshold=threshold_for_gallery(persons, score="snorm"),
        track_threshold=threshold_for_gallery(persons, score="track"),
    )


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


# --- mpd gallery build --photos -----------------------------------------------------------


class PersonInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    display_name: str = Field(default="", max_length=200)
    source: str = Field(default="local", max_length=64)
    case_id: str = Field(default="", max_length=128)


PERSONS_FILE = "persons.json"
REPORT_FILE = "enrol_report.json"


def read_persons_file(photos_dir: Path) -> dict[str, PersonInfo]:
    path = photos_dir / PERSONS_FILE
    if not path.is_file():
        return {}
    try:
        return TypeAdapter(dict[str, PersonInfo]).validate_json(path.read_bytes())
    except ValidationError as error:
        raise click.ClickException(f"{path}: invalid persons file: {error}") from None


def person_photos(photos_dir: Path) -> dict[str, list[Path]]:
    """``<person_id>/<photo>`` under ``photos_dir``, sorted; hidden files are skipped."""
    people: dict[str, list[Path]] = {}
    for person_dir in sorted(p for p in photos_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(p for p in person_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        people[person_dir.name] = photos
    return people


def build_gallery(
    models: FaceModels,
    people: dict[str, list[Path]],
    infos: dict[str, PersonInfo],
    template: str = TEMPLATE,
    progress: bool = True,
) -> tuple[np.ndarray, list[str], list[PersonRow], EnrolReport]:
    from tqdm import tqdm

    report = EnrolReport(persons=len(people))
    rows: list[np.ndarray] = []
    labels: list[str] = []
    persons: list[PersonRow] = []
    for person_id, photos in tqdm(
        people.items(), desc="persons", unit="person", disable=None if progress else True, file=sys.stderr
    ):
        results = enrol_person(models, photos)
        for result in results:
            report.add(person_id, result)
        vectors = [r.vector for r in results if r.vector is not None]
        if not vectors:
            continue
        info = infos.get(person_id, PersonInfo())
        try:
            persons.append(PersonRow(person_id=person_id, **info.model_dump()))
        except ValidationError as error:
            report.errors.append({"person_id": person_id, "photo": "", "faces": 0, "reason": str(error)})
            continue
        person_rows = templates(vectors, template)
        rows.extend(person_rows)
        labels.extend([person_id] * len(person_rows))
        report.persons_enrolled += 1
    vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), models.dimension)
    return vectors, labels, persons, report


def _signer():
    """Sign when a key is configured; an unsigned bundle is for local use only."""
    from sync_service.gallery.signing import SigningKeyError, load_private_key, signer

    try:
        return signer(load_private_key())
    except SigningKeyError as error:
        click.echo(f"warning: bundle left unsigned ({error}); devices requiring signatures will refuse it", err=True)
        return None


def build_from_photos_command(photos_dir: Path, out_dir: Path) -> None:
    """``mpd gallery build --photos DIR --out BUNDLE``: enrol every person and write a bundle."""
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    if (out_dir / "manifest.json").exists():
        raise click.ClickException(f"{out_dir} already holds a bundle; choose a new --out folder")
    infos = read_persons_file(photos_dir)
    people = person_photos(photos_dir)
    if not people:
        raise click.ClickException(f"{photos_dir}: no <person_id>/ folders with photos")
    models = FaceModels.load()
    vectors, labels, persons, report = build_gallery(models, people, infos)
    if not labels:
        raise click.ClickException(f"{photos_dir}: no usable face in any photo; nothing to build")
    search = choose_search(len(labels))
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        manifest = write_bundle(
            out_dir,
            manifest_fields={
                "gallery_version": version,
                "detector": ModelRef(**models.detector_ref),
                "embedder": ModelRef(**models.embedder_ref),
                "template": TEMPLATE,
                "search": search,
                "score": score_spec(len(persons)),
                "notes": {"built_from": "photos", "enrolment": report.summary()},
            },
            vectors=vectors,
            labels=labels,
            persons=persons,
            extra_files=index_files(vectors, search),
            sign=_signer(),
        )
    except BundleError as error:
        raise click.ClickException(str(error)) from None
    # The full report lists local file names; it stays beside the bundle, not in it.
    (out_dir / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2))
    click.echo(
        json.dumps({"bundle": str(out_dir), "gallery_version": manifest.gallery_version, **report.summary()}),
    )
    for entry in report.no_usable_face:
        click.echo(f"no face found: {entry['photo']}", err=True)
    for entry in report.poor_quality:
        click.echo(f"enrolled, but a better photo would help: {entry['photo']} ({entry['reason']})", err=True)
    for entry in report.ambiguous:
        click.echo(f"ambiguous subject: {entry['photo']} ({entry['reason']})", err=True)
    for entry in report.errors:
        click.echo(f"unreadable: {entry['photo']} ({entry['reason']})", err=True)
