"""The ``mpd`` command. Sub-commands are imported lazily so that a device command
never loads cloud code (and ``mpd --help`` stays fast)."""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "models": "models.cli:models_group",
    "identify": "edge_app.identify:identify_command",
    "edge": "edge_app.cli:edge_group",
    "sync": "edge_app.gallery.sync_agent:sync_command",
    "gallery": "sync_service.gallery.cli:gallery_group",
    "keys": "sync_service.gallery.signing:keys_group",
    "ingest": "sync_service.ingest.cli:ingest_command",
    "dev": "sync_service.dev_servers.cli:dev_group",
    "cloud": "sync_service.alerts.cli:cloud_group",
    "greengrass": "greengrass.cli:greengrass_group",
    "demo": "demo.run:demo_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Edge-first missing-person alerts: recognition, device pipeline, gallery, cloud."""
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
