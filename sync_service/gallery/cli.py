"""``mpd gallery``: build and publish gallery bundles."""

from __future__ import annotations

from pathlib import Path

import click

from sync_service.gallery.publish import publish_command


@click.group("gallery")
def gallery_group() -> None:
    """Build, sign and publish gallery bundles."""


@gallery_group.command("build")
@click.option(
    "--photos",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of <person_id>/<photo> (plus optional persons.json).",
)
@click.option("--store", help="Ingest store: a folder or s3://bucket/prefix.")
@click.option("--out", required=True, help="Output bundle folder (or, with --store, a folder or s3:// URL).")
def build_command(photos: Path | None, store: str | None, out: str) -> None:
    """Build a gallery bundle from a photo folder or from the ingest store."""
    if (photos is None) == (store is None):
        raise click.UsageError("give exactly one of --photos or --store")
    if photos is not None:
        from sync_service.gallery.enrol import build_from_photos_command

        build_from_photos_command(photos, Path(out))
    else:
        from sync_service.gallery.nightly import build_from_store_command

        build_from_store_command(store, out)


gallery_group.add_command(publish_command)
