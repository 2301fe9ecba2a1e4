"""``mpd greengrass``: package the device component and check Greengrass documents."""

from __future__ import annotations

import os
from pathlib import Path

import click

from greengrass import packaging


@click.group("greengrass")
def greengrass_group() -> None:
    """Package for AWS IoT Greengrass v2."""


@greengrass_group.command("package")
@click.option("--version", "version", required=True, help="Version of the application component (semver), e.g. 1.2.0.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--previous",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="release.json of the release devices run now: prints what each device will download.",
)
@click.option(
    "--bucket",
    default=lambda: os.environ.get("MPD_ARTIFACT_BUCKET", "mpd-greengrass-artifacts"),
    show_default="$MPD_ARTIFACT_BUCKET or mpd-greengrass-artifacts",
    help="S3 bucket the artifacts are uploaded to (same account and region as the components).",
)
@click.option("--prefix", default="greengrass", show_default=True, help="Key prefix inside the bucket.")
@click.option("--thing-group", default="mpd-field-cameras", show_default=True, help="Deployment target.")
@click.option("--region", default="REGION", show_default=True, help="For the deployment's target ARN.")
@click.option("--account", default="ACCOUNT_ID", show_default=True, help="For the deployment's target ARN.")
@click.option("--gallery-source", help="Where devices poll latest.json (s3://bucket/prefix or https://...).")
@click.option(
    "--gallery-public-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Ed25519 public key (PEM) the galleries are signed with; goes into the deployment.",
)
@click.option(
    "--health-deadline",
    type=int,
    default=packaging.HEALTH_DEADLINE_S,
    show_default=True,
    help="Seconds a new release has to show frames processed before its start counts as failed.",
)
def package_command(
    version: str,
    out_dir: Path,
    previous: Path | None,
    bucket: str,
    prefix: str,
    thing_group: str,
    region: str,
    account: str,
    gallery_source: str | None,
    gallery_public_key: Path | None,
    health_deadline: int,
) -> None:
    """Build the runtime, models and application components for both platforms, their
    recipes, a deployment naming all three, and release.json."""
    try:
        result = packaging.package(
            version,
            out_dir,
            bucket=bucket,
            prefix=prefix,
            thing_group=thing_group,
            region=region,
            account=account,
            gallery_source=gallery_source,
            gallery_public_key=gallery_public_key,
            previous=previous,
            health_deadline_s=health_deadline,
        )
    except packaging.PackagingError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:  # an unwritable --out, a full disk
        raise click.ClickException(f"cannot write the package: {error}") from None
    for name, component in result.release["components"].items():
        sizes = ", ".join(f"{p} {a['bytes'] / 1e6:.2f} MB" for p, a in sorted(component["artifacts"].items()))
        click.echo(f"{name:22} {component['version']:14} {sizes}")
    click.echo(f"recipes    {result.out_dir / 'recipes'}")
    click.echo(f"deployment {result.deployment}")
    click.echo(f"release    {result.out_dir / 'release.json'}")
    click.echo("a device downloads" + ("" if previous else " (first install)") + ":")
    for platform, plan in result.plan.items():
        parts = [f"{c['component']} {c['bytes'] / 1e6:.2f} MB" for c in plan["components"] if c["bytes"]]
        click.echo(f"  {platform:14} {plan['bytes'] / 1e6:8.2f} MB  {', '.join(parts) or 'nothing'}")
    click.echo("next:")
    click.echo(f"  aws s3 sync {result.out_dir / 'artifacts'} s3://{bucket}/{prefix}")
    for path in result.recipes:
        if any(path.name.startswith(f"{name}-") for name in result.new_components):
            click.echo(f"  aws greengrassv2 create-component-version --inline-recipe fileb://{path}")
    click.echo(f"  aws greengrassv2 create-deployment --cli-input-json file://{result.deployment}")


@greengrass_group.command("health-gate")
@click.option("--health-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--marker", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Written once this release is healthy; present means healthy before.")  # fmt: skip
@click.option("--deadline", type=float, default=float(packaging.HEALTH_DEADLINE_S), show_default=True)
@click.option("--now", is_flag=True, help="Report RUNNING at once (nothing to judge yet: no gallery).")
def health_gate_command(health_file: Path, marker: Path, deadline: float, now: bool) -> None:
    """Report RUNNING to the nucleus once the pipeline's health file shows frames processed
    (ERRORED after the deadline). Run beside the pipeline by the component's Startup step."""
    from greengrass.health_gate import RUNNING, HealthGateError, await_healthy, ipc_reporter

    try:
        report = ipc_reporter()
        if now:
            report(RUNNING)
            return
        parent = os.getppid()
        healthy = await_healthy(health_file, marker, deadline, report, still_wanted=lambda: os.getppid() == parent)
    except HealthGateError as error:
        raise click.ClickException(str(error)) from None
    if not healthy:
        raise SystemExit(1)


@greengrass_group.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
def check_command(files: tuple[Path, ...]) -> None:
    """Validate recipes (*.yaml, *.json with RecipeFormatVersion) and deployment documents."""
    failed = False
    for path in files:
        try:
            document = packaging.load_document(path)
            if "RecipeFormatVersion" in document:
                packaging.check_recipe(document)
            else:
                packaging.check_deployment(document)
        except packaging.PackagingError as error:
            failed = True
            click.echo(f"{path}: {error}", err=True)
        else:
            click.echo(f"{path}: ok")
    if failed:
        raise SystemExit(1)
