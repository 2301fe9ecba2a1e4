"""``mpd identify --bundle BUNDLE [--threshold T] PATH...``: who is in these photos?

Prints one JSON line per image, with the threshold applied: without ``--threshold`` the
gallery's own (calibrated by its builder for its number of persons). Every detected face
gets an answer, ``match`` or ``unknown``: a single photo is often all there is, so the
quality gate's objections (sideways, blurred, small, low detector score) are reported in
``flags`` rather than refusing the face (measured: such faces reach a given score no more
often than others, docs/recognition.md). A file that cannot be used (not an image,
truncated, too large) gives an error line and the run goes on; the exit status is 1 if
any image failed, so scripts notice. For an unknown face no gallery person is named: a
stranger is not linked to anyone, even as "nearest".

Faces are listed with the photo's likely subject first (``"subject": true``): the largest,
most central confident face, the rule enrolment uses for a gallery photo. A photo of the
person with others beside them therefore answers for the person first; the others still
get their own answers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
import numpy as np

from edge_app.gallery.bundle import BundleError, ModelRef, load_bundle
from edge_app.gallery.gallery import Gallery
from models.faces import subject_first
from models.images import ImageError, load_image
from models.quality import DEFAULT_POLICY, assess
from models.recognizer import FaceModels
from models.weights import ModelFileError


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively in sorted order, hidden entries skipped."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(path).parts):
                    yield child
        else:
            yield path


def identify_image(models: FaceModels, gallery: Gallery, image: np.ndarray, threshold: float) -> list[dict]:
    """Detect, embed and search every face of one image (in one batch), subject first; the gate only flags."""
    height, width = image.shape[:2]
    faces = subject_first(models.detect(image, thorough=True), width, height, DEFAULT_POLICY.min_score)
    vectors = np.empty((0, models.dimension), np.float32)
    if faces:
        aligned = [models.align(image, face) for face in faces]  # once, for the gate and the embedding
        for face, crop in zip(faces, aligned, strict=True):
            assess(face, crop)
        vectors = np.stack([models.embed_aligned(crop) for crop in aligned])
    results = []
    for index, (face, matches) in enumerate(zip(faces, gallery.search(vectors, k=1), strict=True)):
        match = matches[0] if matches else None
        entry = {
            "subject": index == 0,
            "box": [round(float(v), 1) for v in face.box],
            "score": round(float(face.score), 3),
            "quality": face.quality,
            "flags": face.rejected or "",
            "decision": "unknown",
            "person_id": None,
            "similarity": None if match is None else round(match.similarity, 4),
        }
        if match is not None and match.similarity >= threshold:
            entry["decision"] = "match"
            entry["person_id"] = match.person_id
        results.append(entry)
    return results


def open_gallery(bundle: Path, models: FaceModels) -> Gallery:
    contents = load_bundle(bundle)
    if not contents.manifest.embedder_compatible(ModelRef(**models.embedder_ref)):
        raise BundleError(
            f"{bundle}: built with embedder {contents.manifest.embedder.id} ({contents.manifest.embedder.sha256}), "
            f"this device runs {models.embedder_ref['id']} ({models.embedder_ref['sha256']})"
        )
    return Gallery.from_bundle(contents)


@click.command("identify")
@click.option(
    "--bundle",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Gallery bundle folder.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(-1.0, 1.0),
    default=None,
    help="Score needed for a match [default: the bundle's own, calibrated for its number of persons, "
    "docs/recognition.md].",
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def identify_command(bundle: Path, threshold: float | None, paths: tuple[Path, ...]) -> None:
    """Identify faces in photos (files or folders) against a gallery bundle; one JSON line per image."""
    try:
        models = FaceModels.load()
        gallery = open_gallery(bundle, models)
    except (BundleError, ModelFileError) as error:
        raise click.ClickException(str(error)) from None
    if threshold is None:
        threshold = gallery.threshold
    failures = 0
    for path in expand_paths(paths):
        line: dict = {"image": str(path), "threshold": threshold}
        try:
            line["faces"] = identify_image(models, gallery, load_image(path), threshold)
        except ImageError as error:
            line["error"] = str(error)
        except Exception as error:  # noqa: BLE001 - one bad image must not end the run
            line["error"] = f"{path}: {type(error).__name__}: {error}"
        failures += "error" in line
        click.echo(json.dumps(line))
        sys.stdout.flush()
    if failures:
        click.echo(f"{failures} image(s) could not be processed", err=True)
        sys.exit(1)
