#!/bin/sh
# Offline install of the device's native Python dependencies, run by com.mpd.EdgeRuntime's Install step:
#   sh install.sh ARTIFACT_DIR VENV_DIR
# The artifact holds site-packages for this platform, prebuilt at packaging time and
# compressed with xz (smaller than the wheels); it is unpacked into a fresh virtualenv with
# no network and no pip. The marker is written last, so an install cut short (power loss,
# timeout) is redone from scratch. Older venvs beyond the previous one are removed (a
# rollback needs only the previous one).
set -eu

ARTIFACT_DIR=$1
VENV=$2
PYTHON=${MPD_PYTHON:-python3.11}
MARKER="$VENV/.mpd-runtime-installed"

if [ -f "$MARKER" ]; then
  exit 0
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "mpd install: $PYTHON not found; the runtime is built for CPython 3.11 (apt-get install python3.11 python3.11-venv)" >&2
  exit 1
fi
rm -rf "$VENV"
"$PYTHON" -m venv --without-pip "$VENV"
"$VENV/bin/python" - "$ARTIFACT_DIR" <<'PY'
import hashlib, json, sys, sysconfig, tarfile
from pathlib import Path

artifact = Path(sys.argv[1])
info = json.loads((artifact / "RUNTIME-INFO.json").read_text())
archive = artifact / info["archive"]
digest = hashlib.sha256()
with open(archive, "rb") as handle:
    while block := handle.read(1 << 20):
        digest.update(block)
if digest.hexdigest() != info["archive_sha256"]:
    sys.exit(f"mpd install: {archive} has sha256 {digest.hexdigest()}, expected {info['archive_sha256']}")
site = Path(sysconfig.get_paths()["purelib"])
with tarfile.open(archive, "r:xz") as tar:
    for member in tar.getmembers():
        if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir() or member.issym()):
            sys.exit(f"mpd install: unexpected entry {member.name!r} in {archive}")
    tar.extractall(site, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
PY
# The runtime must import on this device (glibc, CPU) before it counts as installed.
# (Only native modules here: the pure-Python ones come from com.mpd.EdgePythonLibs.)
"$VENV/bin/python" -c "import cv2, numpy, awscrt, hnswlib, yaml, _cffi_backend"
cp "$ARTIFACT_DIR/RUNTIME-INFO.json" "$MARKER"
sync
# Keep this venv and the most recent other one; remove the rest.
ls -1dt "$(dirname "$VENV")"/venv-* 2>/dev/null | grep -vx "$VENV" | tail -n +2 | while read -r old; do
  rm -rf "$old"
done
