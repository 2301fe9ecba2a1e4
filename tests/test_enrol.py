"""Enrolment: subject choice in multi-face photos, templates, the no-face and poor-photo report, and
``mpd gallery build --photos`` end to end on real photos (read in place; test folders
hold symlinks to them, never copies)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_app.gallery.bundle import load_bundle
from edge_app.gallery.gallery import Gallery
from models.faces import Face, subject_first
from models.images import load_image
from models.recognizer import FaceModels
from models.thresholds import threshold_for_gallery
from sync_service.gallery.cli import gallery_group
from sync_service.gallery.enrol import Candidate, choose_subject, enrol_person, templates

PEOPLE = {"barack_obama": 4, "john_simm": 4, "katy_perry": 4, "matt_damon": 3}


@pytest.fixture(scope="module")
def face_models() -> FaceModels:
    return FaceModels.load()


def face_at(x: float, y: float, size: float) -> Face:
    return Face(box=(x, y, size, size), landmarks=np.zeros((5, 2), np.float32), score=0.9)


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def test_subject_is_the_face_consistent_with_other_photos_even_if_smaller():
    rng = np.random.default_rng(1)
    person, stranger = unit(rng.normal(size=128)), unit(rng.normal(size=128))
    candidates = [
        Candidate(face_at(400, 300, 300), stranger),  # big and central
        Candidate(face_at(20, 20, 60), unit(person + 0.3 * unit(rng.normal(size=128)))),
    ]
    index, doubt = choose_subject(candidates, (1000, 800), reference=person)
    assert index == 1 and doubt is None


def test_without_other_photos_the_central_largest_face_is_taken():
    vectors = [unit(v) for v in np.random.default_rng(2).normal(size=(2, 128))]
    candidates = [Candidate(face_at(10, 10, 80), vectors[0]), Candidate(face_at(420, 320, 200), vectors[1])]
    assert choose_subject(candidates, (1000, 800), reference=None) == (1, None)


def test_subject_first_orders_confident_faces_by_layout_then_doubtful_ones():
    corner = face_at(10, 10, 80)
    centre = face_at(420, 320, 200)
    doubtful = Face(box=(400, 300, 260, 260), landmarks=np.zeros((5, 2), np.float32), score=0.5)
    ordered = subject_first([corner, doubtful, centre], 1000, 800, min_score=0.7)
    assert ordered == [centre, corner, doubtful]
    assert subject_first([], 1000, 800, min_score=0.7) == []


def test_close_calls_are_flagged_ambiguous():
    vectors = [unit(v) for v in np.random.default_rng(3).normal(size=(3, 128))]
    lookalikes = [Candidate(face_at(300, 300, 150), vectors[0]), Candidate(face_at(550, 300, 150), vectors[1])]
    index, doubt = choose_subject(lookalikes, (1000, 800), reference=None)
    assert doubt and "similar size and position" in doubt
    # A reference that matches neither face: fall back to layout, and say so.
    index, doubt = choose_subject(lookalikes, (1000, 800), reference=vectors[2])
    assert doubt and "none clearly matches" in doubt


def test_mean_template_is_unit_length_and_per_photo_keeps_rows():
    vectors = [unit(v) for v in np.random.default_rng(4).normal(size=(3, 128))]
    mean = templates(vectors, "mean")
    assert mean.shape == (1, 128) and abs(np.linalg.norm(mean) - 1) < 1e-5
    assert templates(vectors, "per_photo").shape == (3, 128)


def test_subject_of_a_two_person_photo_follows_the_other_photos(face_models, faces_dir, tmp_path):
    # A "family photo": Obama (small, at the side) beside a larger Katy Perry. Obama's
    # other photos must make enrolment pick his face, not the bigger central one.
    obama = load_image(faces_dir / "gallery" / "barack_obama" / "1.jpg")
    other = load_image(faces_dir / "gallery" / "katy_perry" / "1.jpg")
    height = 600
    small = cv2.resize(obama, (int(obama.shape[1] * 300 / obama.shape[0]), 300))
    canvas_left = np.full((height, small.shape[1], 3), 127, np.uint8)
    canvas_left[150:450] = small
    big = cv2.resize(other, (int(other.shape[1] * height / other.shape[0]), height))
    composite = tmp_path / "family.png"
    cv2.imwrite(str(composite), np.hstack([canvas_left, big]))
    photos = [faces_dir / "gallery" / "barack_obama" / name for name in ("2.jpg", "3.jpg")] + [composite]
    results = enrol_person(face_models, photos)
    family = results[-1]
    assert family.faces >= 2 and family.status == "ok"
    assert family.box[0] < small.shape[1]  # the left (Obama) face
    assert float(family.vector @ results[0].vector) > 0.4


def test_unreadable_and_faceless_photos_are_reported_not_fatal(face_models, faces_dir, tmp_path):
    note = tmp_path / "note.jpg"
    note.write_text("not a photo")
    photos = [faces_dir / "noface" / "1.jpg", note, faces_dir / "gallery" / "matt_damon" / "1.jpg"]
    statuses = [r.status for r in enrol_person(face_models, photos)]
    assert statuses == ["no_face", "error", "ok"]


def test_a_poor_photo_is_enrolled_with_the_gates_objection_and_a_mirror_averaged_template(face_models, faces_dir):
    profile = faces_dir / "gallery" / "johnny_galecki" / "13.jpg"
    (result,) = enrol_person(face_models, [profile])
    assert result.status == "ok" and result.vector is not None and "turned sideways" in result.quality
    image = load_image(profile)
    (face,) = face_models.detect(image, thorough=True)
    plain = face_models.embed(image, face)
    assert 0.5 < float(plain @ result.vector) < 0.9999, "the template is the face and its mirror image averaged"


@pytest.fixture(scope="module")
def photo_tree(faces_dir, tmp_path_factory):
    """<person_id>/<photo> as symlinks to the shared photos, last photo of each held out."""
    root = tmp_path_factory.mktemp("photos")
    held_out = {}
    for person, count in PEOPLE.items():
        photos = sorted((faces_dir / "gallery" / person).glob("*.jpg"))[:count]
        (root / person).mkdir()
        for photo in photos[:-1]:
            (root / person / photo.name).symlink_to(photo)
        held_out[person] = photos[-1]
    (root / "nobody_visible").mkdir()
    (root / "nobody_visible" / "1.jpg").symlink_to(faces_dir / "noface" / "1.jpg")
    # The only photo is a profile view (yaw 0.92) the quality gate refuses: enrolled anyway.
    (root / "profile_only").mkdir()
    (root / "profile_only" / "13.jpg").symlink_to(faces_dir / "gallery" / "johnny_galecki" / "13.jpg")
    (root / "matt_damon" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    persons = {"barack_obama": {"display_name": "B. Obama", "source": "test", "case_id": "MP-1"}}
    (root / "persons.json").write_text(json.dumps(persons))
    return root, held_out


@pytest.fixture(scope="module")
def built_bundle(photo_tree, tmp_path_factory, face_models):
    root, _ = photo_tree
    out = tmp_path_factory.mktemp("bundle") / "gallery"
    result = CliRunner().invoke(gallery_group, ["build", "--photos", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_build_from_photos_writes_a_loadable_bundle_with_a_report(built_bundle, face_models):
    out, result = built_bundle
    summary = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["persons"] == 6 and summary["persons_enrolled"] == 5
    assert summary["no_usable_face"] == 1 and summary["errors"] == 1 and summary["poor_quality"] == 1
    assert "no face found: " in result.stderr and "nobody_visible/1.jpg" in result.stderr
    assert "broken.jpg" in result.stderr
    assert "a better photo would help: " in result.stderr and "profile_only/13.jpg (turned sideways" in result.stderr
    contents = load_bundle(out)
    manifest = contents.manifest
    assert manifest.template == "mean" and manifest.search.engine == "exact" and manifest.search.reason
    assert manifest.embedder.sha256 == face_models.embedder_ref["sha256"]
    assert manifest.counts == {"vectors": 5, "persons": 5} and "profile_only" in contents.persons
    assert manifest.format_version == 2 and manifest.score.kind == "snorm"
    assert manifest.score.threshold == threshold_for_gallery(5)
    assert contents.persons["barack_obama"].case_id == "MP-1"
    report = json.loads((out / "enrol_report.json").read_text())
    assert report["summary"]["face_rate"] == pytest.approx(summary["face_rate"])


def test_built_gallery_identifies_held_out_photos(built_bundle, photo_tree, face_models):
    out, _ = built_bundle
    _, held_out = photo_tree
    gallery = Gallery.from_bundle(load_bundle(out))
    for person, photo in held_out.items():
        image = load_image(photo)
        faces = [f for f in face_models.gate(face_models.detect(image, thorough=True), image) if not f.rejected]
        best = gallery.search(face_models.embed(image, faces[0]), k=1)[0][0]
        assert best.person_id == person, (photo, best)


def test_build_refuses_to_overwrite_a_bundle_and_bad_persons_file(built_bundle, photo_tree, tmp_path):
    out, _ = built_bundle
    root, _ = photo_tree
    again = CliRunner().invoke(gallery_group, ["build", "--photos", str(root), "--out", str(out)])
    assert again.exit_code != 0 and "already holds a bundle" in again.output
    bad = tmp_path / "bad"
    (bad / "someone").mkdir(parents=True)
    (bad / "persons.json").write_text('{"someone": {"phone": "555"}}')
    refused = CliRunner().invoke(gallery_group, ["build", "--photos", str(bad), "--out", str(tmp_path / "o")])
    assert refused.exit_code != 0 and "invalid persons file" in refused.output
