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
from sync_service.store import Store, StoreError, open_store

log = logging.getLogger(__name__)

BUILD_RECORD = "gallery/build.json"  # in the build output: a LatestPointer for the last build
BUILD_ROOT = "gallery/"  # bundles live under <out>/gallery/<version>/{full,delta}/


class PublishError(RuntimeError):
    pass


def read_build_record(out: Store) -> LatestPointer:
    data = out.read_bytes(BUILD_RECORD)
    if data is None:
        raise PublishError(f"{out.url}: no {BUILD_RECORD}; run `mpd gallery build --store ... --out ...` first")
    return LatestPointer.parse(data, f"{out.url}/{BUILD_RECORD}")


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


def publish(build_out: str, destination: str) -> LatestPointer:
    """Publish the last build in ``build_out`` to the gallery root ``destination``."""
    source, dest = open_store(build_out), open_store(destination)
    record = read_build_record(source)
    total = copy_bundle(source, BUILD_ROOT + record.full, dest, record.full)
    for ref in record.all_deltas():
        total += copy_bundle(source, BUILD_ROOT + ref.path, dest, ref.path)
    pointer = record.model_copy(update={"published_at": datetime.now(UTC)})
    dest.write_bytes(POINTER, pointer.to_json().encode())  # last: devices now see the new version
    log.info("published gallery %s to %s (%d bytes)", pointer.gallery_version, dest.url, total)
    return pointer


def announce(pointer: LatestPointer, host: str, port: int, ca: str, cert: str, key: str, timeout: float = 10.0) -> None:
    """Publish the pointer as a retained QoS 1 message on ``mpd/gallery/latest`` (mutual TLS).

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
        info = client.publish(ANNOUNCE_TOPIC, pointer.to_json(), qos=1, retain=True)
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
