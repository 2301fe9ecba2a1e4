"""Device gallery sync: real files, a real local HTTP server with a capped, flaky link,
full and delta bundles, and every fault leaving the device on its last good gallery."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_app.gallery.bundle import MANIFEST, ModelRef, load_bundle
from edge_app.gallery.sync_agent import SyncAgent
from tests.gallery_factory import Publisher, churn, synthetic_gallery
from tests.linkserver import LinkConditions, LinkServer


@pytest.fixture()
def publisher(tmp_path) -> Publisher:
    return Publisher(tmp_path / "cloud")


@pytest.fixture()
def galleries():
    first = synthetic_gallery(300, seed=3)
    second = churn(first, 0.05, seed=4)
    third = churn(second, 0.05, seed=5)
    return first, second, third


def agent_for(source, publisher: Publisher, device: Path, **kwargs) -> SyncAgent:
    kwargs.setdefault("attempts", 3)
    kwargs.setdefault("max_wait", 0.05)
    return SyncAgent(str(source), device, publisher.public_key, **kwargs)


def bundle_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_first_sync_installs_full_bundle_and_reports_version(publisher, galleries, tmp_path):
    record, _ = publisher.release(galleries[0])
    swapped = []
    agent = agent_for(publisher.root, publisher, tmp_path / "device", on_swap=swapped.append)
    assert agent.version is None

    result = agent.sync_once()

    assert (result.status, result.version) == ("installed", record.gallery_version)
    assert agent.version == record.gallery_version
    assert [c.manifest.gallery_version for c in swapped] == [record.gallery_version]
    assert (tmp_path / "device" / "current").resolve().name == record.gallery_version
    assert bundle_bytes(tmp_path / "device" / "current") == bundle_bytes(publisher.root / record.full)
    assert agent.sync_once().status == "up_to_date"
    restarted = agent_for(publisher.root, publisher, tmp_path / "device")
    assert restarted.version == record.gallery_version
    assert restarted.current_bundle.labels == galleries[0].labels


def test_delta_over_http_reproduces_the_signed_full_bundle(publisher, galleries, tmp_path):
    publisher.release(galleries[0])
    device = tmp_path / "device"
    with LinkServer(publisher.root) as link:
        agent = agent_for(link.url, publisher, device)
        assert agent.sync_once().status == "installed"
        record, info = publisher.release(galleries[1])
        link.stats.paths.clear()
        result = agent.sync_once()
        fetched = list(link.stats.paths)

    assert (result.status, result.version) == ("installed", record.gallery_version)
    assert any("/delta/vectors.npy" in p for p in fetched)
    assert not any("/full/" in p for p in fetched), "a delta sync must not download the full bundle"
    # Byte-identical to the full bundle, and verified against its signature.
    assert bundle_bytes(device / "current") == bundle_bytes(publisher.root / record.full)
    installed = load_bundle(device / "current", publisher.public_key, require_signature=True)
    assert installed.labels == galleries[1].labels
    assert (device / "previous").resolve().name != record.gallery_version


def test_missed_nights_take_the_delta_from_the_version_held(publisher, galleries, tmp_path):
    first, _ = publisher.release(galleries[0])
    with LinkServer(publisher.root) as link:
        agent = agent_for(link.url, publisher, tmp_path / "device")
        agent.sync_once()
        publisher.release(galleries[1])
        record, _ = publisher.release(galleries[2])  # the device missed the 2nd night
        link.stats.paths.clear()
        assert agent.sync_once().version == record.gallery_version
        fetched = list(link.stats.paths)

    assert [ref.base_version for ref in record.older_deltas] == [first.gallery_version]
    assert any(f"/delta-from-{first.gallery_version}/vectors.npy" in p for p in fetched)
    assert not any("/full/" in p for p in fetched)
    assert bundle_bytes(tmp_path / "device" / "current") == bundle_bytes(publisher.root / record.full)


def test_offline_longer_than_the_delta_history_takes_the_full_bundle(publisher, tmp_path, monkeypatch):
    from sync_service.gallery import nightly

    monkeypatch.setattr(nightly, "DELTA_HISTORY", 2)
    gallery = synthetic_gallery(100, seed=1)
    publisher.release(gallery)
    agent = agent_for(publisher.root, publisher, tmp_path / "device")
    agent.sync_once()
    for seed in (2, 3, 4):
        gallery = churn(gallery, 0.05, seed=seed)
        record, _ = publisher.release(gallery)
    fetched = []
    real_download = agent.source.download
    agent.source.download = lambda relpath, dest, size, **kw: (
        fetched.append(relpath),
        real_download(relpath, dest, size, **kw),
    )

    assert agent.sync_once().version == record.gallery_version
    assert fetched and all("/full/" in path for path in fetched)


def test_delta_for_another_base_is_refused_then_full_is_used(publisher, galleries, tmp_path, caplog):
    first, _ = publisher.release(galleries[0])
    agent = agent_for(publisher.root, publisher, tmp_path / "device")
    agent.sync_once()
    publisher.release(galleries[1])
    record, _ = publisher.release(galleries[2])
    # A pointer that lies about the delta's base: the signed delta manifest says otherwise.
    pointer = json.loads((publisher.root / "latest.json").read_text())
    pointer["delta"]["base_version"] = first.gallery_version
    (publisher.root / "latest.json").write_text(json.dumps(pointer))

    with caplog.at_level(logging.WARNING):
        result = agent.sync_once()

    assert result.version == record.gallery_version
    assert f"is for base {galleries and record.delta.base_version}, device holds {first.gallery_version}" in caplog.text


def test_tampered_file_is_refused_and_next_sync_recovers(publisher, galleries, tmp_path, caplog):
    first, _ = publisher.release(galleries[0])
    agent = agent_for(publisher.root, publisher, tmp_path / "device")
    agent.sync_once()
    second, _ = publisher.release(galleries[1])
    target = publisher.root / second.delta.path / "vectors.npy"
    original = target.read_bytes()
    tampered = bytearray(original)
    tampered[-5] ^= 0x01  # one bit in one embedding
    target.write_bytes(bytes(tampered))
    full_vectors = publisher.root / second.full / "vectors.npy"
    full_original = full_vectors.read_bytes()
    full_vectors.write_bytes(full_original[:-4] + b"\x00\x00\x80\x7f")  # last float -> inf, same size

    with caplog.at_level(logging.WARNING):
        result = agent.sync_once()

    assert (result.status, result.version, agent.version) == ("failed", first.gallery_version, first.gallery_version)
    assert "does not match the signed manifest" in result.detail
    assert "sha256" in caplog.text and "delta" in caplog.text
    assert (tmp_path / "device" / "current").resolve().name == first.gallery_version

    target.write_bytes(original)
    full_vectors.write_bytes(full_original)
    assert agent.sync_once().version == second.gallery_version


def test_wrong_signature_is_refused_before_any_large_download(publisher, galleries, tmp_path):
    first, _ = publisher.release(galleries[0])
    device = tmp_path / "device"
    with LinkServer(publisher.root) as link:
        agent = agent_for(link.url, publisher, device)
        agent.sync_once()
        rogue = Publisher(tmp_path / "rogue")  # another key
        rogue.built = publisher.built + 5
        rogue.root = publisher.root
        rogue.release(galleries[1])
        link.stats.paths.clear()
        result = agent.sync_once()
        fetched = list(link.stats.paths)

    assert result.status == "failed" and "bad signature" in result.detail
    assert agent.version == first.gallery_version
    assert not any(p.endswith(".npy") for p in fetched)


def test_bundle_from_another_embedder_is_refused(publisher, galleries, tmp_path):
    first, _ = publisher.release(galleries[0])
    agent = agent_for(publisher.root, publisher, tmp_path / "device")
    agent.sync_once()
    other = Publisher(tmp_path / "other", key=publisher.key, embedder=ModelRef(id="arcface_r100", sha256="ab" * 32))
    other.built, other.root = publisher.built + 1, publisher.root
    other.release(galleries[1])

    result = agent.sync_once()

    assert result.status == "failed"
    assert "built with embedder arcface_r100" in result.detail and "refused" in result.detail
    assert agent.version == first.gallery_version


def test_older_version_is_refused(publisher, galleries, tmp_path):
    first, _ = publisher.release(galleries[0])
    pointer_v1 = (publisher.root / "latest.json").read_bytes()
    publisher.release(galleries[1])
    agent = agent_for(publisher.root, publisher, tmp_path / "device")
    second = agent.sync_once().version
    (publisher.root / "latest.json").write_bytes(pointer_v1)  # replayed old pointer

    result = agent.sync_once()

    assert result.status == "failed" and "refusing to go back" in result.detail
    assert agent.version == second != first.gallery_version


def test_dropped_connections_resume_with_range(publisher, tmp_path):
    record, _ = publisher.release(synthetic_gallery(600, seed=7))
    size = sum(p.stat().st_size for p in (publisher.root / record.full).iterdir())
    conditions = LinkConditions(cut_after_bytes=60_000)
    with LinkServer(publisher.root, conditions) as link:
        # Far more cuts than attempts: only attempts that make no progress count.
        agent = agent_for(link.url, publisher, tmp_path / "device", attempts=3)
        result = agent.sync_once()
        stats = link.stats

    assert result.status == "installed"
    assert stats.cuts >= size // 60_000 - 1 > 3
    assert stats.range_requests >= stats.cuts - 1
    # Resume, not restart: each byte crosses the link about once.
    assert stats.body_bytes <= size * 1.05


def test_server_without_range_support_still_completes(publisher, tmp_path):
    record, _ = publisher.release(synthetic_gallery(100, seed=8))
    with LinkServer(publisher.root, LinkConditions(honour_range=False)) as link:
        agent = agent_for(link.url, publisher, tmp_path / "device")
        (tmp_path / "device" / "downloads" / f"{record.gallery_version}-full").mkdir(parents=True)
        # A stale partial file from an earlier attempt.
        (tmp_path / "device" / "downloads" / f"{record.gallery_version}-full" / "vectors.npy.part").write_bytes(
            b"x" * 10
        )
        result = agent.sync_once()
    assert result.status == "installed"


def test_truncated_file_on_the_server_is_refused(publisher, galleries, tmp_path):
    first, _ = publisher.release(galleries[0])
    with LinkServer(publisher.root) as link:
        agent = agent_for(link.url, publisher, tmp_path / "device")
        agent.sync_once()
        second, _ = publisher.release(galleries[1])
        originals = {}
        for bundle in (second.full, second.delta.path):
            path = publisher.root / bundle / "vectors.npy"
            originals[path] = path.read_bytes()
            path.write_bytes(originals[path][:-1000])  # half-uploaded
        result = agent.sync_once()
        assert result.status == "failed" and "fewer bytes" in result.detail and "truncated" in result.detail
        assert agent.version == first.gallery_version
        for path, data in originals.items():
            path.write_bytes(data)
        assert agent.sync_once().version == second.gallery_version


def test_source_down_or_malformed_pointer_keeps_the_gallery(publisher, galleries, tmp_path):
    first, _ = publisher.release(galleries[0])
    with LinkServer(publisher.root) as link:
        url = link.url
        agent = agent_for(url, publisher, tmp_path / "device")
        agent.sync_once()
    # The server is gone now: connection refused.
    result = agent.sync_once()
    assert result.status == "failed" and "gave up after 3 attempts" in result.detail
    assert agent.version == first.gallery_version

    (publisher.root / "latest.json").write_text('{"schema": "mpd.gallery.latest/1", "gallery_version": ')
    folder_agent = agent_for(publisher.root, publisher, tmp_path / "device")
    result = folder_agent.sync_once()
    assert result.status == "failed" and "malformed gallery pointer" in result.detail
    assert folder_agent.version == first.gallery_version


def test_pipeline_refusing_the_new_gallery_rolls_back(publisher, galleries, tmp_path):
    first, _ = publisher.release(galleries[0])
    swaps = []

    def on_swap(contents):
        if swaps:
            raise RuntimeError("index build failed")
        swaps.append(contents.manifest.gallery_version)

    agent = agent_for(publisher.root, publisher, tmp_path / "device", on_swap=on_swap)
    agent.sync_once()
    publisher.release(galleries[1])

    result = agent.sync_once()

    assert result.status == "failed" and "rolled back" in result.detail
    assert agent.version == first.gallery_version
    assert (tmp_path / "device" / "current").resolve().name == first.gallery_version


def test_identify_results_after_deltas_equal_a_full_rebuild(publisher, galleries, tmp_path):
    from edge_app.gallery.gallery import Gallery

    publisher.release(galleries[0])
    agent = agent_for(publisher.root, publisher, tmp_path / "device")
    agent.sync_once()
    for gallery in galleries[1:]:
        publisher.release(gallery)
        assert agent.sync_once().status == "installed"
    via_deltas = Gallery.from_bundle(load_bundle(tmp_path / "device" / "current", publisher.public_key, True))
    rebuilt = Publisher(tmp_path / "fresh", key=publisher.key)
    record, _ = rebuilt.release(galleries[2])
    full = Gallery.from_bundle(load_bundle(rebuilt.root / record.full, publisher.public_key, True))

    rng = np.random.default_rng(11)
    queries = galleries[2].vectors[rng.choice(len(galleries[2].labels), 50)] + 0.3 * rng.standard_normal((50, 128))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    assert via_deltas.search(queries, 5) == full.search(queries, 5)


def test_s3_source_through_moto(aws, publisher, galleries, tmp_path):
    import boto3

    boto3.client("s3").create_bucket(Bucket="mpd-gallery")
    publisher.release(galleries[0], publish_it=False)
    from sync_service.gallery.publish import publish

    first = publish(str(publisher.build_out), "s3://mpd-gallery/published")
    agent = agent_for("s3://mpd-gallery/published", publisher, tmp_path / "device")
    assert agent.sync_once().version == first.gallery_version
    publisher.release(galleries[1], publish_it=False)
    second = publish(str(publisher.build_out), "s3://mpd-gallery/published")
    assert agent.sync_once().version == second.gallery_version
    assert bundle_bytes(tmp_path / "device" / "current") == {
        name: boto3.client("s3").get_object(Bucket="mpd-gallery", Key=f"published/{second.full}{name}")["Body"].read()
        for name in bundle_bytes(tmp_path / "device" / "current")
    }


def test_cli_sync_once(publisher, galleries, tmp_path):
    from click.testing import CliRunner
    from cryptography.hazmat.primitives import serialization

    from mpd_cli import main

    record, _ = publisher.release(galleries[0])
    pem = publisher.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "gallery.pub").write_bytes(pem)
    args = ["sync", "--from", str(publisher.root), "--dir", str(tmp_path / "device"), "--public-key", str(tmp_path / "gallery.pub"), "--once"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"installed: {record.gallery_version}" in result.output
    shutil.rmtree(publisher.root / record.full)
    (publisher.root / "latest.json").write_text(
        (publisher.root / "latest.json").read_text().replace(record.gallery_version, "29990101T000000Z")
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "failed" in result.output


def test_manifest_written_last_so_partial_publish_is_not_a_bundle(publisher, galleries, tmp_path):
    record, _ = publisher.release(galleries[0])
    assert (publisher.root / record.full / MANIFEST).stat().st_mtime_ns >= max(
        p.stat().st_mtime_ns for p in (publisher.root / record.full).iterdir() if p.name != MANIFEST
    )
    assert (publisher.root / "latest.json").stat().st_mtime_ns >= (
        publisher.root / record.full / MANIFEST
    ).stat().st_mtime_ns


def test_s3_download_resumes_from_the_partial_file(aws, publisher, tmp_path):
    """S3 honours Range: a partial file is continued, not re-fetched. Proven by planting a
    wrong prefix: resuming keeps it (sha256 refused), a restart would not."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="mpd-gallery")
    publisher.release(synthetic_gallery(200, seed=9), publish_it=False)
    from sync_service.gallery.publish import publish

    record = publish(str(publisher.build_out), "s3://mpd-gallery/live")
    size = (publisher.build_out / "gallery" / record.full / "vectors.npy").stat().st_size
    work = tmp_path / "device" / "downloads" / f"{record.gallery_version}-full"
    work.mkdir(parents=True)
    (work / "vectors.npy.part").write_bytes(b"\x00" * (size // 2))
    agent = agent_for("s3://mpd-gallery/live", publisher, tmp_path / "device")

    first = agent.sync_once()
    assert first.status == "failed" and "does not match the signed manifest" in first.detail
    assert agent.sync_once().version == record.gallery_version  # the bad part was discarded


def test_hnsw_gallery_ships_its_index_and_a_delta_device_builds_its_own(publisher, galleries, tmp_path, monkeypatch):
    from edge_app.gallery import search
    from edge_app.gallery.bundle import HNSW_INDEX
    from edge_app.gallery.gallery import Gallery

    monkeypatch.setattr(search, "EXACT_MAX_VECTORS", 100)  # these small galleries count as large
    publisher.release(galleries[0])
    agent = agent_for(publisher.root, publisher, tmp_path / "device")
    agent.sync_once()
    assert (tmp_path / "device" / "current" / HNSW_INDEX).is_file()  # the full bundle carried it
    record, _ = publisher.release(galleries[1])

    assert agent.sync_once().version == record.gallery_version
    assert (publisher.root / record.full / HNSW_INDEX).is_file()
    installed = agent.dir.load()  # verifies against the signed manifest the delta carried
    assert installed.manifest.search.engine == "hnsw" and HNSW_INDEX not in installed.manifest.files
    via_delta = Gallery.from_bundle(installed)
    shipped = Gallery.from_bundle(load_bundle(publisher.root / record.full, publisher.public_key, True))
    queries = galleries[1].vectors[::7]
    assert [m[0].person_id for m in via_delta.search(queries, 1)] == [
        m[0].person_id for m in shipped.search(queries, 1)
    ]
