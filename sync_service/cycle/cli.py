"""``mpd cloud cycle``: the nightly cycle on one machine (embedded defaults or moto)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click


@click.command("cycle")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Cycle configuration (YAML/JSON); default $MPD_CYCLE_CONFIG, else every source, one scope.")  # fmt: skip
@click.option("--now", "now_text", help="The cycle's clock (ISO 8601, UTC); default: now. Simulates any night.")
@click.option("--no-ingest", is_flag=True, help="Skip the ingest (build, publish and prune what is stored).")
@click.option("--lambda-seconds", type=click.FloatRange(min=30), default=None,
              help="Stop each stage call after this long and call it again, as Lambda's limit does.")  # fmt: skip
def cycle_command(config_path: str | None, now_text: str | None, no_ingest: bool, lambda_seconds: float | None) -> None:
    """Run one cycle now: ingest -> build -> publish (latest.json last, announcement) -> prune.

    Locations come from the configuration or MPD_STORE_URL, MPD_BUILD_URL, MPD_PUBLISHED_URL
    (folders, or s3:// with AWS_ENDPOINT_URL for moto). Exit status 1 if any stage failed;
    the published gallery is then the last good one.
    """
    from sync_service.cycle.config import CycleConfigError, load_cycle_config
    from sync_service.cycle.runner import run_cycle
    from sync_service.cycle.stages import announcer_for
    from sync_service.gallery.signing import SigningKeyError, load_private_key

    try:
        config = load_cycle_config(config_path)
        key = load_private_key()
    except (CycleConfigError, SigningKeyError) as error:
        raise click.ClickException(str(error)) from None
    try:
        now = datetime.fromisoformat(now_text.replace("Z", "+00:00")) if now_text else datetime.now(UTC)
    except ValueError:
        raise click.BadParameter(f"{now_text!r} is not an ISO 8601 time", param_hint="--now") from None
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    result = run_cycle(
        config, now, announcer=announcer_for(config), key=key, seconds_per_call=lambda_seconds, ingest=not no_ingest
    )
    click.echo(json.dumps(result, indent=1, default=str))
    if not result["outcome"]["ok"]:
        raise click.ClickException("cycle finished with problems: " + "; ".join(result["outcome"]["problems"]))


@click.command("package")
@click.option("--out", type=click.Path(file_okay=False), default="build/lambda", show_default=True,
              help="Where each function's folder and zip go (template.yaml's CodeUri).")  # fmt: skip
@click.option("--function", "names", multiple=True, help="Only these functions (default: all).")
@click.option("--wheelhouse", type=click.Path(file_okay=False), help="Wheel cache (default OUT/wheelhouse).")
@click.option("--relock", is_flag=True, help="Resolve the lock files again from setup.py's ranges first.")
def package_command(out: str, names: tuple[str, ...], wheelhouse: str | None, relock: bool) -> None:
    """Package each Lambda from pinned manylinux wheels (CPython 3.11, x86_64), offline once fetched."""
    from pathlib import Path

    from sync_service.deploy.package import PackagingError, package

    try:
        results = package(Path(out), list(names) or None, Path(wheelhouse) if wheelhouse else None, relock)
    except PackagingError as error:
        raise click.ClickException(str(error)) from None
    for result in results:
        click.echo(json.dumps(result))
