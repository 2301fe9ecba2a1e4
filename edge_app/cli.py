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


def _load_gallery(bundle: Path, public_key: str | None, embedder_ref: dict):
    from edge_app.gallery.bundle import BundleError, load_bundle
    from edge_app.gallery.gallery import Gallery
    from edge_app.gallery.install import PUBLIC_KEY_ENV, load_public_key
    from edge_app.gallery.live import LiveGallery

    # A gallery directory managed by the sync agent points at its bundle with `current`.
    if (bundle / "current").is_dir() and not (bundle / "manifest.json").exists():
        bundle = (bundle / "current").resolve()
    key_source = public_key or os.environ.get(PUBLIC_KEY_ENV)
    try:
        key = load_public_key(key_source) if key_source else None
        if key is None:
            log.warning(
                "no gallery public key (--public-key or %s): the bundle's signature is not checked", PUBLIC_KEY_ENV
            )
        contents = load_bundle(bundle, public_key=key, require_signature=key is not None)
        return LiveGallery(Gallery.from_bundle(contents), embedder=embedder_ref)
    except BundleError as error:
        raise click.ClickException(f"gallery refused: {error}") from None


@edge_group.command("run")
@click.option(
    "--bundle",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Gallery bundle folder (or a gallery directory with a `current` link).",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Video file, camera index, rtsp/http URL or image folder; repeat for several cameras "
    "(ids cam0, cam1, ...). Default: the cameras in the configuration.",
)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML or JSON configuration file.")
@click.option("--publisher", type=click.Choice(["stdout", "file", "mqtt", "greengrass"]), help="Where events go.")
@click.option("--camera-id", help="Camera id for a single --source (default cam0).")
@click.option("--outbox", "outbox_path", type=click.Path(path_type=Path), help="Outbox SQLite file.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after this many frames per camera.")
@click.option("--realtime", is_flag=True, help="Pace a video file at its own fps, dropping frames when behind.")
@click.option("--public-key", help="Ed25519 public key (PEM file) the gallery must be signed with.")
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
    bundle: Path,
    sources: tuple[str, ...],
    config_file: Path | None,
    publisher: str | None,
    camera_id: str | None,
    outbox_path: Path | None,
    max_frames: int | None,
    realtime: bool,
    public_key: str | None,
    overlap_detection: bool,
    drain_timeout: float,
) -> None:
    """Detect, track and confirm faces from SRC against BUNDLE; confirmed matches go to the outbox
    and from there to the publisher. Ctrl-C or SIGTERM stop cleanly with a JSON summary."""
    from edge_app.config import ConfigError, load_config
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
    try:
        config = load_config(config_file, overrides=overrides)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not config.cameras:
        raise click.UsageError("no camera: give --source or list cameras in the configuration")

    try:
        models = FaceModels.load()
    except ModelFileError as error:
        raise click.ClickException(f"face models: {error}") from None
    live = _load_gallery(bundle, public_key, models.embedder_ref)
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

    def stop(signum, _frame) -> None:
        log.info("signal %s: stopping", signum)
        runner.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = runner.run()
        summary["outbox_drained"] = runner.drain_outbox(drain_timeout)
        summary["outbox_depth"] = runner.outbox.depth()
    finally:
        runner.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
