"""The ingest store: local folder and S3 (against a real moto server)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from sync_service.sources.photos import PhotoRejected
from sync_service.sources.records import PersonRecord
from sync_service.store import LocalStore, S3Store, StoredCase, StoreError, open_store


def png_bytes(size: int = 64) -> bytes:
    # A synthetic picture: the store checks bytes and types, not faces.
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((size, size)).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((size, size)).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def record(case_id: str = "MP1", **changes) -> PersonRecord:
    return PersonRecord(source="namus", case_id=case_id, name="Test Person", **changes)


def exercise_store(store) -> None:
    data = png_bytes()
    photo = store.put_photo("namus", "MP1", "10", data, category="FacialCaseId")
    assert photo.key == "photos/namus/MP1/10.png"  # extension from the bytes
    assert photo.mime_type == "image/png"
    assert (photo.width, photo.height) == (64, 64)
    assert store.read_photo(photo) == data

    store.put_case(StoredCase(record=record("MP1"), photos=[photo]))
    store.put_case(StoredCase(record=record("MP2", resolved=True)))
    store.put_case(StoredCase(record=record("MP3"), removed=True, removed_reason="404"))
    assert [c.record.case_id for c in store.iter_cases()] == ["MP1"]
    assert [c.record.case_id for c in store.iter_cases(active_only=False)] == ["MP1", "MP2", "MP3"]
    assert store.get_case("namus", "MP1").photos == [photo]
    assert store.get_case("namus", "MP404") is None

    store.write_bytes(photo.key, b"tampered")
    with pytest.raises(StoreError, match="sha256"):
        store.read_photo(photo)
    store.delete(photo.key)
    with pytest.raises(StoreError, match="missing"):
        store.read_photo(photo)


def test_local_store_round_trip(tmp_path):
    store = open_store(tmp_path / "store")
    assert isinstance(store, LocalStore)
    exercise_store(store)


def test_s3_store_round_trip(aws):
    import boto3

    boto3.client("s3").create_bucket(Bucket="ingest")
    store = open_store("s3://ingest/nightly/run")
    assert isinstance(store, S3Store)
    exercise_store(store)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="ingest")["Contents"]]
    assert all(key.startswith("nightly/run/") for key in keys)


def test_s3_store_missing_bucket_names_it(aws):
    store = open_store("s3://no-such-bucket")
    with pytest.raises(StoreError, match="no-such-bucket"):
        store.write_bytes("x", b"1")


def test_declared_type_does_not_decide_extension(tmp_path):
    store = LocalStore(tmp_path)
    assert store.put_photo("namus", "MP1", "1", jpeg_bytes()).key.endswith(".jpg")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<html><body>Access Denied</body></html>", "not an image"),
        (jpeg_bytes(256)[:600], "truncated image"),
        (png_bytes(16), "too small"),
    ],
)
def test_bad_photos_are_rejected_with_reason_and_not_stored(tmp_path, data, reason):
    store = LocalStore(tmp_path)
    with pytest.raises(PhotoRejected) as error:
        store.put_photo("namus", "MP1", "1", data)
    assert error.value.reason == reason
    assert list(store.list_keys("photos/")) == []


def test_damaged_case_file_is_skipped_not_fatal(tmp_path):
    store = LocalStore(tmp_path)
    store.put_case(StoredCase(record=record("MP1")))
    store.write_bytes("cases/namus/MP2.json", b'{"record": {"source": "namus"')
    assert [c.record.case_id for c in store.iter_cases()] == ["MP1"]


def test_keys_cannot_escape_the_folder(tmp_path):
    with pytest.raises(StoreError, match="outside"):
        LocalStore(tmp_path / "s").write_bytes("../evil", b"x")


def test_interrupted_local_write_keeps_old_file(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.write_bytes("cases/namus/MP1.json", b"old")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError):
        store.write_bytes("cases/namus/MP1.json", b"new")
    assert store.read_bytes("cases/namus/MP1.json") == b"old"
    assert list(store.list_keys("cases/")) == ["cases/namus/MP1.json"]


def test_unknown_url_scheme_is_refused():
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("gs://bucket")


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, "PNG")  # 100 megapixels in a few kB
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(PhotoRejected) as error:
        LocalStore(tmp_path).put_photo("namus", "MP1", "1", buffer.getvalue())
    assert error.value.reason == "too many pixels"


def test_unsupported_image_type_is_named(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "TIFF")
    with pytest.raises(PhotoRejected, match="unsupported image type: TIFF"):
        LocalStore(tmp_path).put_photo("namus", "MP1", "1", buffer.getvalue())
