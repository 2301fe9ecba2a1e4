"""The whole nightly cycle on one machine: a NamUs dev server, the real models and real
photos, folder and moto-S3 locations, a device syncing in between.

Night 1 (new cases) -> device syncs -> night 2 (one case resolved, one added) -> the device
takes the delta, the resolved person no longer matches and is in nothing a device can
download; the regional scope gets its own gallery, deltas and threshold.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_app.gallery.bundle import ModelRef
from edge_app.gallery.bundle import sha256_file as sha256_of
from edge_app.gallery.gallery import Gallery
from edge_app.gallery.pointer import scope_source
from edge_app.gallery.sync_agent import SyncAgent
from mpd_cli import main
from sync_service.cycle.config import parse_cycle_config
from sync_service.cycle.runner import run_cycle
from sync_service.dev_servers.fixtures import FixtureCase, write_fixture_cases
from sync_service.dev_servers.server import SourceServer
from sync_service.gallery.nightly import EmbeddingCache
from sync_service.gallery.signing import KEY_FILE_ENV
from sync_service.http import ALLOW_LOOPBACK_ENV
from sync_service.store import LocalStore

# Made-up cases (names, numbers, places) with photos of public figures from the shared set.
CASES = {
    7001: ("Ada", "Example", "Texas", "barack_obama"),
    7002: ("Bo", "Sample", "Texas", "george_clooney"),
    7003: ("Cy", "Placeholder", "Illinois", "jack_dorsey"),
    7004: ("Di", "Fixture", "Illinois", "kaley_cuoco"),
}
ADDED = {7005: ("Ed", "Newcase", "Texas", "alex_lacamoire")}
NIGHT1 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def local_sources(monkeypatch):
    """The explicit opt-in for the NamUs dev server on 127.0.0.1 (loopback is refused by default)."""
    monkeypatch.setenv(ALLOW_LOOPBACK_ENV, "1")


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
    monkeypatch.setenv("MPD_CYCLE_STATE_DIR", str(tmp_path / "cycle-state"))
    return key


def fixture_case(number: int, spec: tuple, faces_dir: Path, **changes) -> FixtureCase:
    first, last, state, person = spec
    photos = [faces_dir / "gallery" / person / name for name in ("1.jpg", "2.jpg")]
    return FixtureCase(case_id=number, first_name=first, last_name=last, state=state, photos=photos, **changes)


def cycle_config(server_url: str, store: str, build: str, published: str) -> str:
    return json.dumps(
        {
            "store": store,
            "build": build,
            "published": published,
            "sources": {"namus": {"base_url": server_url, "rate_limit": 40, "workers": 2, "timeout_s": 10}},
            "scopes": [{"name": "texas", "states": ["TX"]}],
            "retention_days": 3,
        }
    )


def probe(models, faces_dir: Path, person: str):
    from models.images import load_image

    image = load_image(faces_dir / "gallery" / person / "3.jpg")
    faces = [f for f in models.gate(models.detect(image), image) if f.rejected is None]
    return models.embed(image, max(faces, key=lambda f: f.area))[None, :]


def downloadable_person_ids(published: Path) -> set[str]:
    """Every person id in any file under the published root (what a device could fetch)."""
    found = set()
    for path in published.rglob("*.json"):
        if path.name in ("labels.json", "removed.json"):
            continue  # removed.json names persons leaving: an id, no template
        if path.name == "persons.json":
            found |= {row["person_id"] for row in json.loads(path.read_text())}
    for path in published.rglob("labels.json"):
        found |= set(json.loads(path.read_text()))
    return found


def test_two_nights_device_takes_the_delta_and_the_resolved_person_is_gone(faces_dir, models, key, tmp_path):
    data = tmp_path / "namus-data"
    write_fixture_cases(data, "namus", [fixture_case(n, s, faces_dir) for n, s in CASES.items()], states=["Texas", "Illinois"])  # fmt: skip
    store, build, published = tmp_path / "store", tmp_path / "build", tmp_path / "published"
    with SourceServer("namus", data) as server:
        config = parse_cycle_config(cycle_config(server.url, str(store), str(build), str(published)), "test")

        night1 = run_cycle(config, NIGHT1, models=models, key=key)
        assert night1["outcome"] == {"ok": True, "problems": []}, night1["outcome"]
        (ingested,) = night1["ingest"]
        assert (ingested["status"], ingested["new"]) == ("complete", 4)
        everything, texas = night1["build"]["scopes"]["all"], night1["build"]["scopes"]["texas"]
        assert (everything["persons"], texas["persons"]) == (4, 2)
        assert texas["threshold"] < everything["threshold"] or texas["threshold"] == everything["threshold"]
        assert night1["publish"]["scopes"]["texas"]["status"] == "published"

        device = SyncAgent(str(published), tmp_path / "device", key.public_key())
        texas_device = SyncAgent(scope_source(str(published), "texas"), tmp_path / "texas-device", key.public_key())
        assert device.sync_once().version == everything["version"]
        assert texas_device.sync_once().version == texas["version"]
        gallery = Gallery.from_bundle(device.dir.load())
        assert gallery.search(probe(models, faces_dir, "barack_obama"), 1)[0][0].person_id == "namus:MP7001"
        assert set(Gallery.from_bundle(texas_device.dir.load()).persons) == {"namus:MP7001", "namus:MP7002"}

        # Night 2: case 7001 is resolved at the source, 7005 is new.
        write_fixture_cases(data, "namus", [
            fixture_case(7001, CASES[7001], faces_dir, resolved=True, modified="2026-11-01T12:00:00.000"),
            fixture_case(7005, ADDED[7005], faces_dir),
        ])  # fmt: skip
        night2 = run_cycle(config, NIGHT1 + timedelta(days=1), models=models, key=key)
    assert night2["outcome"]["ok"], night2["outcome"]
    assert night2["build"]["embedded"] == 2, "only the new case's photos are embedded"
    delta = night2["build"]["scopes"]["all"]["delta"]
    assert (delta["base_version"], delta["removed_persons"]) == (everything["version"], 1)

    fetched: list[str] = []
    real_download = device.source.download
    device.source.download = lambda relpath, dest, size, **kw: (
        fetched.append(relpath),
        real_download(relpath, dest, size, **kw),
    )
    assert device.sync_once().version == night2["build"]["scopes"]["all"]["version"]
    assert fetched and all("/delta/" in path for path in fetched), fetched
    gallery = Gallery.from_bundle(device.dir.load())
    assert "namus:MP7001" not in gallery.persons and "namus:MP7005" in gallery.persons
    top = gallery.search(probe(models, faces_dir, "barack_obama"), 1)[0][0]
    assert top.person_id != "namus:MP7001"
    assert gallery.search(probe(models, faces_dir, "alex_lacamoire"), 1)[0][0].person_id == "namus:MP7005"
    assert texas_device.sync_once().version == night2["build"]["scopes"]["texas"]["version"]
    assert set(Gallery.from_bundle(texas_device.dir.load()).persons) == {"namus:MP7002", "namus:MP7005"}

    # A device configured with the scope (gallery.scope / mpd sync --scope) gets the regional gallery.
    pub = tmp_path / "gallery.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    synced = CliRunner().invoke(main, ["sync", "--from", str(published), "--dir", str(tmp_path / "cli-device"),
                                       "--public-key", str(pub), "--scope", "texas", "--once"])  # fmt: skip
    assert synced.exit_code == 0, synced.output
    assert (tmp_path / "cli-device" / "current").resolve().name == night2["build"]["scopes"]["texas"]["version"]

    # Nothing a device can download holds the resolved person; only the live versions remain.
    ids = downloadable_person_ids(published)
    assert "namus:MP7001" not in ids and {"namus:MP7002", "namus:MP7005"} <= ids
    versions = {p.name for p in published.iterdir() if p.is_dir() and p.name != "scopes"}
    assert versions == {night2["build"]["scopes"]["all"]["version"]}
    # ... nor the store (photos) nor the embedding cache.
    assert not (store / "photos" / "namus" / "MP7001").exists()
    cache = EmbeddingCache(LocalStore(build), ModelRef(**models.embedder_ref)).load()
    resolved_photos = {sha256_of(faces_dir / "gallery" / "barack_obama" / name) for name in ("1.jpg", "2.jpg")}
    assert resolved_photos.isdisjoint(cache.entries) and len(cache.entries) == 8


def many_cases(faces_dir: Path, count: int) -> list[FixtureCase]:
    """``count`` made-up Texas cases sharing one real photo (ingest only; never embedded here)."""
    photo = faces_dir / "gallery" / "jack_dorsey" / "1.jpg"
    return [FixtureCase(case_id=8000 + i, first_name="Case", last_name=f"N{i}", state="Texas", photos=[photo]) for i in range(count)]  # fmt: skip


def test_ingest_shards_share_the_polite_rate_and_resume_where_they_stopped(faces_dir, tmp_path, monkeypatch):
    from sync_service.cycle import stages

    monkeypatch.setenv("MPD_CYCLE_STATE_DIR", str(tmp_path / "cycle-state"))
    data = tmp_path / "namus-data"
    write_fixture_cases(data, "namus", many_cases(faces_dir, 16), states=["Texas"])
    store = tmp_path / "store"
    with SourceServer("namus", data) as server:
        text = json.loads(cycle_config(server.url, str(store), str(tmp_path / "b"), str(tmp_path / "p")))
        text["sources"]["namus"] |= {"rate_limit": 8, "workers": 4}
        config = parse_cycle_config(json.dumps(text), "test")
        (item,) = stages.plan(config, {"now": NIGHT1.isoformat()})["sources"]
        assert stages.ingest_list(config, {**item, "step": "list"})["status"] == "listed"
        # Each shard's first call gets about one second: it stops part way ("partial") and
        # the next call resumes from its checkpoint, as the state machine's loop does.
        from concurrent.futures import ThreadPoolExecutor

        def shard_until_done(shard: dict) -> list[str]:
            statuses = []
            while not statuses or statuses[-1] == "partial":
                statuses.append(stages.ingest_fetch(config, {**item, **shard}, seconds_left=61.0)["status"])
            return statuses

        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(shard_until_done, item["shards"]))
        finished = stages.ingest_finish(config, item)
        starts = sorted(r.at for r in server.requests)
        paths = [(r.method, r.path) for r in server.requests]
    assert any(run[0] == "partial" for run in runs), runs
    assert all(run[-1] == "done" for run in runs)
    assert (finished["status"], finished["new"], finished["cases_seen"]) == ("complete", 16, 16)
    # States + one search page, then a case and a photo per case: nothing fetched twice on resume.
    assert len(paths) == 2 + 2 * 16 and len(set(paths)) == len(paths)
    # Together the 4 workers keep to 8 requests/s (alone, each would send 8/s): at most the rate
    # plus one in any second at the server (its own scheduling jitter), and 8/s on average.
    busiest = max(sum(1 for t in starts if start <= t < start + 1.0) for start in starts)
    assert busiest <= 9, f"{busiest} requests in one second from 4 workers sharing 8/s"
    assert (len(starts) - 1) / (starts[-1] - starts[0]) <= 8 * 1.05
    assert len(list(LocalStore(store).iter_cases())) == 16


def test_publish_refuses_a_gallery_the_devices_cannot_load_and_keeps_the_last_good_one(
    faces_dir, models, key, tmp_path, monkeypatch
):
    import edge_app.gallery.search as search

    data = tmp_path / "namus-data"
    write_fixture_cases(data, "namus", [fixture_case(n, s, faces_dir) for n, s in CASES.items()], states=["Texas", "Illinois"])  # fmt: skip
    published = tmp_path / "published"
    with SourceServer("namus", data) as server:
        text = json.loads(cycle_config(server.url, str(tmp_path / "store"), str(tmp_path / "build"), str(published)))
        text["devices"] = {"search": ["exact"]}  # a fleet whose artifact has no hnswlib
        config = parse_cycle_config(json.dumps(text), "test")
        night1 = run_cycle(config, NIGHT1, models=models, key=key)
        assert night1["outcome"]["ok"], night1["outcome"]
        live = json.loads((published / "latest.json").read_text())["gallery_version"]

        write_fixture_cases(data, "namus", [fixture_case(7005, ADDED[7005], faces_dir)])
        monkeypatch.setattr(search, "EXACT_MAX_VECTORS", 3)  # the new gallery needs hnsw search
        night2 = run_cycle(config, NIGHT1 + timedelta(days=1), models=models, key=key)
    assert not night2["outcome"]["ok"]
    (problem,) = [p for p in night2["outcome"]["problems"] if p.startswith("publish all")]
    assert "cannot be loaded by the devices" in problem and "'hnsw'" in problem
    assert json.loads((published / "latest.json").read_text())["gallery_version"] == live
    device = SyncAgent(str(published), tmp_path / "device", key.public_key())
    assert device.sync_once().version == live


def test_check_loadable_names_every_mismatch():
    from edge_app.gallery.bundle import FileEntry, Manifest, SearchSpec
    from sync_service.cycle.config import DeviceCapabilities
    from sync_service.gallery.publish import PublishRefused, check_loadable

    ref = ModelRef(id="sface_2021dec", sha256="0" * 64)
    manifest = Manifest(
        gallery_version="20261101T030000Z", detector=ref, embedder=ref, dimension=512,
        search=SearchSpec(engine="hnsw"), files={"vectors.npy": FileEntry(size=10, sha256="0" * 64)},
    )  # fmt: skip
    devices = DeviceCapabilities(search=["exact"], max_full_bytes=5, embedder=f"sface_2021dec:{'0' * 64}")
    with pytest.raises(PublishRefused) as refused:
        check_loadable(manifest, 10, devices)
    for words in ("search engine 'hnsw'", "dimension 512", "full bundle of 10 bytes"):
        assert words in str(refused.value)
    check_loadable(manifest, 5, devices.model_copy(update={"search": ["exact", "hnsw"], "dimension": 512}))


def test_mpd_cloud_cycle_on_moto_with_the_key_in_secrets_manager(aws, faces_dir, models, key, tmp_path, monkeypatch):
    import boto3
    from click.testing import CliRunner

    from mpd_cli import main

    boto3.client("s3").create_bucket(Bucket="mpd-gallery")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    boto3.client("secretsmanager").create_secret(Name="mpd/gallery-signing-key", SecretString=pem.decode())
    monkeypatch.delenv(KEY_FILE_ENV)
    monkeypatch.setenv("MPD_GALLERY_SIGNING_KEY_SECRET", "mpd/gallery-signing-key")
    data = tmp_path / "namus-data"
    write_fixture_cases(data, "namus", [fixture_case(n, s, faces_dir) for n, s in list(CASES.items())[:2]], states=["Texas"])  # fmt: skip
    with SourceServer("namus", data) as server:
        config = tmp_path / "cycle.json"
        config.write_text(cycle_config(server.url, "s3://mpd-gallery/ingest", "s3://mpd-gallery/build", "s3://mpd-gallery/published"))  # fmt: skip
        result = CliRunner().invoke(main, ["cloud", "cycle", "--config", str(config), "--now", "2026-11-01T03:00:00Z"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["publish"]["scopes"]["texas"]["status"] == "published"
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="mpd-gallery")["Contents"]}
    assert "published/latest.json" in keys and "published/scopes/texas/latest.json" in keys
    assert not any(k.startswith("published/") and "/cache/" in k for k in keys), "the cache is not device-readable"
    assert any(k.startswith("build/gallery/cache/") for k in keys)
    device = SyncAgent("s3://mpd-gallery/published", tmp_path / "device", key.public_key())
    assert device.sync_once().version == report["build"]["scopes"]["all"]["version"]


def test_a_cycle_started_while_another_runs_skips_on_moto_step_functions(aws, tmp_path, monkeypatch):
    """The template's state machine on moto: the plan stage of a second execution sees the first still
    running and skips (a first full crawl can outlast the night; two cycles never share a store)."""
    import boto3
    from cfnlint.decode import decode

    from sync_service.cycle import handlers
    from tests.test_template import TEMPLATE

    machine = decode(str(TEMPLATE))[0]["Resources"]["CycleStateMachine"]["Properties"]
    definition = json.dumps(machine["Definition"])
    for name in machine["DefinitionSubstitutions"]:
        definition = definition.replace("${" + name + "}", f"arn:aws:lambda:us-east-1:123456789012:function:{name}")
    sfn = boto3.client("stepfunctions")
    arn = sfn.create_state_machine(
        name="mpd-cycle", definition=definition, roleArn="arn:aws:iam::123456789012:role/mpd-cycle"
    )["stateMachineArn"]
    first = sfn.start_execution(stateMachineArn=arn, name="night-1")["executionArn"]
    second = sfn.start_execution(stateMachineArn=arn, name="night-2")["executionArn"]
    monkeypatch.setenv("MPD_CYCLE_CONFIG", json.dumps({"store": str(tmp_path / "s"), "build": str(tmp_path / "b"), "published": str(tmp_path / "p")}))  # fmt: skip
    monkeypatch.setattr(handlers, "_config", None)
    event = {"step": "plan", "now": "2026-11-02T03:00:00Z", "run_id": "night-2", "state_machine": arn, "execution": second}  # fmt: skip
    skipped = handlers.ingest_handler(event)
    assert skipped["skip"] is True and "1 other cycle(s) still running" in skipped["reason"]
    sfn.stop_execution(executionArn=first)
    planned = handlers.ingest_handler(event)
    assert planned["skip"] is False and [s["source"] for s in planned["sources"]] == ["namus", "fbi", "interpol"]


def test_the_scheduler_runs_a_cycle_at_each_simulated_night(monkeypatch, tmp_path):
    """`mpd cloud serve --cycle-config --clock-speed`: nights at 03:00 UTC on a clock a day per second."""
    from sync_service.cycle import runner

    nights: list[datetime] = []
    monkeypatch.setattr(runner, "run_cycle", lambda config, now, **kw: nights.append(now) or {"now": now.isoformat()})
    config = parse_cycle_config(json.dumps({"store": str(tmp_path / "s"), "build": str(tmp_path / "b"), "published": str(tmp_path / "p")}), "test")  # fmt: skip
    clock = runner.SimulatedClock(start=datetime(2026, 11, 1, 2, 0, tzinfo=UTC), speed=86400.0)
    scheduler = runner.CycleScheduler(config, clock)
    scheduler.start()
    deadline = time.monotonic() + 10
    while len(nights) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    scheduler.stop()
    scheduler.join(5)
    assert nights[:3] == [datetime(2026, 11, day, 3, 0, tzinfo=UTC) for day in (1, 2, 3)]
    assert runner.next_run(datetime(2026, 11, 1, 3, 0, tzinfo=UTC), timedelta(hours=6)) == datetime(2026, 11, 1, 9, 0, tzinfo=UTC)  # fmt: skip
