"""The nightly build from the ingest store, with the real models and real photos:
incremental embedding, resolved cases leaving, full + delta bundles, resumable runs,
and a device that syncs the result and identifies a held-out photo."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_app.gallery.bundle import ModelRef, load_bundle
from edge_app.gallery.pointer import LatestPointer
from edge_app.gallery.sync_agent import SyncAgent
from mpd_cli import main
from sync_service.gallery import nightly
from sync_service.gallery.nightly import EmbeddingCache, NightlyBuilder, PhotoFaces, lambda_handler
from sync_service.gallery.publish import publish
from sync_service.gallery.signing import KEY_FILE_ENV
from sync_service.sources.records import PersonRecord
from sync_service.store import LocalStore, StoredCase, open_store

PEOPLE = ["alex_lacamoire", "barack_obama", "george_clooney", "jack_dorsey", "kaley_cuoco", "john_salley"]


@pytest.fixture(scope="module")
def models():
    from models.recognizer import FaceModels

    return FaceModels.load()


@pytest.fixture()
def key(tmp_path, monkeypatch):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "gallery.key"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    return key


def add_case(store: LocalStore, faces_dir: Path, name: str, case_id: str, photos: list[str], resolved: bool = False):
    stored = [
        store.put_photo("namus", case_id, Path(photo).stem, (faces_dir / "gallery" / name / photo).read_bytes())
        for photo in photos
    ]
    record = PersonRecord(source="namus", case_id=case_id, name=name.replace("_", " ").title(), resolved=resolved)
    store.put_case(StoredCase(record=record, photos=stored))


def fill_store(store: LocalStore, faces_dir: Path) -> None:
    for i, name in enumerate(PEOPLE):
        add_case(store, faces_dir, name, f"T{i:04d}", ["1.jpg", "2.jpg"])


def builder(store_dir, out_dir, models, key) -> NightlyBuilder:
    return NightlyBuilder(open_store(store_dir), open_store(out_dir), models, key.sign, key.public_key())


def test_incremental_build_delta_and_device_identification(faces_dir, models, key, tmp_path):
    store = LocalStore(tmp_path / "store")
    fill_store(store, faces_dir)
    out = tmp_path / "build"

    first = builder(store.root, out, models, key).run()
    assert (first.status, first.embedded, first.persons, first.delta) == ("built", 12, 6, None)
    assert builder(store.root, out, models, key).run().status == "unchanged"
    root = tmp_path / "published"
    publish(str(out), str(root))
    device = SyncAgent(str(root), tmp_path / "device", key.public_key())
    assert device.sync_once().version == first.version

    # Next night: one case resolved, one new case.
    resolved = store.get_case("namus", "T0002")
    store.put_case(resolved.model_copy(update={"record": resolved.record.model_copy(update={"resolved": True})}))
    add_case(store, faces_dir, "katy_perry", "T0100", ["1.jpg", "2.jpg"])
    second = builder(store.root, out, models, key).run(now=None)

    assert second.status == "built" and second.embedded == 2, "only the new case's photos are embedded"
    assert second.version > first.version
    assert second.delta["base_version"] == first.version and second.delta["removed_persons"] == 1
    full = load_bundle(out / "gallery" / second.version / "full", key.public_key(), require_signature=True)
    assert "namus:T0002" not in full.persons and "namus:T0100" in full.persons
    assert full.manifest.embedder == ModelRef(**models.embedder_ref)
    delta = load_bundle(out / "gallery" / second.version / "delta", key.public_key(), require_signature=True)
    assert delta.removed == ["namus:T0002"] and set(delta.labels) == {"namus:T0100"}
    assert len(delta.labels) == full.labels.count("namus:T0100") == second.delta["added_vectors"]

    # The device that holds the first version takes the delta and identifies held-out photos.
    publish(str(out), str(root))
    fetched = []
    real_download = device.source.download
    device.source.download = lambda relpath, dest, size, **kw: (
        fetched.append(relpath),
        real_download(relpath, dest, size, **kw),
    )
    assert device.sync_once().version == second.version
    assert fetched and all("/delta/" in path for path in fetched)
    from edge_app.gallery.gallery import Gallery

    gallery = Gallery.from_bundle(device.dir.load())
    probes = {"namus:T0001": "barack_obama/3.jpg", "namus:T0003": "jack_dorsey/3.jpg"}
    for person_id, photo in probes.items():
        image = load(faces_dir / "gallery" / photo)
        faces = [f for f in models.gate(models.detect(image), image) if f.rejected is None]
        query = models.embed(image, max(faces, key=lambda f: f.area))[None, :]
        assert gallery.search(query, 1)[0][0].person_id == person_id


def load(path: Path) -> np.ndarray:
    from models.images import load_image

    return load_image(path)


def test_deadline_makes_the_build_partial_and_resumable(faces_dir, models, key, tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    fill_store(store, faces_dir)
    out = tmp_path / "build"
    monkeypatch.setattr(nightly, "CACHE_FLUSH_EVERY", 2)
    calls = []
    real = nightly.embed_photo_with(models)

    def slow_count(data):
        calls.append(1)
        return real(data)

    b = builder(store.root, out, models, key)
    b.embed = slow_count
    # Stop after about five photos: the deadline is checked before each photo.
    started = time.monotonic()
    first = b.run(deadline=started)
    assert (first.status, first.embedded, first.remaining) == ("partial", 0, 12)
    b.embed = lambda data: (calls.append(1), real(data))[1] if len(calls) < 5 else (_ for _ in ()).throw(TimeoutError("Lambda killed"))  # fmt: skip
    with pytest.raises(TimeoutError):
        b.run()
    # The five finished photos survived the crash in the cache.
    assert len(EmbeddingCache(open_store(out), b.embedder).load().entries) == 5

    again = builder(store.root, out, models, key).run()
    assert (again.status, again.embedded) == ("built", 7)


def test_cache_is_per_embedder(tmp_path):
    out = open_store(tmp_path / "out")
    faces = PhotoFaces(np.ones((1, 128), np.float32), np.zeros((1, 4), np.float32), (100, 100))
    a = EmbeddingCache(out, ModelRef(id="sface", sha256="a" * 64))
    a.add("f" * 64, faces)
    a.flush()
    assert "f" * 64 in EmbeddingCache(out, ModelRef(id="sface", sha256="a" * 64)).load()
    assert "f" * 64 not in EmbeddingCache(out, ModelRef(id="sface", sha256="b" * 64)).load()


def test_damaged_cache_chunk_only_costs_re_embedding(tmp_path, caplog):
    out = open_store(tmp_path / "out")
    ref = ModelRef(id="sface", sha256="a" * 64)
    cache = EmbeddingCache(out, ref)
    cache.add("f" * 64, PhotoFaces(np.ones((2, 128), np.float32), np.zeros((2, 4), np.float32), (10, 10)))
    cache.flush()
    out.write_bytes(cache.prefix + "broken.npz", b"PK\x03\x04 not really a zip")
    loaded = EmbeddingCache(out, ref).load()
    assert "f" * 64 in loaded and len(loaded.get("f" * 64).vectors) == 2
    assert "ignoring damaged cache chunk" in caplog.text


def test_cli_build_and_publish_to_s3(aws, faces_dir, models, key, tmp_path):
    import boto3

    boto3.client("s3").create_bucket(Bucket="mpd-build")
    store = LocalStore(tmp_path / "store")
    for i, name in enumerate(PEOPLE[:2]):
        add_case(store, faces_dir, name, f"T{i:04d}", ["1.jpg"])
    result = CliRunner().invoke(main, ["gallery", "build", "--store", str(store.root), "--out", "s3://mpd-build/out"])
    assert result.exit_code == 0, result.output
    built = json.loads(result.output.strip().splitlines()[-1])
    assert built["status"] == "built" and built["persons"] == 2
    result = CliRunner().invoke(
        main, ["gallery", "publish", "--build", "s3://mpd-build/out", "--to", "s3://mpd-build/live"]
    )
    assert result.exit_code == 0, result.output
    pointer = json.loads(boto3.client("s3").get_object(Bucket="mpd-build", Key="live/latest.json")["Body"].read())
    assert pointer["gallery_version"] == built["version"]


def test_lambda_handler_returns_partial_when_time_is_short(faces_dir, key, tmp_path):
    class LambdaContext:
        """The two things the handler reads from the Lambda runtime's context object."""

        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def get_remaining_time_in_millis(self) -> int:
            return int(self.seconds * 1000)

    store = LocalStore(tmp_path / "store")
    add_case(store, faces_dir, "barack_obama", "T0001", ["1.jpg", "2.jpg"])
    event = {"store": str(store.root), "out": str(tmp_path / "out")}
    short = lambda_handler(event, LambdaContext(nightly.LAMBDA_SAFETY_SECONDS - 1))
    assert (short["status"], short["embedded"], short["remaining"]) == ("partial", 0, 2)
    done = lambda_handler(event, LambdaContext(900))
    assert (done["status"], done["embedded"], done["persons"]) == ("built", 2, 1)
    assert lambda_handler({}, LambdaContext(900))["status"] == "error"


