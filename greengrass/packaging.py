"""Build what AWS IoT Greengrass v2 deploys: the artifact zip, the recipe, a deployment.

``package()`` writes, for one platform:

    OUT/<platform>/mpd-edge.zip   the app wheel and every pinned dependency wheel for that
                                  platform, a hash-pinned requirements.lock and install.sh;
                                  installs with no network (pip --no-index)
    OUT/<component>-<version>.yaml  the recipe, with the artifact URIs of both platforms
    OUT/deployment.json           a deployment template for a thing group

Wheels come from the package index at build time (``pip download --only-binary=:all:``
for the target platform); pip's own cache makes a rebuild fast. hnswlib has no wheels
(sdist only) and is left out of the device install: it only serves galleries far larger
than a missing-person gallery, and building C++ on a camera is not an option.
Everything written is validated against the project's schemas in ``greengrass/schema``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

import yaml

from edge_app.gallery.bundle import sha256_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCHEMAS = HERE / "schema"
RECIPE_TEMPLATE = HERE / "recipes" / "edge-component.yaml"
INSTALL_SCRIPT = HERE / "recipes" / "install.sh"
RUN_SCRIPT = HERE / "recipes" / "run.sh"

COMPONENT_NAME = "com.mpd.EdgeAlerter"
PUBLISHER = "Missing-person alerts project"
ARTIFACT_DIR = "mpd-edge"  # Greengrass unpacks mpd-edge.zip into {artifacts:decompressedPath}/mpd-edge
ARTIFACT_FILE = f"{ARTIFACT_DIR}.zip"
APP_DISTRIBUTION = "missing-person-alerts"
PYTHON_VERSION = "3.11"

# Left out of the device install, with the reason (recorded in BUILD-INFO.json).
DEVICE_EXCLUDED = {
    "hnswlib": "sdist only (no wheels); exact search serves missing-person gallery sizes",
}
# Added to the device install beyond install_requires: the gallery sync agent reads
# s3:// sources through boto3 with Greengrass Token Exchange Service credentials.
DEVICE_EXTRAS = ("boto3",)

# Oldest glibc the device may have; opencv-python-headless 5 and cryptography wheels need 2.28.
GLIBC_MINOR_MIN, GLIBC_MINOR_MAX = 17, 28


@dataclass(frozen=True)
class Platform:
    name: str  # our name, used on the command line and in artifact paths
    greengrass_arch: str  # Platform.architecture in the recipe
    machine: str  # the wheel tag's machine part

    def pip_platforms(self) -> list[str]:
        # pip matches --platform tags exactly, so list every manylinux level we accept.
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(GLIBC_MINOR_MAX, GLIBC_MINOR_MIN - 1, -1)]
        return [*tags, f"manylinux2014_{self.machine}"]


PLATFORMS = {
    "linux-x86_64": Platform("linux-x86_64", "amd64", "x86_64"),
    "linux-aarch64": Platform("linux-aarch64", "aarch64", "aarch64"),
}

# Public components the deployment pins (check with `aws greengrassv2 list-component-versions`).
NUCLEUS_VERSION = "2.15.0"
DISK_SPOOLER_VERSION = "1.0.6"  # needs nucleus >=2.11.0 <2.16.0
TOKEN_EXCHANGE_VERSION = "2.0.3"
SPOOL_BYTES = 64 * 1024 * 1024


class PackagingError(RuntimeError):
    """A package could not be built, or a document fails its schema; the message says why."""


# --- schema checks ---------------------------------------------------------------------


@cache
def _validator(schema_name: str):
    try:
        from jsonschema import Draft202012Validator
    except ImportError:
        raise PackagingError("checking Greengrass documents needs jsonschema: pip install '.[cloud]'") from None
    schema = json.loads((SCHEMAS / schema_name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_errors(document: Any, schema_name: str) -> list[str]:
    """Every schema violation as ``path: message`` (empty when the document is valid)."""
    messages = []
    for error in _validator(schema_name).iter_errors(document):
        # "not valid under any of the given schemas" says little: report the branch that got
        # deepest into the document (the one whose type matched).
        while error.context:
            error = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type"))
        messages.append(f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}")
    return sorted(messages)


def check_recipe(recipe: dict) -> None:
    """Raise ``PackagingError`` if the recipe breaks the schema or the project's rules."""
    problems = schema_errors(recipe, "recipe.schema.json")
    defaults = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
    if isinstance(defaults, dict):
        device_part = {key: value for key, value in defaults.items() if key != "accessControl"}
        problems += [f"ComponentConfiguration/DefaultConfiguration{p}" for p in _numbers_in(device_part)]
    if not problems:
        problems = _publish_scope_problems(recipe)
    if problems:
        raise PackagingError("recipe is invalid:\n  " + "\n  ".join(problems))


