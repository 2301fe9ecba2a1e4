"""``mpd gallery publish``: copy the newest built bundles to where devices read them,
then flip the ``latest.json`` pointer, then announce it over MQTT.

Order is what makes it safe for a device polling at any moment: every bundle file
first, each bundle's ``manifest.json`` last within it, and the pointer after all of
them (a local write is temp+rename, an S3 PUT is atomic per object). A device that
reads the old pointer finds the old bundles untouched; the new pointer only ever
names complete bundles.

Layout of a published gallery root (what ``mpd sync --from`` points at):

    latest.json                      LatestPointer
    <version>/full/...               full bundle
    <version>/delta/...              delta against the version before it
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import click

from edge_app.gallery.bundle import MANIFEST, Manifest
from edge_app.gallery.pointer import ANNOUNCE_TOPIC, POINTER, LatestPointer
from sync_service.cycle.config import DEFAULT_SCOPE, DeviceCapabilities
from sync_service.cycle.scopes import build_prefix, published_prefix
from sync_service.store import Store, StoreError, open_store

log = logging.getLogger(__name__)

BUILD_ROOT = "gallery/"  # bundles live under <out>/gallery/<version>/{full,delta}/
BUILD_RECORD_NAME = "build.json"  # beside a scope's bundles: a LatestPointer for its last build
BUILD_RECORD = BUILD_ROOT + BUILD_RECORD_NAME


class PublishError(RuntimeError):
    pass


class PublishRefused(PublishError):
    """The build is not something the deployed devices can load; the published gallery stays as it was."""


def read_build_record(out: Store, root: str = BUILD_ROOT) -> LatestPointer:
    key = root + BUILD_RECORD_NAME
    data = out.read_bytes(key)
    if data is None:
        raise PublishError(f"{out.url}: no {key}; run `mpd gallery build --store ... --out ...` first")
    return LatestPointer.parse(data, f"{out.url}/{key}")


def check_loadable(manifest: Manifest, full_bytes: int, devices: DeviceCapabilities) -> None:
    """Refuse a bundle the deployed devices would reject (format, search engine, dimension,
    embedder, size): publishing it would leave every device on its old gallery, silently."""
    problems = []
    if manifest.format_version not in devices.format_versions:
        problems.append(f"format version {manifest.format_version} (devices load {devices.format_versions})")
    if manifest.search.engine not in devices.search:
        problems.append(
            f"search engine {manifest.search.engine!r} for {manifest.counts.get('vectors', '?')} vectors "
            f"(devices run {devices.search}; carry hnswlib in the device artifact or keep the gallery smaller)"
        )
    if manifest.dimension != devices.dimension:
        problems.append(f"dimension {manifest.dimension} (devices embed {devices.dimension})")
    expected = devices.embedder or _device_embedder()
    if expected and f"{manifest.embedder.id}:{manifest.embedder.sha256}" != expected:
        problems.append(
            f"embedder {manifest.embedder.id}:{manifest.embedder.sha256[:12]}… (devices run {expected[:40]}…)"
        )
    if full_bytes > devices.max_full_bytes:
        problems.append(f"full bundle of {full_bytes} bytes (devices take at most {devices.max_full_bytes})")
    if problems:
        raise PublishRefused(
            f"gallery {manifest.gallery_version} cannot be loaded by the devices: " + "; ".join(problems)
        )


def _device_embedder() -> str:
    """The embedder this code base's devices run, as "id:sha256"."""
    from models import weights

    return f"{weights.EMBEDDER.model_id}:{weights.EMBEDDER_CLEAN_SHA256}"


def copy_bundle(source: Store, source_prefix: str, dest: Store, dest_prefix: str) -> int:
    """Copy one bundle, files listed in its manifest first and the manifest last. Returns bytes copied."""
    manifest_bytes = source.read_bytes(source_prefix + MANIFEST)
    if manifest_bytes is None:
        raise PublishError(f"{source.url}/{source_prefix}: no {MANIFEST} (incomplete build)")
    manifest = Manifest.model_validate_json(manifest_bytes)
    copied = 0
    for name in [*manifest.files, "manifest.sig"]:
        data = source.read_bytes(source_prefix + name)
        if data is None:
            raise PublishError(f"{source.url}/{source_prefix}{name} is missing (incomplete build)")
        dest.write_bytes(dest_prefix + name, data)
        copied += len(data)
    dest.write_bytes(dest_prefix + MANIFEST, manifest_bytes)
    return copied + len(manifest_bytes)