def test_empty_or_collapsing_gallery_is_refused(faces_dir, models, key, tmp_path, monkeypatch):
    from sync_service.gallery.nightly import BuildRefused

    out = tmp_path / "build"
    with pytest.raises(BuildRefused, match="refusing to build an empty gallery"):
        builder(tmp_path / "typo-in-store-path", out, models, key).run()
    store = LocalStore(tmp_path / "store")
    fill_store(store, faces_dir)
    first = builder(store.root, out, models, key).run()
    for case_id in ("T0000", "T0001", "T0002", "T0003"):  # 4 of 6 cases resolved at once
        case = store.get_case("namus", case_id)
        store.put_case(case.model_copy(update={"record": case.record.model_copy(update={"resolved": True})}))
    with pytest.raises(BuildRefused, match="shrink from 6 to 2 persons"):
        builder(store.root, out, models, key).run()
    assert LatestPointer.parse((out / "gallery" / "build.json").read_bytes(), "x").gallery_version == first.version
    monkeypatch.setenv("MPD_GALLERY_ALLOW_SHRINK", "1")
    assert builder(store.root, out, models, key).run().persons == 2


def test_deltas_from_older_builds_for_devices_that_missed_nights(faces_dir, models, key, tmp_path):
    store = LocalStore(tmp_path / "store")
    out = tmp_path / "build"
    versions = []
    for i, name in enumerate(PEOPLE[:3]):
        add_case(store, faces_dir, name, f"T{i:04d}", ["1.jpg"])
        versions.append(builder(store.root, out, models, key).run().version)

    record = LatestPointer.parse((out / "gallery" / "build.json").read_bytes(), "build.json")
    assert record.delta.base_version == versions[1]
    assert [ref.base_version for ref in record.older_deltas] == [versions[0]]
    older = load_bundle(out / "gallery" / record.older_deltas[0].path, key.public_key(), require_signature=True)
    assert older.manifest.base_version == versions[0]
    assert sorted(set(older.labels)) == ["namus:T0001", "namus:T0002"] and older.removed == []
