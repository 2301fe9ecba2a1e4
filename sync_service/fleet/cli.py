"""``mpd fleet status``: one line per device, problems first, from the same state the alarms use."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import click


@click.group("fleet")
def fleet_group() -> None:
    """See the devices: last heard, gallery, cameras, outbox, problems."""


@fleet_group.command("status")
@click.option("--interval", "interval_s", type=float, default=None,
              help="Health interval for devices that do not report theirs (default $MPD_HEALTH_INTERVAL_S or 60).")  # fmt: skip
@click.option("--stale-hours", type=float, default=None, help="A gallery older than this is a problem (default 48).")
@click.option("--published", "published_url", envvar="MPD_PUBLISHED_URL",
              help="Gallery root (folder or s3://) to report the live versions' age.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device instead of text.")
def status_command(
    interval_s: float | None, stale_hours: float | None, published_url: str | None, as_json: bool
) -> None:
    """Per-device state from DynamoDB ($MPD_DEVICE_TABLE, moto with AWS_ENDPOINT_URL) or the local
    SQLite file $MPD_ALERT_DIR/fleet.sqlite3 that `mpd cloud serve` fills. Exit 1 if any device
    has a problem."""
    from sync_service.fleet.handler import fleet_view, published_ages
    from sync_service.fleet.state import version_age
    from sync_service.fleet.stores import open_device_store

    now = datetime.now(UTC)
    interval = interval_s or float(os.environ.get("MPD_HEALTH_INTERVAL_S", "60"))
    stale = timedelta(hours=stale_hours or float(os.environ.get("MPD_STALE_GALLERY_HOURS", "48")))
    try:
        rows = fleet_view(open_device_store(), now, interval_s=interval, stale_after=stale)
        galleries = published_ages(published_url, now)
    except Exception as error:  # the table or the bucket cannot be reached: say which
        raise click.ClickException(f"cannot read the fleet state: {error}") from None
    for root, age in sorted(galleries.items()):
        flag = "  STALE" if age > stale else ""
        click.echo(f"published {root}: {_age(age)} old{flag}")
    for state, found in rows:
        if as_json:
            click.echo(json.dumps({**state.model_dump(mode="json"), "problems": found}))
            continue
        cameras = " ".join(f"{cid}={c.fps:g}fps" + ("" if c.state == "up" else f"({c.state})")
                           for cid, c in sorted(state.cameras.items())) or "-"  # fmt: skip
        age = version_age(state.gallery_version, now)
        gallery = f"{state.gallery_version or '-'}" + (f" ({_age(age)})" if age is not None else "")
        mark = "PROBLEM " + "; ".join(found) if found else "ok"
        click.echo(
            f"{state.device_id:<24} seen {_age(now - state.last_seen)} ago  gallery {gallery}  "
            f"cameras {cameras}  outbox {state.outbox_depth}  {mark}"
        )
    if not rows:
        click.echo("no device has reported yet")
    if any(found for _, found in rows):
        raise SystemExit(1)


def _age(delta: timedelta) -> str:
    from sync_service.fleet.state import _human

    return _human(delta)
