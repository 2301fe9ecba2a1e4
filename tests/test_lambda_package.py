"""Lambda packages as AWS runs them: built from the pinned manylinux2014 wheels for CPython
3.11, each handler imported (and briefly exercised) from its folder alone, in an isolated
interpreter with no site-packages (`python -I -S`), under Lambda's 250 MB limit, and the
same bytes when built twice.

The first run downloads the locked wheels (PyPI; pip's cache serves later runs); after
that the packaging runs offline from the wheelhouse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sync_service.deploy.package import FUNCTIONS, LAMBDA_UNZIPPED_LIMIT, MODEL_DIR, RUNTIME_SDK, package
from tests.test_template import HANDLERS, TEMPLATE

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    out = tmp_path_factory.mktemp("lambda")
    wheelhouse = Path(os.environ.get("MPD_LAMBDA_WHEELHOUSE", Path.home() / ".cache" / "mpd-lambda-wheelhouse"))
    results = package(out, wheelhouse=wheelhouse)
    return out, {r["function"]: r for r in results}


@pytest.fixture(scope="module")
def runtime_sdk(tmp_path_factory) -> Path:
    """Stands in for the runtime's own AWS SDK (/var/runtime), which the build function relies on."""
    folder = tmp_path_factory.mktemp("var-runtime")
    import boto3

    site = Path(boto3.__file__).resolve().parents[1]
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3"):
        (folder / name).symlink_to(site / name)
    return folder


def run_isolated(paths: list[Path], code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in `python -I -S` with only ``paths`` (and the standard library) importable."""
    prelude = f"import sys; sys.path[:0] = {[str(p) for p in paths]!r}\n"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + code],
        capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_locks_cover_what_setup_py_declares_now():
    from sync_service.deploy.package import lock_is_current

    stale = [name for name, function in FUNCTIONS.items() if not lock_is_current(function)]
    assert not stale, f"lock files out of date for {stale}: run `mpd cloud package --relock`"


def test_every_template_function_has_a_package_with_its_handler():
    from cfnlint.decode import decode

    resources = decode(str(TEMPLATE))[0]["Resources"]
    for name, handler in HANDLERS.items():
        folder = resources[name]["Properties"]["CodeUri"].rstrip("/").rsplit("/", 1)[-1]
        function = FUNCTIONS[folder]
        from sync_service.deploy.package import EXTRA_HANDLERS

        assert handler in (function.handler, *EXTRA_HANDLERS.get(folder, ())), (name, folder)


def test_each_handler_imports_from_its_package_alone_and_fits_lambda(packaged, runtime_sdk, tmp_path, faces_dir):
    out, results = packaged
    for name, result in results.items():
        assert result["unzipped_mb"] * 2**20 <= LAMBDA_UNZIPPED_LIMIT, result
        folder = out / name
        paths = [folder] + ([runtime_sdk] if FUNCTIONS[name].runtime_sdk else [])
        handlers = [FUNCTIONS[name].handler]
        from sync_service.deploy.package import EXTRA_HANDLERS

        handlers += EXTRA_HANDLERS.get(name, [])
        code = "import importlib\n" + "".join(
            f"assert callable(getattr(importlib.import_module({h.rsplit('.', 1)[0]!r}), {h.rsplit('.', 1)[1]!r}))\n"
            for h in handlers
        )
        # Nothing outside the package (and the standard library) was imported.
        code += "import sys\nassert all(not (getattr(m, '__file__', '') or '').startswith(" + repr(str(Path(sys.prefix))) + ") for m in list(sys.modules.values()))\n"  # fmt: skip
        run_isolated(paths, code)
        assert not FUNCTIONS[name].runtime_sdk or not (folder / "botocore").exists()
        assert FUNCTIONS[name].runtime_sdk or (folder / "botocore").exists()


def test_handlers_work_from_their_packages(packaged, runtime_sdk, tmp_path, faces_dir):
    out, _ = packaged
    locations = {"MPD_STORE_URL": str(tmp_path / "s"), "MPD_BUILD_URL": str(tmp_path / "b"),
                 "MPD_PUBLISHED_URL": str(tmp_path / "p")}  # fmt: skip
    plan = run_isolated([out / "cloud"], (
        "import json\nfrom sync_service.cycle.handlers import ingest_handler\n"
        "print(json.dumps(ingest_handler({'step': 'plan', 'now': '2026-11-29T03:00:00Z'})))"
    ), {**locations, "MPD_CYCLE_CONFIG": '{"sources": {"namus": {"workers": 3}}}'})  # fmt: skip
    assert [s["source"] for s in json.loads(plan)["sources"]] == ["namus"]

    # The build function's OpenCV and models: detect and embed a real face from the package alone.
    photo = faces_dir / "gallery" / "barack_obama" / "1.jpg"
    embedded = run_isolated([out / "build", runtime_sdk], (
        "from models.recognizer import FaceModels\nfrom models.images import load_image\nimport hnswlib\n"
        f"m = FaceModels.load()\nimage = load_image({str(photo)!r})\n"
        "faces = m.detect(image)\nv = m.embed(image, faces[0])\nprint(len(faces), v.shape[0])"
    ), {"MPD_MODEL_DIR": str(out / "build" / MODEL_DIR)})  # fmt: skip
    assert embedded.split() == ["1", "128"]

    outcome = run_isolated([out / "cloud"], (
        "import json\nfrom sync_service.cycle.handlers import publish_handler\n"
        "print(json.dumps(publish_handler({'step': 'outcome', 'ingest': [{'source': 'fbi', 'status': 'failed', 'error': 'down'}]})))"
    ), locations)  # fmt: skip
    assert json.loads(outcome) == {"ok": False, "problems": ["ingest fbi: down"]}

    fleet = run_isolated([out / "cloud"], (
        "import json\nfrom sync_service.fleet.handler import health_handler\n"
        "print(json.dumps(health_handler({'Records': [{'messageId': '1', 'body': '{}'}]})))"
    ), {"MPD_ALERT_DIR": str(tmp_path / "fleet")})  # fmt: skip
    assert json.loads(fleet.strip().splitlines()[-1]) == {"batchItemFailures": []}
    assert set(RUNTIME_SDK) >= {"boto3", "botocore"}


def test_packages_are_reproducible(packaged, tmp_path):
    out, results = packaged
    wheelhouse = Path(os.environ.get("MPD_LAMBDA_WHEELHOUSE", Path.home() / ".cache" / "mpd-lambda-wheelhouse"))
    (again,) = package(tmp_path, ["cloud"], wheelhouse=wheelhouse)
    assert again["zip_sha256"] == results["cloud"]["zip_sha256"]
