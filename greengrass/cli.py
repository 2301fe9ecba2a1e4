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
@click.option("--version", "version", required=True, help="Component version (semver), e.g. 1.2.0.")
@click.option("--platform", "platform_name", required=True, type=click.Choice(sorted(packaging.PLATFORMS)))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--bucket",
    default=lambda: os.environ.get("MPD_ARTIFACT_BUCKET", "mpd-greengrass-artifacts"),
    show_default="$MPD_ARTIFACT_BUCKET or mpd-greengrass-artifacts",
    help="S3 bucket the artifacts are uploaded to (same account and region as the component).",
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
def package_command(
    version: str,
    platform_name: str,
    out_dir: Path,
    bucket: str,
    prefix: str,
    thing_group: str,
    region: str,
    account: str,
    gallery_source: str | None,
    gallery_public_key: Path | None,
) -> None:
    """Build the artifact zip for one platform, the recipe and a deployment template.

    Run once per platform into the same --out: the recipe names both platforms' zips.
    """
    try:
        result = packaging.package(
            version,
            platform_name,
            out_dir,
            bucket=bucket,
            prefix=prefix,
            thing_group=thing_group,
            region=region,
            account=account,
            gallery_source=gallery_source,
            gallery_public_key=gallery_public_key,
        )
    except packaging.PackagingError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:  # an unwritable --out, a full disk
        raise click.ClickException(f"cannot write the package: {error}") from None
    size_mb = result.artifact.stat().st_size / 1e6
    click.echo(f"artifact   {result.artifact} ({size_mb:.1f} MB, {len(result.wheels)} wheels)")
    click.echo(f"recipe     {result.recipe}")
    click.echo(f"deployment {result.deployment}")
    click.echo("next:")
    click.echo(f"  aws s3 cp {result.artifact} {result.artifact_uri}")
    click.echo(f"  aws greengrassv2 create-component-version --inline-recipe fileb://{result.recipe}")
    click.echo(f"  aws greengrassv2 create-deployment --cli-input-json file://{result.deployment}")


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