def _publish_scope_problems(recipe: dict) -> list[str]:
    """The component may publish only to its own device's topics: mpd/{iot:thingName}/<name>."""
    allowed = re.compile(r"^mpd/\{iot:thingName\}/[a-z]+$")
    access = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {}).get("accessControl", {})
    problems = []
    for service, policies in access.items():
        for policy_id, policy in policies.items():
            for resource in policy["resources"]:
                if not allowed.match(resource):
                    problems.append(
                        f"accessControl/{service}/{policy_id}: resource {resource!r} is outside mpd/{{iot:thingName}}/"
                    )
    return problems


def check_deployment(deployment: dict) -> None:
    problems = schema_errors(deployment, "deployment.schema.json")
    for name, component in deployment.get("components", {}).items():
        merge = component.get("configurationUpdate", {}).get("merge")
        if merge is None:
            continue
        try:
            value = json.loads(merge)
        except json.JSONDecodeError as error:
            problems.append(f"components/{name}/configurationUpdate/merge: not JSON: {error}")
            continue
        if name == COMPONENT_NAME:
            problems += [f"components/{name}/configurationUpdate/merge: {p}" for p in _numbers_in(value)]
            problems += _gallery_problems(value, f"components/{name}/configurationUpdate/merge")
    if problems:
        raise PackagingError("deployment is invalid:\n  " + "\n  ".join(problems))


def _gallery_problems(configuration: Any, where: str) -> list[str]:
    """The device's own check of the gallery block (the same one that answers deployments)."""
    from edge_app.ipc_config import check_gallery_settings

    if not isinstance(configuration, dict):
        return [f"{where}: must be a JSON object"]
    try:
        check_gallery_settings(configuration.get("gallery"))
    except ValueError as error:
        return [f"{where}: {error}"]
    return []


def _numbers_in(value: Any, path: str = "") -> list[str]:
    """Numbers in our component's configuration must be strings (Greengrass may make floats)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float):
        return [f"{path or '/'} = {value!r}: write numbers as strings"]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _numbers_in(item, f"{path}/{i}")]
    return [p for key, item in value.items() for p in _numbers_in(item, f"{path}/{key}")]


def load_document(path: Path) -> dict:
    """A recipe (YAML or JSON) or deployment (JSON) from disk; errors name the file."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise PackagingError(f"{path}: {error.strerror or error}") from None
    try:
        document = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise PackagingError(
            f"{path}: not valid {'JSON' if Path(path).suffix == '.json' else 'YAML'}: {error}"
        ) from None
    if not isinstance(document, dict):
        raise PackagingError(f"{path}: expected a mapping at the top level")
    return document


# --- recipe and deployment -----------------------------------------------------------


def artifact_base(bucket: str, prefix: str, component: str, version: str) -> str:
    parts = [part for part in (prefix.strip("/"), component, version) if part]
    return f"s3://{bucket}/" + "/".join(parts)


def render_recipe(version: str, bucket: str, prefix: str = "greengrass", component: str = COMPONENT_NAME) -> dict:
    text = Template(RECIPE_TEMPLATE.read_text()).substitute(
        component_name=component,
        version=version,
        publisher=PUBLISHER,
        artifact_base=artifact_base(bucket, prefix, component, version),
        artifact_file=ARTIFACT_FILE,
        artifact_dir=ARTIFACT_DIR,
    )
    # A JSON round trip turns the template's YAML anchors into independent copies.
    recipe = json.loads(json.dumps(yaml.safe_load(text)))
    check_recipe(recipe)
    return recipe


