"""``mpd ingest namus|fbi|interpol``: fetch public cases into the store."""

from __future__ import annotations

import json
import signal
import sys
from types import FrameType

import click

DEFAULT_URLS = {
    "namus": "https://www.namus.gov",
    "fbi": "https://api.fbi.gov",
    "interpol": "https://ws-public.interpol.int",
}


@click.command("ingest")
@click.argument("source", type=click.Choice(sorted(DEFAULT_URLS)))
@click.option("--base-url", help="Source API root (default: the public service; a dev server in tests).")
@click.option("--store", "store_url", default="ingest-store", show_default=True, help="Folder or s3://bucket/prefix.")
@click.option("--states", help="NamUs only: comma-separated states, names or codes (e.g. 'CA,Virgin Islands').")
@click.option("--limit", type=click.IntRange(min=1), help="Process at most N cases (no vanished-case check).")
@click.option("--rate-limit", default=1.0, show_default=True, type=click.FloatRange(min=0.001), help="Requests/s.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Read timeout, s.")
@click.option("--retries", default=4, show_default=True, type=click.IntRange(min=0), help="Retries per request.")
@click.option("--all-photo-categories", is_flag=True, help="NamUs: keep every public photo, not only portraits.")
@click.option("--photo-host", "photo_hosts", multiple=True, metavar="HOST[:PORT]",
              help="Allow photos from this host (repeatable; replaces the source's defaults, e.g. www.fbi.gov; "
                   "the API's own host is always allowed).")  # fmt: skip
@click.option("--allow-loopback", is_flag=True, default=None,
              help="Allow sources on loopback addresses (local dev servers; also $MPD_SOURCES_ALLOW_LOOPBACK=1). "
                   "Private and link-local addresses are never fetched.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def ingest_command(
    source: str,
    base_url: str | None,
    store_url: str,
    states: str | None,
    limit: int | None,
    rate_limit: float,
    timeout: float,
    retries: int,
    all_photo_categories: bool,
    photo_hosts: tuple[str, ...],
    allow_loopback: bool | None,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Fetch new and changed cases of SOURCE into the store; mark resolved and vanished ones removed.

    Safe to stop at any time: running the same command again resumes from the checkpoint.
    """
    from sync_service.http import HttpError, PoliteClient
    from sync_service.ingest.engine import Ingest, SourceDown
    from sync_service.sources import make_adapter
    from sync_service.store import StoreError, open_store

    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{base_url!r} is not an http(s) URL", param_hint="--base-url")
    wanted = [s.strip() for s in states.split(",") if s.strip()] if states else None
    if wanted and source != "namus":
        raise click.BadParameter("only NamUs is listed by state", param_hint="--states")
    # Not given: $MPD_SOURCES_ALLOW_LOOPBACK decides (off unless set).
    client = PoliteClient(
        rate_limit, read_timeout=timeout, max_attempts=retries + 1, allow_loopback=allow_loopback or None
    )
    adapter = make_adapter(source, base_url or DEFAULT_URLS[source], client=client, photo_hosts=photo_hosts or None)
    if all_photo_categories and source == "namus":
        adapter.categories = None  # type: ignore[attr-defined]
    # A stop request (ECS/Batch send SIGTERM) unwinds like Ctrl-C, so the checkpoint
    # is written on the way out and the next run loses nothing.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        store = open_store(store_url)
        run = Ingest(
            adapter,
            store,
            scopes=wanted,
            limit=limit,
            progress=sys.stderr.isatty() if progress is None else progress,
        )
        summary = run.run()
    except ValueError as error:  # e.g. an unknown state
        raise click.BadParameter(str(error)) from None
    except (SourceDown, HttpError, StoreError) as error:
        click.echo(f"ingest stopped: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("ingest interrupted; the checkpoint is saved: run the same command again to resume", err=True)
        sys.exit(130)
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=1, sort_keys=True))
    else:
        for line in summary.lines():
            click.echo(line)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
