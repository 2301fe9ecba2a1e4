#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages, a virtualenv, the project.
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# mosquitto: the IoT Core stand-in. GStreamer's RTSP server (run by the system python
# through python3-gi): the camera stand-in of tests/test_cameras.py.
APT_PACKAGES="mosquitto openssl python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
gst_rtsp_ok() {
  /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" \
    >/dev/null 2>&1
}
if ! command -v mosquitto >/dev/null 2>&1 || ! gst_rtsp_ok; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
  else
    echo "missing system packages: run 'sudo apt-get install $APT_PACKAGES' (needed by the integration tests)" >&2
  fi
fi
# The review page is tested in a real browser: Debian's chromium and its chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "chromium is missing: run 'sudo apt-get install chromium chromium-driver' (needed by the review page tests)" >&2
  fi
fi
# axe-core (the accessibility engine the browser tests inject), from the npm registry,
# pinned; kept out of git (it is a 500 KB generated file).
AXE_VERSION=4.14.1
if [ ! -f ".cache/axe-core-$AXE_VERSION/axe.min.js" ]; then
  if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  if command -v npm >/dev/null 2>&1; then
    mkdir -p ".cache/axe-core-$AXE_VERSION"
    (cd .cache && npm pack --silent "axe-core@$AXE_VERSION" >/dev/null \
      && tar -xzf "axe-core-$AXE_VERSION.tgz" -C "axe-core-$AXE_VERSION" --strip-components=1 package/axe.min.js \
      && rm -f "axe-core-$AXE_VERSION.tgz")
  else
    echo "npm is missing: the accessibility checks of the review page will be skipped" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check --upgrade "pip>=24"
# An older set-up compiled hnswlib from source; chroma-hnswlib ships the same module as a
# wheel. Remove both before installing, so neither uninstall deletes the other's file.
if .venv/bin/pip show -q hnswlib >/dev/null 2>&1; then
  .venv/bin/pip uninstall -q -y hnswlib chroma-hnswlib >/dev/null 2>&1 || true
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
