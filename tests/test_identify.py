"""``mpd identify`` on real photos: matches, unknowns, and per-image error lines for bad files."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_app.identify import identify_command
from models.images import load_image
from models.thresholds import DEFAULT_THRESHOLD, threshold_for_gallery
from sync_service.gallery.cli import gallery_group

ENROLLED = {
    "barack_obama": ["1.jpg", "2.jpg"],
    "katy_perry": ["1.jpg", "2.jpg", "3.jpg"],
    "kevin_sussman": ["1.jpg", "2.jpg", "3.jpg"],
}


def huge_png() -> bytes:
    """A PNG whose header claims 10000x10000 pixels (100 megapixels)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bundle(faces_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("enrol")
    for person, names in ENROLLED.items():
        (root / person).mkdir()
        for name in names:
            (root / person / name).symlink_to(faces_dir / "gallery" / person / name)
    out = tmp_path_factory.mktemp("bundle") / "g"
    result = CliRunner().invoke(gallery_group, ["build", "--photos", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def run(bundle, *paths, threshold=None):
    args = [
        "--bundle",
        str(bundle),
        *(["--threshold", str(threshold)] if threshold is not None else []),
        *map(str, paths),
    ]
    result = CliRunner().invoke(identify_command, args)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return result, lines


def test_enrolled_person_matches_and_stranger_is_unknown(bundle, faces_dir):
    obama = faces_dir / "gallery" / "barack_obama" / "3.jpg"
    stranger = faces_dir / "gallery" / "matt_damon" / "1.jpg"
    result, lines = run(bundle, obama, stranger, threshold=0.6)
    assert result.exit_code == 0, result.output
    assert [line["image"] for line in lines] == [str(obama), str(stranger)]
    match = lines[0]["faces"][0]
    assert match["decision"] == "match" and match["person_id"] == "barack_obama"
    assert match["similarity"] >= 0.6 and len(match["box"]) == 4 and match["quality"]["passed"] is True
    assert match["flags"] == ""
    unknown = lines[1]["faces"][0]
    assert unknown["decision"] == "unknown" and unknown["person_id"] is None and unknown["similarity"] < 0.6


def test_the_photos_subject_is_answered_first(bundle, faces_dir, tmp_path):
    # Kevin Sussman large and central, Barack Obama small in a corner. The detector ranks
    # Obama's face first; the answer lists the photo's subject first (enrolment's rule), so a
    # caller reading one answer per photo gets the person the photo is of. Both are answered.
    canvas = np.full((600, 800, 3), 127, np.uint8)
    subject = load_image(faces_dir / "gallery" / "kevin_sussman" / "8.jpg")
    other = load_image(faces_dir / "gallery" / "barack_obama" / "3.jpg")
    subject = cv2.resize(subject, (300, round(300 * subject.shape[0] / subject.shape[1])))[:600]
    other = cv2.resize(other, (160, round(160 * other.shape[0] / other.shape[1])))
    top = (600 - subject.shape[0]) // 2
    canvas[top : top + subject.shape[0], 250:550] = subject
    canvas[20 : 20 + other.shape[0], 20 : 20 + other.shape[1]] = other
    photo = tmp_path / "two.png"
    cv2.imwrite(str(photo), canvas)
    result, (line,) = run(bundle, photo)
    assert result.exit_code == 0, result.output
    assert [face["person_id"] for face in line["faces"]] == ["kevin_sussman", "barack_obama"]
    assert [face["subject"] for face in line["faces"]] == [True, False]


def test_threshold_option_changes_the_decision(bundle, faces_dir):
    obama = faces_dir / "gallery" / "barack_obama" / "3.jpg"
    _, lines = run(bundle, obama, threshold=0.999)
    assert lines[0]["faces"][0]["decision"] == "unknown"
    # The default is the bundle's own: the one its builder calibrated for its size.
    _, default = run(bundle, obama)
    expected = threshold_for_gallery(len(ENROLLED))
    _, explicit = run(bundle, obama, threshold=expected)
    assert default == explicit and default[0]["threshold"] == expected
    assert expected < DEFAULT_THRESHOLD


def test_bad_files_give_error_lines_and_the_run_goes_on(bundle, faces_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_notes.txt").write_text("hello")
    jpeg = (faces_dir / "gallery" / "katy_perry" / "4.jpg").read_bytes()
    (folder / "b_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "c_huge.png").write_bytes(huge_png())
    (folder / "d_good.jpg").symlink_to(faces_dir / "gallery" / "katy_perry" / "6.jpg")
    (folder / ".hidden.jpg").write_text("skipped")
    result, lines = run(bundle, folder, threshold=0.6)
    assert result.exit_code == 1
    assert [line["image"].rsplit("/", 1)[1] for line in lines] == [
        "a_notes.txt",
        "b_truncated.jpg",
        "c_huge.png",
        "d_good.jpg",
    ]
    assert "not an image" in lines[0]["error"]
    assert "truncated" in lines[1]["error"]
    assert "megapixels" in lines[2]["error"]
    assert lines[3]["faces"][0]["person_id"] == "katy_perry"
    assert "3 image(s) could not be processed" in result.stderr


def test_photo_without_faces_gives_an_empty_list(bundle, faces_dir):
    result, lines = run(bundle, faces_dir / "noface" / "3.jpg")
    assert result.exit_code == 0 and isinstance(lines[0]["faces"], list)
    assert all(face["decision"] != "match" for face in lines[0]["faces"])


def test_a_poor_photo_gets_an_answer_with_the_gates_objections(bundle, faces_dir):
    # Both heads are turned sideways (the gate would refuse them); a single photo still gets
    # a decision, with the objection in ``flags``: the enrolled person is found, the stranger is not.
    enrolled = faces_dir / "gallery" / "kevin_sussman" / "8.jpg"
    stranger = faces_dir / "gallery" / "kunal_nayyar" / "13.jpg"
    result, (found, unknown) = run(bundle, enrolled, stranger)
    assert result.exit_code == 0
    (face,) = found["faces"]
    assert face["decision"] == "match" and face["person_id"] == "kevin_sussman"
    assert "turned sideways" in face["flags"] and face["quality"]["passed"] is False
    (face,) = unknown["faces"]
    assert face["decision"] == "unknown" and face["person_id"] is None and "turned sideways" in face["flags"]
    assert face["similarity"] < found["threshold"]


def test_tampered_bundle_is_refused_with_a_clear_message(bundle, tmp_path, faces_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    labels = copy / "labels.json"
    labels.write_text(labels.read_text().replace("katy_perry", "katy_perrx"))
    result = CliRunner().invoke(identify_command, ["--bundle", str(copy), str(faces_dir / "noface" / "3.jpg")])
    assert result.exit_code != 0 and "labels.json" in result.output and "does not match" in result.output