def render_deployment(
    version: str,
    *,
    thing_group: str = "mpd-field-cameras",
    region: str = "REGION",
    account: str = "ACCOUNT_ID",
    component: str = COMPONENT_NAME,
    configuration: dict | None = None,
) -> dict:
    """A deployment for a thing group: exact versions, disk spool, roll back on failure."""
    nucleus_merge = {
        # Keep QoS 1 publishes across reboots and long outages (greengrass.md D3).
        "mqtt": {
            "spooler": {
                "storageType": "Disk",
                "pluginName": "aws.greengrass.DiskSpooler",
                "maxSizeInBytes": str(SPOOL_BYTES),
            }
        },
        # Lets {iot:thingName} in our accessControl resolve on every supported nucleus.
        "interpolateComponentConfiguration": True,
    }
    ours: dict[str, Any] = {"componentVersion": version}
    if configuration:
        ours["configurationUpdate"] = {"merge": json.dumps(configuration, sort_keys=True)}
    deployment = {
        "targetArn": f"arn:aws:iot:{region}:{account}:thinggroup/{thing_group}",
        "deploymentName": f"{component}-{version}",
        "components": {
            component: ours,
            "aws.greengrass.Nucleus": {
                "componentVersion": NUCLEUS_VERSION,
                "configurationUpdate": {"merge": json.dumps(nucleus_merge, sort_keys=True)},
            },
            "aws.greengrass.DiskSpooler": {"componentVersion": DISK_SPOOLER_VERSION},
            "aws.greengrass.TokenExchangeService": {"componentVersion": TOKEN_EXCHANGE_VERSION},
        },
        "deploymentPolicies": {
            "failureHandlingPolicy": "ROLLBACK",
            # Components are told before an update; ours finishes sending its outbox first.
            "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 60},
            "configurationValidationPolicy": {"timeoutInSeconds": 30},
        },
        "iotJobConfiguration": {
            "jobExecutionsRolloutConfig": {"maximumPerMinute": 50},
            "abortConfig": {
                "criteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "CANCEL",
                        "thresholdPercentage": 10,
                        "minNumberOfExecutedThings": 5,
                    }
                ]
            },
            "timeoutConfig": {"inProgressTimeoutInMinutes": 600},
        },
    }
    check_deployment(deployment)
    return deployment


def dump_recipe(recipe: dict) -> str:
    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(recipe, Dumper=NoAliases, sort_keys=False, width=200)


