"""Synthetic scenes: the video and its ground truth agree with what the detector sees."""

from __future__ import annotations

import cv2
import pytest

from demo.scenes import SceneTruth, make_scene, walk
from edge_app.pipeline.tracking import iou
from tests.test_edge_fixtures import face_models, stranger_photo, unseen_photo


def test_scene_ground_truth_matches_the_detected_faces(tmp_path, faces_dir):
    actors = [
        walk(unseen_photo(faces_dir, "katy_perry"), "katy_perry", 0.2, 2.0, face_px=(70, 110)),
        walk(stranger_photo(faces_dir, "joe_biden"), "joe_biden", 0.8, 2.0, direction=-1, height=0.3),
    ]
    out = tmp_path / "scene.avi"
    truth = make_scene(actors, out, seconds=3.0, models=face_models(), seed=3)
    spans = truth.appearances()
    assert spans["katy_perry"][0] in (3, 4) and spans["joe_biden"][0] in (12, 13)
    assert all(last < truth.frames for _, last in spans.values())

    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == truth.frames == 45
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
    found = expected = 0
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        detected = [f.box for f in face_models().detect(frame)]
        for _identity, *box in truth.boxes.get(index, []):
            expected += 1
            found += any(iou(tuple(box), d) > 0.4 for d in detected)
        # Frames without anyone in them have no face.
        if index not in truth.boxes:
            assert detected == [], f"frame {index}: a face where the truth has none"
        index += 1
    assert index == truth.frames
    assert found >= 0.9 * expected, f"only {found} of {expected} ground-truth faces detected"

    truth.save(tmp_path / "scene.json")
    again = SceneTruth.load(tmp_path / "scene.json")
    assert again.appearances() == spans and again.size == (640, 480)


def test_scene_errors_are_clear(tmp_path, faces_dir):
    noface = sorted((faces_dir / "noface").iterdir())[0]
    with pytest.raises(ValueError, match="use .avi"):
        make_scene([], tmp_path / "x.mkv", models=face_models())
    with pytest.raises(ValueError, match=f"{noface.name}: no face found"):
        make_scene([walk(noface, "nobody", 0, 1)], tmp_path / "x.avi", models=face_models())