def publish(
    build_out: str,
    destination: str,
    scope: str = DEFAULT_SCOPE,
    devices: DeviceCapabilities | None = None,
    now: datetime | None = None,
) -> LatestPointer:
    """Publish a scope's last build in ``build_out`` under the gallery root ``destination``.

    Idempotent: a version already live is left as it is; an older build than the live one is
    refused. With ``devices``, a bundle they cannot load is refused before anything is copied.
    """
    source, dest = open_store(build_out), open_store(destination)
    src, dst = build_prefix(scope), published_prefix(scope)
    record = read_build_record(source, src)
    manifest_bytes = source.read_bytes(src + record.full + MANIFEST)
    if manifest_bytes is None:
        raise PublishError(f"{source.url}/{src}{record.full}: no {MANIFEST} (incomplete build)")
    manifest = Manifest.model_validate_json(manifest_bytes)
    if devices is not None:
        check_loadable(manifest, sum(f.size for f in manifest.files.values()), devices)
    live_bytes = dest.read_bytes(dst + POINTER)
    if live_bytes is not None:
        live = LatestPointer.parse(live_bytes, f"{dest.url}/{dst}{POINTER}")
        if live.gallery_version == record.gallery_version:
            log.info("gallery %s (%s) is already published at %s", live.gallery_version, scope, dest.url)
            return live
        if live.gallery_version > record.gallery_version:
            raise PublishError(
                f"{dest.url}/{dst}{POINTER} names {live.gallery_version}, newer than the build's "
                f"{record.gallery_version}; refusing to go back"
            )
    total = copy_bundle(source, src + record.full, dest, dst + record.full)
    for ref in record.all_deltas():
        total += copy_bundle(source, src + ref.path, dest, dst + ref.path)
    pointer = record.model_copy(update={"published_at": now or datetime.now(UTC)})
    dest.write_bytes(dst + POINTER, pointer.to_json().encode())  # last: devices now see the new version
    log.info("published gallery %s (%s) to %s (%d bytes)", pointer.gallery_version, scope, dest.url, total)
    return pointer


def announce(
    pointer: LatestPointer,
    host: str,
    port: int,
    ca: str,
    cert: str,
    key: str,
    timeout: float = 10.0,
    topic: str = ANNOUNCE_TOPIC,
) -> None:
    """Publish the pointer as a retained QoS 1 message on ``topic`` (mutual TLS).

    Retained, so a device that connects later still hears of the newest version.
    """
    from edge_app.mqtt_tls import MqttTlsError, mutual_tls_client

    try:
        client = mutual_tls_client("mpd-gallery-publisher", ca, cert, key)
    except MqttTlsError as error:
        raise PublishError(str(error)) from None
    try:
        client.connect(host, port, keepalive=30)
    except OSError as error:
        raise PublishError(f"cannot reach MQTT broker {host}:{port}: {error}") from None
    client.loop_start()
    try:
        info = client.publish(topic, pointer.to_json(), qos=1, retain=True)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise PublishError(f"MQTT broker {host}:{port} did not acknowledge the announcement in {timeout}s")
    finally:
        client.disconnect()
        client.loop_stop()


@click.command("publish")
@click.option("--build", "build_out", required=True, help="The build output (--out of `mpd gallery build`).")
@click.option("--to", "destination", required=True, help="Gallery root devices sync from: folder or s3://.")
@click.option("--mqtt-host", help="Announce on mpd/gallery/latest through this broker (IoT Core endpoint).")
@click.option("--mqtt-port", default=8883, show_default=True)
@click.option("--mqtt-ca", type=click.Path(exists=True, dir_okay=False))
@click.option("--mqtt-cert", type=click.Path(exists=True, dir_okay=False))
@click.option("--mqtt-key", type=click.Path(exists=True, dir_okay=False))
def publish_command(
    build_out: str,
    destination: str,
    mqtt_host: str | None,
    mqtt_port: int,
    mqtt_ca: str | None,
    mqtt_cert: str | None,
    mqtt_key: str | None,
) -> None:
    """Publish the newest built gallery and point devices at it."""
    try:
        pointer = publish(build_out, destination)
    except (PublishError, StoreError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps({"published": pointer.gallery_version, "to": destination}))
    if mqtt_host:
        if not (mqtt_ca and mqtt_cert and mqtt_key):
            raise click.UsageError("--mqtt-host needs --mqtt-ca, --mqtt-cert and --mqtt-key (mutual TLS)")
        try:
            announce(pointer, mqtt_host, mqtt_port, mqtt_ca, mqtt_cert, mqtt_key)
        except PublishError as error:
            # The pointer is already live; devices find it on their next poll.
            raise click.ClickException(f"published, but not announced: {error}") from None
        click.echo(f"announced on {ANNOUNCE_TOPIC}")
