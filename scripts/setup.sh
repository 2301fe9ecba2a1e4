#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages, a virtualenv, the project.
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto openssl >/dev/null
  else
    echo "mosquitto is missing: run 'sudo apt-get install mosquitto' (needed by the integration tests)" >&2
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
