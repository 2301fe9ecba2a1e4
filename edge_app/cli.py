"""``mpd edge run``: the device pipeline from a source to confirmed matches.

stdout stays machine-readable (events from the stdout publisher, then one JSON summary);
the live status line and logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

log = logging.getLogger(__name__)


@click.group("edge")
def edge_group() -> None:
    """Run the device pipeline."""


def _public_key(config_value: str):
    """The gallery public key from the configuration (or --public-key), else MPD_GALLERY_PUBLIC_KEY; None if neither."""
    from edge_app.config import public_key_material
    from edge_app.gallery.bundle import BundleError
    from edge_app.gallery.install import PUBLIC_KEY_ENV, load_public_key

    source = config_value or os.environ.get(PUBLIC_KEY_ENV)
    if not source:
        return None
    try:
        return load_public_key(public_key_material(source))
    except BundleError as error:
        raise click.ClickException(f"gallery public key: {error}") from None


def _load_gallery(bundle: Path, key, embedder_ref: dict, allow_unsigned: bool):
    """The bundle, verified: signed with ``key``; unsigned (or no key to check with) only when
    ``allow_unsigned`` says so explicitly. A bad signature is refused whatever the flag."""
    from edge_app.gallery.bundle import SIGNATURE, BundleError, load_bundle
    from edge_app.gallery.gallery import Gallery
    from edge_app.gallery.install import PUBLIC_KEY_ENV
    from edge_app.gallery.live import LiveGallery

    if not bundle.is_dir():
        raise click.ClickException(f"gallery refused: {bundle} is not a folder")
    # A gallery directory managed by the sync agent points at its bundle with `current`.
    if (bundle / "current").is_dir() and not (bundle / "manifest.json").exists():
        bundle = (bundle / "current").resolve()
    check_signature = key is not None and (bundle / SIGNATURE).exists()
    if not check_signature:
        why = (
            f"no gallery public key to check its signature (--public-key, gallery.public_key or {PUBLIC_KEY_ENV})"
            if key is None
            else f"unsigned bundle ({SIGNATURE} is missing)"
        )
        if not allow_unsigned:
            raise click.ClickException(
                f"gallery refused: {bundle}: {why}; --allow-unsigned runs it unchecked (tests and demos only)"
            )
        log.warning("running an unchecked gallery (--allow-unsigned): %s", why)
    try:
        contents = load_bundle(bundle, public_key=key if check_signature else None, require_signature=check_signature)
        return LiveGallery(Gallery.from_bundle(contents), embedder=embedder_ref)
    except BundleError as error:
        raise click.ClickException(f"gallery refused: {error}") from None


def _start_gallery_sync(gallery_dir: Path, settings, key, embedder_ref: dict):
    """The sync agent on the device gallery directory and the live gallery it swaps into.

    The pipeline starts on the installed gallery (verified by the agent); with none
    installed yet it waits for one sync, and fails if that brings nothing.
    """
    from edge_app.gallery.bundle import BundleError, ModelRef
    from edge_app.gallery.gallery import Gallery
    from edge_app.gallery.live import LiveGallery
    from edge_app.gallery.pointer import scope_source
    from edge_app.gallery.sync_agent import SyncAgent, SyncError

    if (gallery_dir / "manifest.json").exists():
        raise click.UsageError(
            f"{gallery_dir} is a bundle folder; with a gallery source give the device gallery directory "
            "the sync agent manages (it holds versions/ and the current link)"
        )
    if key is None:
        raise click.UsageError("a gallery source needs the gallery public key (--public-key or gallery.public_key)")
    try:
        agent = SyncAgent(
            scope_source(settings.source, settings.scope),
            gallery_dir,
            key,
            embedder=ModelRef(**embedder_ref),
            interval=settings.interval_s,
            sync_deadline_s=settings.sync_deadline_s,
            keep_free_bytes=int(settings.min_free_mb * 1024 * 1024),
        )
        if agent.current_bundle is None:
            result = agent.sync_once()
            if agent.current_bundle is None:
                raise click.ClickException(
                    f"gallery refused: none installed in {gallery_dir} and the first sync from "
                    f"{settings.source} failed: {result.detail}"
                )
        live = LiveGallery(Gallery.from_bundle(agent.current_bundle), embedder=embedder_ref)
    except (SyncError, BundleError, OSError) as error:
        raise click.ClickException(f"gallery refused: {error}") from None
    agent.on_swap = live.swap_bundle  # from now on each verified new gallery goes into the running pipeline
    return agent, live


def _read_component_configuration():
    """The Greengrass component configuration over IPC: the open connection and its device part."""
    from edge_app.ipc_config import ComponentConfiguration, IpcConfigError

    try:
        component = ComponentConfiguration.connect()
        return component, component.read()
    except IpcConfigError as error:
        raise click.ClickException(f"cannot read the component configuration: {error}") from None


@edge_group.command("run")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    help="Gallery bundle folder, or a device gallery directory with a `current` link (the one the "
    "sync agent keeps fresh with a gallery source). Default: gallery.dir.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Video file, camera index, rtsp/http URL or image folder; repeat for several cameras "
    "(ids cam0, cam1, ...). Default: the cameras in the configuration.",
)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML or JSON configuration file.")
@click.option(
    "--publisher",
    type=click.Choice(["stdout", "file", "mqtt", "greengrass"]),
    help="Where events go. greengrass also reads the component configuration over IPC and follows its updates.",
)
@click.option("--camera-id", help="Camera id for a single --source (default cam0).")
@click.option("--outbox", "outbox_path", type=click.Path(path_type=Path), help="Outbox SQLite file.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after this many frames per camera.")
@click.option("--realtime", is_flag=True, help="Pace a video file at its own fps, dropping frames when behind.")
@click.option("--public-key", help="Ed25519 public key (PEM file) the gallery must be signed with.")
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="Run a --bundle that is unsigned, or with no public key to check it (tests and demos only).",
)
@click.option(
    "--gallery-from",
    help="Keep the gallery fresh while running: a folder, http(s):// or s3:// gallery root (gallery.source).",
)
@click.option("--gallery-interval", type=float, help="Seconds between gallery polls (gallery.interval_s).")
@click.option(
    "--overlap-detection",
    is_flag=True,
    help="Detect the next frame in a second thread while this one is embedded (for devices with spare cores).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds to let queued events go out before exit (the rest stay in the outbox).",
)
def run_command(
    bundle: Path | None,
    sources: tuple[str, ...],
    config_file: Path | None,
    publisher: str | None,
    camera_id: str | None,
    outbox_path: Path | None,
    max_frames: int | None,
    realtime: bool,
    public_key: str | None,
    allow_unsigned: bool,
    gallery_from: str | None,
    gallery_interval: float | None,
    overlap_detection: bool,
    drain_timeout: float,
) -> None:
    """Detect, track and confirm faces from SRC against the gallery; confirmed matches go to the
    outbox and from there to the publisher. Ctrl-C or SIGTERM stop cleanly with a JSON summary."""
    from edge_app.config import ConfigError, load_config
    from edge_app.ipc_config import attach_to_runner, running_under_greengrass
    from edge_app.outbox import OutboxError
    from edge_app.pipeline.capture import SourceError
    from edge_app.pipeline.runner import EdgeRunner
    from edge_app.publishers import PublishError, make_publisher
    from models.recognizer import FaceModels, ModelFileError

    overrides: dict = {}
    if publisher:
        overrides["publisher"] = publisher
    if outbox_path:
        overrides["outbox"] = {"path": str(outbox_path)}
    if sources:
        if camera_id and len(sources) > 1:
            raise click.UsageError("--camera-id names a single --source")
        ids = [camera_id or "cam0"] if len(sources) == 1 else [f"cam{i}" for i in range(len(sources))]
        overrides["cameras"] = [{"id": i, "source": s} for i, s in zip(ids, sources, strict=True)]
    gallery_overrides = {"source": gallery_from, "interval_s": gallery_interval, "public_key": public_key}
    if any(value is not None for value in gallery_overrides.values()):
        overrides["gallery"] = {k: v for k, v in gallery_overrides.items() if v is not None}

    # On Greengrass the deployment's component configuration is the device configuration.
    component, component_config = None, None
    if publisher == "greengrass" or running_under_greengrass():
        component, component_config = _read_component_configuration()
    try:
        config = load_config(config_file, component_config=component_config, overrides=overrides)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not config.cameras:
        raise click.UsageError("no camera: give --source or list cameras in the configuration")
    bundle = bundle or config.gallery.dir
    if bundle is None:
        raise click.UsageError("no gallery: give --bundle or gallery.dir")

    try:
        models = FaceModels.load()
    except ModelFileError as error:
        raise click.ClickException(f"face models: {error}") from None
    key = _public_key(config.gallery.public_key)
    agent, listener = None, None
    if config.gallery.source:
        agent, live = _start_gallery_sync(bundle, config.gallery, key, models.embedder_ref)
        listener = _listen_for_announcements(agent, config)
    else:
        live = _load_gallery(bundle, key, models.embedder_ref, allow_unsigned)
    try:
        pub = make_publisher(config)
    except PublishError as error:
        raise click.ClickException(str(error)) from None
    try:
        runner = EdgeRunner(
            config, models, live, pub, realtime=realtime, max_frames=max_frames, overlap=overlap_detection
        )
        runner.open_cameras()
    except (SourceError, OutboxError) as error:
        pub.close()
        raise click.ClickException(str(error)) from None
    if component is not None:
        attach_to_runner(runner, component)  # validated updates reach the running pipeline
    if agent is not None:
        agent.start()  # polls (and wakes on announcements) in its own low-priority thread

    def stop(signum, _frame) -> None:
        log.info("signal %s: stopping", signum)
        runner.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = runner.run()
        summary["outbox_drained"] = runner.drain_outbox(drain_timeout)
        summary["outbox_depth"] = runner.outbox.depth()
    finally:
        if listener is not None:
            listener.close()
        if agent is not None:
            agent.stop()
        if component is not None:
            component.close()
        runner.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()


def _listen_for_announcements(agent, config):
    """Wake the agent on the retained ``mpd/gallery/latest`` message, with the device's MQTT identity."""
    from edge_app.gallery.announcements import AnnouncementListener
    from edge_app.gallery.pointer import announce_topic
    from edge_app.mqtt_tls import MqttTlsError

    if not config.gallery.announcements:
        return None
    mqtt = config.mqtt
    # Its own client id: a broker (IoT Core too) disconnects an older connection with the same id.
    client_id = f"{mqtt.client_id or config.device_id}-gallery"
    try:
        return AnnouncementListener(
            agent, mqtt.host, mqtt.port, mqtt.ca, mqtt.cert, mqtt.key, client_id, announce_topic(config.gallery.scope)
        )
    except MqttTlsError as error:
        raise click.ClickException(str(error)) from None