# --- wheels ------------------------------------------------------------------------------


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise PackagingError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def build_app_wheel(source: Path, dest: Path) -> Path:
    """Build the project wheel from a copy of ``source`` (the working tree is never written)."""
    with tempfile.TemporaryDirectory(prefix="mpd-src-") as tmp:
        copy_dir = Path(tmp) / "src"
        shutil.copytree(
            source,
            copy_dir,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "out"
            ),
        )
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest), str(copy_dir)],
            "building the app wheel",
        )
    wheels = sorted(dest.glob("missing_person_alerts-*.whl"))
    if len(wheels) != 1:
        raise PackagingError(f"expected one app wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def device_requirements(app_wheel: Path) -> list[str]:
    """The app's install requirements (without ``DEVICE_EXCLUDED``), plus ``DEVICE_EXTRAS``."""
    with zipfile.ZipFile(app_wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    chosen: dict[str, str] = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        specifier, _, marker = line.split(":", 1)[1].partition(";")
        specifier = specifier.strip()
        name = re.match(r"[A-Za-z0-9._-]+", specifier).group(0).lower()
        if name in DEVICE_EXCLUDED or (marker.strip() and name not in DEVICE_EXTRAS):
            continue
        chosen.setdefault(name, specifier)
    missing = [extra for extra in DEVICE_EXTRAS if extra not in chosen]
    if missing:
        raise PackagingError(f"{', '.join(missing)} must be declared in setup.py (an extra) to be pinned for devices")
    return list(chosen.values())


def download_wheels(requirements: list[str], platform: Platform, dest: Path) -> list[Path]:
    """Resolve and download binary wheels for the device (CPython 3.11 on ``platform``)."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(dest)]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311"]
    for tag in platform.pip_platforms():
        command += ["--platform", tag]
    _run(command + requirements, f"downloading wheels for {platform.name} (is the package index reachable?)")
    wheels = sorted(dest.glob("*.whl"))
    for wheel in wheels:
        if not _wheel_fits(wheel.name, platform):
            raise PackagingError(f"{wheel.name} is not a wheel for {platform.name}")
    return wheels


def _wheel_fits(filename: str, platform: Platform) -> bool:
    platform_tags = filename.removesuffix(".whl").split("-")[-1].split(".")
    return all(tag == "any" or tag.endswith(f"_{platform.machine}") for tag in platform_tags)


def lock_lines(wheels: list[Path]) -> list[str]:
    """``name==version --hash=sha256:...`` for each wheel (pip --require-hashes on the device)."""
    lines = []
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        lines.append(f"{name}=={version} --hash=sha256:{sha256_file(wheel)}")
    return lines


# --- the whole package -----------------------------------------------------------------


@dataclass(frozen=True)
class PackageResult:
    artifact: Path
    artifact_uri: str
    recipe: Path
    deployment: Path
    wheels: list[str]


def build_artifact(version: str, platform: Platform, out_dir: Path, source: Path = REPO) -> tuple[Path, list[str]]:
    """Write ``out_dir/<platform>/mpd-edge.zip`` atomically; return it and its wheel names."""
    target = out_dir / platform.name / ARTIFACT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mpd-artifact-") as tmp:
        stage = Path(tmp) / ARTIFACT_DIR
        wheels_dir = stage / "wheels"
        app_wheel = build_app_wheel(source, Path(tmp) / "app")
        dependencies = download_wheels(device_requirements(app_wheel), platform, wheels_dir)
        shutil.copy2(app_wheel, wheels_dir / app_wheel.name)
        (stage / "requirements.lock").write_text("\n".join(lock_lines(dependencies)) + "\n")
        shutil.copy2(INSTALL_SCRIPT, stage / "install.sh")
        shutil.copy2(RUN_SCRIPT, stage / "run.sh")
        wheel_names = sorted(p.name for p in wheels_dir.glob("*.whl"))
        build_info = {
            "component": COMPONENT_NAME,
            "component_version": version,
            "platform": platform.name,
            "python": PYTHON_VERSION,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "wheels": wheel_names,
            "excluded": DEVICE_EXCLUDED,
        }
        (stage / "BUILD-INFO.json").write_text(json.dumps(build_info, indent=2) + "\n")
        partial = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(stage.rglob("*")):
                # Wheels are zips already: store them, compress only the small text files.
                method = zipfile.ZIP_STORED if path.suffix == ".whl" else zipfile.ZIP_DEFLATED
                archive.write(path, path.relative_to(stage.parent).as_posix(), compress_type=method)
        partial.replace(target)
    return target, wheel_names


def package(
    version: str,
    platform_name: str,
    out_dir: Path,
    *,
    bucket: str,
    prefix: str = "greengrass",
    thing_group: str = "mpd-field-cameras",
    region: str = "REGION",
    account: str = "ACCOUNT_ID",
    gallery_source: str | None = None,
    gallery_public_key: Path | None = None,
    source: Path = REPO,
) -> PackageResult:
    if platform_name not in PLATFORMS:
        raise PackagingError(f"unknown platform {platform_name!r}: choose {' or '.join(PLATFORMS)}")
    platform = PLATFORMS[platform_name]
    out_dir = Path(out_dir)
    gallery: dict[str, str] = {}
    if gallery_source:
        gallery["source"] = gallery_source
    if gallery_public_key is not None:
        try:
            gallery["public_key_pem"] = Path(gallery_public_key).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise PackagingError(f"gallery public key {gallery_public_key}: {error}") from None
    # Fail fast on a bad version, bucket or gallery setting, before any download.
    recipe = render_recipe(version, bucket, prefix)
    deployment = render_deployment(
        version,
        thing_group=thing_group,
        region=region,
        account=account,
        configuration={"gallery": gallery} if gallery else None,
    )
    artifact, wheels = build_artifact(version, platform, out_dir, source)
    recipe_path = out_dir / f"{COMPONENT_NAME}-{version}.yaml"
    recipe_path.write_text(dump_recipe(recipe))
    deployment_path = out_dir / "deployment.json"
    deployment_path.write_text(json.dumps(deployment, indent=2) + "\n")
    uri = f"{artifact_base(bucket, prefix, COMPONENT_NAME, version)}/{platform.name}/{ARTIFACT_FILE}"
    return PackageResult(artifact, uri, recipe_path, deployment_path, wheels)
