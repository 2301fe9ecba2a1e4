"""The ``mpd`` command. Sub-commands are imported lazily so that a device command
never loads cloud code (and ``mpd --help`` stays fast)."""

from __future__ import annotations

import importlib

import click

# command name -> ("module:attribute" of a click command or group, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models.cli:models_group", "Check the pinned face models."),
    "identify": ("edge_app.identify:identify_command", "Identify faces in photos against a gallery bundle."),
    "edge": ("edge_app.cli:edge_group", "Run the device pipeline."),
    "sync": ("edge_app.gallery.cli:sync_command", "Fetch, verify and install the latest gallery."),
    "gallery": ("sync_service.gallery.cli:gallery_group", "Build and publish gallery bundles (cloud)."),
    "keys": ("sync_service.gallery.signing:keys_group", "Make gallery signing keys (cloud)."),
    "ingest": ("sync_service.ingest.cli:ingest_command", "Ingest cases from a public source (cloud)."),
    "dev": ("sync_service.dev_servers.cli:dev_group", "Local stand-ins for the source APIs."),
    "cloud": ("sync_service.alerts.cli:cloud_group", "Run the alert path and the nightly cycle locally."),
    "fleet": ("sync_service.fleet.cli:fleet_group", "Fleet health: one line per device, problems first (cloud)."),
    "users": ("sync_service.review.cli:users_group", "Reviewer accounts of the local review page."),
    "greengrass": ("greengrass.cli:greengrass_group", "Package for AWS IoT Greengrass v2."),
    "demo": ("demo.run:demo_command", "The whole chain on one machine, no AWS account."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target[0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # List commands from the table so that --help imports nothing.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, help_text) in sorted(COMMANDS.items())])


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Edge-first missing-person alerts: recognition, device pipeline, gallery, cloud."""
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
