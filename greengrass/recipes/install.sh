#!/bin/sh
# Offline install of the device app into a virtualenv, run by the component's Install step:
#   sh install.sh ARTIFACT_DIR VENV_DIR
# Everything comes from the wheels carried in the artifact (no network). The marker file
# is written last, so an install cut short (power loss, timeout) is redone from scratch.
set -eu

ARTIFACT_DIR=$1
VENV=$2
PYTHON=${MPD_PYTHON:-python3.11}
MARKER="$VENV/.mpd-installed"

if [ -f "$MARKER" ]; then
  exit 0
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "mpd install: $PYTHON not found; the wheels are built for CPython 3.11 (apt-get install python3.11 python3.11-venv)" >&2
  exit 1
fi
# Only the artifact's wheels: ignore any pip configuration the device happens to have.
export PIP_CONFIG_FILE=/dev/null
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIREMENT
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
  --find-links "$ARTIFACT_DIR/wheels" --require-hashes -r "$ARTIFACT_DIR/requirements.lock"
"$VENV/bin/python" -m pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
  --no-deps "$ARTIFACT_DIR"/wheels/missing_person_alerts-*.whl
"$VENV/bin/mpd" --help >/dev/null
cp "$ARTIFACT_DIR/BUILD-INFO.json" "$MARKER"
sync
