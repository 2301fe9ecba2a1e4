"""``mpd dev source-server``: run a local stand-in for a source API."""

from __future__ import annotations

import time
from pathlib import Path

import click

from sync_service.dev_servers.server import Faults, SourceServer


@click.group("dev")
def dev_group() -> None:
    """Local stand-ins for the public source APIs (tests, demo)."""


@dev_group.command("source-server")
@click.argument("source", type=click.Choice(["namus", "fbi", "interpol"]))
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder written by write_fixture_cases.",
)
@click.option("--port", default=0, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
@click.option(
    "--faults", default="", help="Fault spec, e.g. '5xx=2,429=1:3,slow=0.5,truncated=*' (see docs/ingest.md)."
)
def source_server_command(source: str, data: Path, port: int, faults: str) -> None:
    """Serve SOURCE's endpoints and JSON shapes from a fixture folder until interrupted."""
    try:
        parsed = Faults.parse(faults)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--faults") from None
    marker = data / "source.json"
    if marker.exists() and f'"{source}"' not in marker.read_text():
        raise click.BadParameter(f"{data} holds data for another source ({marker.read_text().strip()})")
    server = SourceServer(source, data, port, parsed).start()
    # Tests and scripts read the address from this first line.
    click.echo(f"{source} dev server listening on {server.url}", nl=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
