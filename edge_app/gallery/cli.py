"""``mpd sync``: the device's gallery sync agent as a command (once, or running and polling).

The agent itself lives in ``sync_agent.py``; this module turns its errors into
command-line errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from edge_app.gallery.bundle import BundleError
from edge_app.gallery.install import PUBLIC_KEY_ENV, load_public_key
from edge_app.gallery.pointer import SCOPE_PATTERN, announce_topic, scope_source
from edge_app.mqtt_tls import MqttTlsError


def resolve_public_key(path: str | None):
    source = path or os.environ.get(PUBLIC_KEY_ENV)
    if not source:
        raise click.UsageError(f"give --public-key or set {PUBLIC_KEY_ENV} to the gallery public key (PEM file)")
    try:
        return load_public_key(source)
    except BundleError as error:
        raise click.ClickException(str(error)) from None


@click.command("sync")
@click.option("--from", "source", required=True, help="Gallery root: a folder, http(s):// URL or s3://bucket/prefix.")
@click.option("--dir", "gallery_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The device's gallery directory.")  # fmt: skip
@click.option("--public-key", help=f"Gallery public key (PEM); default ${PUBLIC_KEY_ENV}.")
@click.option("--scope", envvar="MPD_GALLERY__SCOPE", default="", show_default=True,
              help="Regional gallery to take (as the cloud names it); empty: the whole gallery.")  # fmt: skip
@click.option("--once", is_flag=True, help="Sync once and exit (status 1 if the sync failed).")
@click.option("--interval", default=3600.0, show_default=True, help="Seconds between polls.")
@click.option("--mqtt-host", help="Also sync on announcements on mpd/gallery/latest from this broker.")
@click.option("--mqtt-port", default=8883, show_default=True)
@click.option("--mqtt-ca", type=click.Path(exists=True, dir_okay=False))
@click.option("--mqtt-cert", type=click.Path(exists=True, dir_okay=False))
@click.option("--mqtt-key", type=click.Path(exists=True, dir_okay=False))
@click.option("--client-id", default="mpd-gallery-sync", show_default=True, help="MQTT client id.")
def sync_command(
    source: str,
    gallery_dir: Path,
    public_key: str | None,
    scope: str,
    once: bool,
    interval: float,
    mqtt_host: str | None,
    mqtt_port: int,
    mqtt_ca: str | None,
    mqtt_cert: str | None,
    mqtt_key: str | None,
    client_id: str,
) -> None:
    """Fetch, verify and install the latest gallery."""
    from edge_app.gallery.announcements import AnnouncementListener
    from edge_app.gallery.sync_agent import SyncAgent, SyncError

    if scope and not re.match(SCOPE_PATTERN, scope):
        raise click.BadParameter(
            f"{scope!r} is not a scope name (lower-case letters, digits, '-')", param_hint="--scope"
        )
    try:
        agent = SyncAgent(scope_source(source, scope), gallery_dir, resolve_public_key(public_key), interval=interval)
    except (SyncError, BundleError, OSError) as error:
        raise click.ClickException(str(error)) from None
    if not once:
        listener = None
        if mqtt_host:
            if not (mqtt_ca and mqtt_cert and mqtt_key):
                raise click.UsageError("--mqtt-host needs --mqtt-ca, --mqtt-cert and --mqtt-key (mutual TLS)")
            try:
                listener = AnnouncementListener(
                    agent, mqtt_host, mqtt_port, mqtt_ca, mqtt_cert, mqtt_key, client_id, announce_topic(scope)
                )
            except MqttTlsError as error:
                raise click.ClickException(str(error)) from None
        agent.start()
        try:
            while agent._thread.is_alive():
                agent._thread.join(1.0)
        except KeyboardInterrupt:
            agent.stop()
        finally:
            if listener is not None:
                listener.close()
        return
    result = agent.sync_once()
    click.echo(
        f"gallery {result.status}: {result.version or 'none installed'}{' - ' + result.detail if result.detail else ''}"
    )
    if result.status == "failed":
        raise SystemExit(1)
